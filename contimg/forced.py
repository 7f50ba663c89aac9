"""Forced photometry of catalogue sources in a block image, all sources at once.

For each catalogue position inside the block's flat-noise image (the ``image``
product: noise sigma everywhere, a source of flux S appears as pb * S):

1. **Beam-matched amplitude**: the block's restoring beam (BMAJ, BMIN, BPA of
   its header) centred *at the catalogue position* (not refitted: the deep
   catalogue's positions are ~0.02 beam good, a free centre would bias faint
   fluxes up) is fitted with a free amplitude to the pixels within
   ``fit_radius_beams`` beam majors: ``A = sum(b d) / sum(b^2)``, a linear
   least-squares fit, vectorised over sources. For a point source A is its
   apparent flux (Jy/beam = Jy), free of the pixelisation loss of a peak pixel.
   Catalogue sources closer than ``blend_beams`` beam majors are fitted
   jointly (one small linear system per group; flag ``BLEND``).
2. **Primary beam**: ``flux = A / pb`` with pb the block's ``pb`` product at
   the position (bilinear).
3. **Error from the local noise**: sigma is 1.4826 x the median absolute
   deviation of the image in tiles of ``noise_tile_beams`` beam majors
   (robust to the sources in them), interpolated to the position. Image noise
   is correlated over the beam, so the amplitude's variance is
   ``sigma^2 b^T R b / (b^T b)^2`` with ``R`` the pixel correlation (the
   restoring beam at the pixel separations), not ``sigma^2 / b^T b``; for a
   joint fit ``sigma^2 (X^T X)^-1 X^T R X (X^T X)^-1``.
4. **Flags** (bits): ``EDGE`` (within ``edge_beams`` beam majors of the image
   edge or of a blank pixel, where the fit sees part of the source and the
   tile noise is unreliable), ``LOW_PB`` (pb below ``min_pb``: errors grow as
   1/pb and the beam model's error with them), ``BLEND``, ``FEW_PIXELS``
   (fewer than half the fit pixels are valid: flux NaN).

Pure numpy/scipy/astropy; no CASA, no Celery, no database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PermanentError
from .fitsimage import read_plane

MAD_TO_SIGMA = 1.4826
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))

# flags (bits)
EDGE = 1
"""Within ``edge_beams`` beam majors of the image edge or a blank (NaN) pixel."""
LOW_PB = 2
"""Primary-beam response below ``min_pb``."""
BLEND = 4
"""Another catalogue source within ``blend_beams``: fitted jointly."""
FEW_PIXELS = 8
"""Fewer than half of the fit pixels are valid: no measurement (NaN)."""
FLAG_NAMES = {EDGE: "edge", LOW_PB: "low_pb", BLEND: "blend", FEW_PIXELS: "few_pixels"}


@dataclass(frozen=True)
class ForcedSettings:
    """How forced photometry measures and flags (the survey section of the configuration maps onto it)."""

    fit_radius_beams: float = 1.0
    """Pixels within this many beam majors (FWHM) of the position enter the fit."""
    edge_beams: float = 2.0
    """Flag EDGE within this many beam majors of the image edge or a blank pixel."""
    min_pb: float = 0.3
    """Flag LOW_PB below this primary-beam response."""
    blend_beams: float = 1.5
    """Sources closer than this many beam majors are fitted jointly (flag BLEND)."""
    noise_tile_beams: float = 12.0
    """Side of the tiles in which the local noise is measured, in beam majors."""

    def __post_init__(self):
        for key in ("fit_radius_beams", "edge_beams", "blend_beams", "noise_tile_beams"):
            if not getattr(self, key) > 0:
                raise ValueError(f"ForcedSettings.{key} must be > 0, got {getattr(self, key)}")
        if not 0 < self.min_pb < 1:
            raise ValueError(f"ForcedSettings.min_pb must be in (0, 1), got {self.min_pb}")


@dataclass(frozen=True)
class BlockImage:
    """A block's flat-noise image, primary beam, celestial WCS and restoring beam."""

    image: np.ndarray
    pb: np.ndarray
    wcs: object
    beam_deg: tuple[float, float, float]
    """BMAJ, BMIN (deg), BPA (deg east of north)."""
    header: object = None
    path: str = ""


@dataclass(frozen=True)
class ForcedResult:
    """Per-source arrays (one entry per input position), fluxes in Jy."""

    flux: np.ndarray
    """Primary-beam corrected flux density A / pb (NaN: not measured)."""
    flux_err: np.ndarray
    amplitude: np.ndarray
    """Apparent (flat-noise image) amplitude A, Jy/beam."""
    amplitude_err: np.ndarray
    pb: np.ndarray
    local_rms: np.ndarray
    """Local noise of the flat-noise image at the position, Jy/beam."""
    snr: np.ndarray
    """A / error of A."""
    flags: np.ndarray
    inside: np.ndarray
    """The position lies on the image (measured or flagged); False: not in this block."""
    x: np.ndarray
    y: np.ndarray


def read_block_image(image_fits: str | Path, pb_fits: str | Path) -> BlockImage:
    """Read a block's ``image`` and ``pb`` FITS products (same pixels).

    Raises
    ------
    PermanentError
        A missing file, no restoring beam, or pb pixels that differ; names the file.
    """
    from astropy.wcs import WCS

    todo = "forced photometry needs the block's image and pb products; image that block (again)"
    h, image = read_plane(image_fits, todo=todo)
    _, pb = read_plane(pb_fits, todo=todo)
    if pb.shape != image.shape:
        raise PermanentError(f"{pb_fits}: shape {pb.shape} differs from {Path(image_fits).name}'s {image.shape}")
    for key in ("BMAJ", "BMIN", "BPA"):
        if key not in h:
            raise PermanentError(f"{image_fits} has no {key}; forced photometry needs the restoring beam")
    return BlockImage(image=image, pb=pb, wcs=WCS(h).celestial, beam_deg=(h["BMAJ"], h["BMIN"], h["BPA"]),
                      header=h, path=str(image_fits))


def beam_inverse_covariance(beam_deg: tuple[float, float, float], cell_deg: float) -> np.ndarray:
    """Inverse covariance (pixels^-2, axes x, y) of the restoring beam; x increases to the west."""
    sm = beam_deg[0] / cell_deg * FWHM_TO_SIGMA
    sn = beam_deg[1] / cell_deg * FWHM_TO_SIGMA
    pa = math.radians(beam_deg[2])
    u = np.array([-math.sin(pa), math.cos(pa)])  # major axis: from north towards east (-x)
    v = np.array([math.cos(pa), math.sin(pa)])
    return np.linalg.inv(sm * sm * np.outer(u, u) + sn * sn * np.outer(v, v))


def _beam(inv: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy))


def local_noise_map(image: np.ndarray, tile_pix: int) -> tuple[np.ndarray, int]:
    """Robust rms (1.4826 MAD) in square tiles of ``tile_pix``; NaN for tiles under half valid.

    Returns the tile grid and the tile size; tile (i, j) covers rows
    ``i*tile .. (i+1)*tile`` and columns ``j*tile .. (j+1)*tile``.
    """
    ny, nx = image.shape
    t = max(8, int(tile_pix))
    nty, ntx = -(-ny // t), -(-nx // t)
    padded = np.full((nty * t, ntx * t), np.nan)
    padded[:ny, :nx] = image
    tiles = padded.reshape(nty, t, ntx, t).transpose(0, 2, 1, 3).reshape(nty, ntx, t * t)
    n_ok = np.isfinite(tiles).sum(axis=2)
    with np.errstate(all="ignore"), _quiet():
        med = np.nanmedian(tiles, axis=2)
        rms = MAD_TO_SIGMA * np.nanmedian(np.abs(tiles - med[..., None]), axis=2)
    rms[n_ok < 0.5 * t * t] = np.nan
    return rms, t


class _quiet:
    """Silence numpy's all-NaN slice warnings (tiles outside the pb cutoff)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def _sample_tiles(grid: np.ndarray, tile: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a tile grid at pixel positions; empty tiles filled from the nearest valid one."""
    from scipy import ndimage

    g = grid.copy()
    bad = ~np.isfinite(g)
    if bad.all():
        return np.full(x.shape, np.nan)
    if bad.any():
        idx = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
        g = g[tuple(idx)]
    ty = (y + 0.5) / tile - 0.5
    tx = (x + 0.5) / tile - 0.5
    return ndimage.map_coordinates(g, [ty, tx], order=1, mode="nearest")


def _bilinear(data: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    filled = np.where(np.isfinite(data), data, 0.0)
    return ndimage.map_coordinates(filled, [y, x], order=1, mode="nearest")


def measure(block: BlockImage, ra_deg, dec_deg, settings: ForcedSettings = ForcedSettings()) -> ForcedResult:
    """Forced photometry of every position (see the module docstring).

    Parameters
    ----------
    block : BlockImage
        From :func:`read_block_image` (or built from arrays).
    ra_deg, dec_deg : array_like
        ICRS positions of the catalogue sources, degrees.
    settings : ForcedSettings

    Returns
    -------
    ForcedResult
        Arrays aligned with the input positions.
    """
    from scipy import ndimage

    ra = np.atleast_1d(np.asarray(ra_deg, float))
    dec = np.atleast_1d(np.asarray(dec_deg, float))
    n = ra.size
    image = np.asarray(block.image, float)
    ny, nx = image.shape
    cell = math.sqrt(abs(np.linalg.det(block.wcs.pixel_scale_matrix)))  # deg per pixel (CDELT or CD)
    bmaj_pix = block.beam_deg[0] / cell
    inv = beam_inverse_covariance(block.beam_deg, cell)

    x, y = (np.asarray(v, float) for v in block.wcs.world_to_pixel_values(ra, dec))
    x = np.where(np.isfinite(x), x, -1e9)
    y = np.where(np.isfinite(y), y, -1e9)
    ix, iy = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    finite = np.isfinite(image)
    inside &= finite[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)]

    nan = np.full(n, np.nan)
    flux, flux_err, amp, amp_err, pb_at, rms, snr = (nan.copy() for _ in range(7))
    flags = np.zeros(n, np.int64)
    if not inside.any():
        return ForcedResult(flux, flux_err, amp, amp_err, pb_at, rms, snr, flags, inside, x, y)
    sel = np.flatnonzero(inside)

    # Edge: distance to the nearest blank pixel or the image border.
    valid_padded = np.pad(finite, 1, constant_values=False)
    dist = ndimage.distance_transform_edt(valid_padded)[1:-1, 1:-1]
    flags[sel] |= np.where(dist[iy[sel], ix[sel]] < settings.edge_beams * bmaj_pix, EDGE, 0)

    pb_at[sel] = _bilinear(np.asarray(block.pb, float), x[sel], y[sel])
    flags[sel] |= np.where(~(pb_at[sel] >= settings.min_pb), LOW_PB, 0)

    # The fit stencil (integer offsets around the nearest pixel) and the pixel correlation R.
    r = math.ceil(settings.fit_radius_beams * bmaj_pix) + 1
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    ox, oy = ox.ravel(), oy.ravel()
    corr = _beam(inv, ox[:, None] - ox[None, :], oy[:, None] - oy[None, :])

    # Blends: groups of inside sources closer than blend_beams.
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pairs = cKDTree(np.c_[x[sel], y[sel]]).query_pairs(settings.blend_beams * bmaj_pix, output_type="ndarray")
    m = sel.size
    adj = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m)) if len(pairs) else \
        coo_matrix((m, m))
    _, group = connected_components(adj, directed=False)
    sizes = np.bincount(group)
    single = sizes[group] == 1

    # Singles, vectorised: B (sources x stencil) of beam values within the fit radius, valid pixels only.
    s1 = sel[single]
    if s1.size:
        px = ix[s1, None] + ox[None, :]
        py = iy[s1, None] + oy[None, :]
        on = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        d = np.where(on, image[np.clip(py, 0, ny - 1), np.clip(px, 0, nx - 1)], np.nan)
        dx, dy = px - x[s1, None], py - y[s1, None]
        use = on & np.isfinite(d) & (np.hypot(dx, dy) <= settings.fit_radius_beams * bmaj_pix)
        possible = np.hypot(dx, dy) <= settings.fit_radius_beams * bmaj_pix
        b = np.where(use, _beam(inv, dx, dy), 0.0)
        btb = (b * b).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = (b * np.where(use, d, 0.0)).sum(axis=1) / btb
            var_unit = ((b @ corr) * b).sum(axis=1) / btb**2
        few = use.sum(axis=1) < 0.5 * possible.sum(axis=1)
        a[few] = np.nan
        flags[s1] |= np.where(few, FEW_PIXELS, 0)
        amp[s1] = a
        amp_err[s1] = np.sqrt(var_unit)  # per unit noise; times the local rms below

    # Blended groups: one joint linear fit per group.
    for g in np.flatnonzero(sizes > 1):
        members = sel[group == g]
        flags[members] |= BLEND
        _fit_group(image, members, x, y, ix, iy, ox, oy, inv, settings.fit_radius_beams * bmaj_pix,
                   amp, amp_err, flags)

    # Local noise on the image minus the fitted sources: the wings of bright
    # sources would otherwise inflate the tiles' MAD (by ~25 % in a field of
    # a few dozen sources at SNR 10-300).
    fitted = sel[np.isfinite(amp[sel])]
    residual = image.copy()
    _subtract_beams(residual, x[fitted], y[fitted], amp[fitted], inv, math.ceil(2.5 * bmaj_pix))
    grid, tile = local_noise_map(residual, round(settings.noise_tile_beams * bmaj_pix))
    rms[sel] = _sample_tiles(grid, tile, x[sel], y[sel])
    amp_err[sel] *= rms[sel]

    with np.errstate(invalid="ignore", divide="ignore"):
        snr[sel] = amp[sel] / amp_err[sel]
        flux[sel] = amp[sel] / pb_at[sel]
        flux_err[sel] = amp_err[sel] / pb_at[sel]
    return ForcedResult(flux, flux_err, amp, amp_err, pb_at, rms, snr, flags, inside, x, y)


def _subtract_beams(image: np.ndarray, x, y, amp, inv: np.ndarray, r: int) -> None:
    """Subtract beams of amplitude ``amp`` at pixel positions (x, y) from ``image`` in place."""
    ny, nx = image.shape
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    for lo in range(0, len(x), 4096):  # bounded memory
        xs, ys, a = x[lo:lo + 4096], y[lo:lo + 4096], amp[lo:lo + 4096]
        px = np.round(xs).astype(np.int64)[:, None, None] + ox
        py = np.round(ys).astype(np.int64)[:, None, None] + oy
        model = a[:, None, None] * _beam(inv, px - xs[:, None, None], py - ys[:, None, None])
        on = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        np.subtract.at(image, (py[on], px[on]), model[on])


def _fit_group(image, members, x, y, ix, iy, ox, oy, inv, radius, amp, amp_err, flags) -> None:
    """Joint amplitude fit of nearby sources on the union of their fit pixels (in place).

    ``amp_err`` gets the error per unit pixel noise (the caller multiplies by the local rms).
    """
    ny, nx = image.shape
    pix = set()
    for k in members:
        px, py = ix[k] + ox, iy[k] + oy
        near = np.hypot(px - x[k], py - y[k]) <= radius
        pix.update(zip(px[near].tolist(), py[near].tolist()))
    pts = np.array(sorted(pix), dtype=np.int64).reshape(-1, 2)
    on = (pts[:, 0] >= 0) & (pts[:, 0] < nx) & (pts[:, 1] >= 0) & (pts[:, 1] < ny)
    n_possible = len(pts)
    pts = pts[on]
    d = image[pts[:, 1], pts[:, 0]]
    ok = np.isfinite(d)
    pts, d = pts[ok], d[ok]
    if len(pts) < 0.5 * n_possible or len(pts) <= len(members):
        flags[members] |= FEW_PIXELS
        return
    X = np.stack([_beam(inv, pts[:, 0] - x[k], pts[:, 1] - y[k]) for k in members], axis=1)
    xtx = X.T @ X
    try:
        xtx_inv = np.linalg.inv(xtx)
    except np.linalg.LinAlgError:
        flags[members] |= FEW_PIXELS
        return
    a = xtx_inv @ (X.T @ d)
    corr = _beam(inv, pts[:, 0, None] - pts[None, :, 0], pts[:, 1, None] - pts[None, :, 1])
    cov = xtx_inv @ (X.T @ corr @ X) @ xtx_inv
    amp[members] = a
    amp_err[members] = np.sqrt(np.clip(np.diag(cov), 0, None))


def flag_names(flags: int) -> list[str]:
    """Names of the bits set in ``flags`` (this module's and any caller's in ``FLAG_NAMES``)."""
    return [name for bit, name in sorted(FLAG_NAMES.items()) if flags & bit]
