"""Mosaic the block images of a declination strip, weighted per pixel.

A block image is flat-noise: its noise ``sigma`` is the same everywhere and a
source of flux S appears as ``pb * S``. Its primary-beam corrected value
``S_pbcor = image / pb`` therefore has the noise ``sigma / pb``, and the
minimum-variance combination of the blocks that see a sky pixel is

    mosaic = sum(w * S_pbcor) / sum(w),   w = pb^2 / sigma^2,
    noise  = 1 / sqrt(sum(w)),

with ``pb`` the block's primary-beam response at that pixel (its ``pb``
product, interpolated) and ``sigma`` its noise: the header keyword
:data:`NOISE_KEY` when imaging wrote one, else a robust (MAD) rms of the
flat-noise image. Pixels where a block's pb is below ``pb_cutoff`` take no
part; a sky pixel no block covers is NaN. Blocks are independent
observations (different times), so their noises add in quadrature.

Choices (see ``docs/mosaics.md``):

- **Grid**: by default an SIN projection centred on the (unit-vector) mean of
  the block centres, cell = the finest input cell, covering the union of the
  blocks' ``pb >= pb_cutoff`` footprints; ``CAR`` (plate carree, RA and Dec
  linear, square pixels at the mean declination) for strips too long for SIN;
  or any celestial WCS and shape given by the caller (:class:`Grid`).
- **Reprojection**: our own, vectorised. The output-to-input pixel map is
  evaluated exactly with astropy's WCS on a lattice of nodes and interpolated
  between them; the lattice is refined until the map is good to
  :data:`MAX_MAP_ERROR_PIX` at the midpoints. Images are then sampled with
  Keys cubic convolution (``bicubic``, the default: it keeps the peak of a
  3-5 pixel beam to about 0.5 %), ``bilinear`` (costs up to a few % of peak
  at half-pixel offsets: it smooths by a triangle kernel) or ``nearest``.
  A pixel whose interpolation stencil touches a NaN or the image edge is left
  out. The smooth primary beam is always sampled bilinearly.
- **Beam**: no convolution to a common beam. Blocks at one declination all
  transit at the meridian, so their restoring beams barely differ; the
  header gets the largest (by area) input beam, and a point source keeps its
  flux as its peak in Jy/beam whatever the small beam differences.
- **Headers**: the celestial WCS of the grid plus the first block's other
  axes (frequency, Stokes), BMAJ/BMIN/BPA, BUNIT, DATE-OBS and MJD-OBS of the
  earliest block, NBLOCKS, PBCUT, WEIGHTNG, BLOCKnnn = block ids (first 999)
  and one HISTORY line per block with its sigma.

Everything works on in-memory arrays (:class:`BlockImage`, :func:`combine`);
:func:`make_mosaic` reads the block FITS and writes the products atomically.
No CASA, no Celery.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PermanentError
from .fitsimage import read_plane
from .products import BlockProducts, MosaicProducts, remove_path, temporary_name

log = logging.getLogger(__name__)

NOISE_KEY = "NOISE"
"""Header keyword (Jy/beam) of a block image's noise, used instead of measuring it when present."""
MAD_TO_SIGMA = 1.4826
MAX_MAP_ERROR_PIX = 0.01
"""Largest error (input pixels) allowed in the interpolated output-to-input pixel map."""
FIRST_MAP_STEP = 64
"""Initial node spacing (output pixels) of the pixel map; halved until accurate."""
CHUNK_PIXELS = 1 << 21
"""Output pixels reprojected at once (bounds the memory of the temporaries)."""
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
WEIGHTINGS = ("pb2/sigma2", "equal")
PROJECTIONS = ("SIN", "CAR")
MAX_SIN_RADIUS_DEG = 60.0
"""Footprints farther than this from an SIN grid's centre need the CAR projection."""


@dataclass(frozen=True)
class MosaicSettings:
    """How blocks are combined; the defaults are the pipeline's."""

    pb_cutoff: float = 0.2
    """Pixels of a block where its primary-beam response is below this take no part."""
    projection: str = "SIN"
    """Automatic grid: ``SIN`` centred on the strip, or ``CAR`` for strips longer than ~100 deg."""
    cell_arcsec: float = 0.0
    """Automatic grid cell; 0 = the finest input cell."""
    interpolation: str = "bicubic"
    """``bicubic`` (Keys, a = -0.5), ``bilinear`` or ``nearest``."""
    weighting: str = "pb2/sigma2"
    """``pb2/sigma2`` (minimum variance) or ``equal`` (plain mean of pb-corrected values, for comparison)."""
    freq_tolerance: float = 1e-3
    """Largest fractional difference of a block's reference frequency from the first block's."""
    max_pixels: int = 400_000_000
    """Refuse automatic grids larger than this (a strip too long for one mosaic)."""

    def __post_init__(self):
        if not 0 < self.pb_cutoff < 1:
            raise ValueError(f"mosaic pb_cutoff {self.pb_cutoff} must be between 0 and 1")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"mosaic projection {self.projection!r} is not one of {', '.join(PROJECTIONS)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"mosaic interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"mosaic weighting {self.weighting!r} is not one of {', '.join(WEIGHTINGS)}")
        if self.cell_arcsec < 0:
            raise ValueError(f"mosaic cell_arcsec {self.cell_arcsec} must be >= 0 (0: the finest input cell)")


@dataclass
class BlockImage:
    """The sky plane of one block with its primary beam, noise and metadata.

    Attributes
    ----------
    block_id : str
    image : array (ny, nx)
        Flat-noise (not pb-corrected) image, Jy/beam; NaN where masked.
    pb : array (ny, nx)
        Primary-beam power response on the same pixels (dimensionless).
    wcs : astropy.wcs.WCS
        Celestial (2-axis) WCS of the plane.
    sigma_jy : float
        Noise of ``image``, Jy/beam.
    freq_hz : float
        Reference frequency.
    beam_deg : (float, float, float)
        BMAJ, BMIN (degrees) and BPA (degrees east of north).
    date_obs : str
        DATE-OBS (start of the block, UTC, ISO).
    header : astropy.io.fits.Header, optional
        The image's header (its non-celestial axes are copied to the mosaic).
    path : str
        Where it was read from (for messages); ``""`` for in-memory blocks.
    """

    block_id: str
    image: np.ndarray
    pb: np.ndarray
    wcs: object
    sigma_jy: float
    freq_hz: float
    beam_deg: tuple[float, float, float]
    date_obs: str
    header: object = None
    path: str = ""

    @property
    def name(self) -> str:
        return self.path or f"block {self.block_id}"


@dataclass(frozen=True)
class Grid:
    """An output grid: celestial WCS and (ny, nx)."""

    wcs: object
    shape: tuple[int, int]


@dataclass
class Mosaic:
    """A combined image with its noise and weight maps (all (ny, nx), float32, NaN off the coverage)."""

    image: np.ndarray
    noise: np.ndarray
    weight: np.ndarray
    """``sum(pb^2/sigma^2)`` in (Jy/beam)^-2; for equal weighting the number of blocks."""
    grid: Grid
    block_ids: list[str]
    sigmas_jy: list[float]
    beam_deg: tuple[float, float, float]
    freq_hz: float
    date_obs: str
    settings: MosaicSettings
    header: object = None
    """FITS header of the image (built by :func:`mosaic_header`)."""


@dataclass
class MosaicResult:
    """What :func:`make_mosaic` wrote and measured; ``as_dict()`` is JSON-friendly."""

    mosaic_id: str
    paths: dict[str, str]
    """Path per product: image, noise, weight, png."""
    block_ids: list[str]
    n_blocks: int
    shape: tuple[int, int]
    cell_arcsec: float
    projection: str
    center_ra_deg: float
    center_dec_deg: float
    freq_hz: float
    beam_major_arcsec: float
    beam_minor_arcsec: float
    beam_pa_deg: float
    noise_min_jy: float
    """Lowest noise in the mosaic, Jy/beam."""
    noise_median_jy: float
    covered_fraction: float
    """Fraction of the grid's pixels with data."""
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------
# reading blocks
# ---------------------------------------------------------------------------


def robust_rms(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan
    return MAD_TO_SIGMA * float(np.median(np.abs(v - np.median(v))))


def read_block(image_fits: str | os.PathLike, pb_fits: str | os.PathLike, *, block_id: str | None = None,
               sigma_jy: float | None = None) -> BlockImage:
    """Read a block's flat-noise image and primary beam.

    Parameters
    ----------
    image_fits, pb_fits : path
        The block's ``image`` and ``pb`` FITS products (same pixels).
    block_id : str, optional
        Default: the image's BLOCKID keyword, else the file name up to ``.image.fits``.
    sigma_jy : float, optional
        The image's noise (Jy/beam). Default: the header keyword :data:`NOISE_KEY`,
        else the robust rms of the image.

    Raises
    ------
    PermanentError
        A missing or unreadable file, or one without the beam, frequency or
        celestial axes a mosaic needs; the message names the file.
    """
    from astropy.wcs import WCS

    image_fits, pb_fits = Path(image_fits), Path(pb_fits)
    todo = "image that block (again) or leave it out of the mosaic"
    header, image = read_plane(image_fits, todo=todo, dtype=np.float32)
    pb_header, pb = read_plane(pb_fits, todo=todo, dtype=np.float32)
    if pb.shape != image.shape:
        raise PermanentError(f"{pb_fits}: primary beam shape {pb.shape} differs from {image_fits.name}'s {image.shape}")
    for key in ("BMAJ", "BMIN", "BPA", "DATE-OBS"):
        if key not in header:
            raise PermanentError(f"{image_fits}: no {key} in the header; a mosaic needs the beam and the date")
    wcs = WCS(header).celestial
    if wcs.naxis != 2 or wcs.wcs.lng != 0 or wcs.wcs.lat != 1:
        raise PermanentError(f"{image_fits}: axes 1 and 2 are not RA and Dec; cannot mosaic it")
    if not np.allclose(WCS(pb_header).celestial.wcs.crval, wcs.wcs.crval) or \
            not np.allclose(WCS(pb_header).celestial.wcs.cdelt, wcs.wcs.cdelt):
        raise PermanentError(f"{pb_fits}: its pixels are not those of {image_fits.name}; remake the block's pb")
    freq = _reference_frequency(header)
    if freq is None:
        raise PermanentError(f"{image_fits}: no FREQ axis or RESTFRQ; a mosaic needs the frequency")
    if sigma_jy is None:
        sigma_jy = float(header[NOISE_KEY]) if NOISE_KEY in header else robust_rms(image)
    if not (np.isfinite(sigma_jy) and sigma_jy > 0):
        raise PermanentError(f"{image_fits}: noise {sigma_jy} Jy/beam is not positive; the image holds no data")
    if block_id is None:
        block_id = str(header.get("BLOCKID") or image_fits.name.removesuffix(".fits").removesuffix(".image"))
    return BlockImage(
        block_id=block_id, image=image, pb=pb, wcs=wcs, sigma_jy=float(sigma_jy), freq_hz=freq,
        beam_deg=(float(header["BMAJ"]), float(header["BMIN"]), float(header["BPA"])),
        date_obs=str(header["DATE-OBS"]), header=header, path=str(image_fits),
    )


def read_block_products(products: BlockProducts, *, sigma_jy: float | None = None) -> BlockImage:
    """:func:`read_block` of a block's ``image`` and ``pb`` products."""
    return read_block(products.fits("image"), products.fits("pb"), block_id=products.block_id, sigma_jy=sigma_jy)


def _reference_frequency(header) -> float | None:
    for i in range(1, int(header.get("NAXIS", 0)) + 1):
        if str(header.get(f"CTYPE{i}", "")).upper().startswith("FREQ"):
            return float(header[f"CRVAL{i}"])
    return float(header["RESTFRQ"]) if "RESTFRQ" in header else None


def check_consistent(blocks: list[BlockImage], freq_tolerance: float) -> None:
    """Raise PermanentError (one line naming the file) when blocks cannot be mosaicked together."""
    if not blocks:
        raise PermanentError("no block image to mosaic; image the strip's blocks first")
    ref = blocks[0]
    ids = set()
    for b in blocks:
        if abs(b.freq_hz - ref.freq_hz) > freq_tolerance * ref.freq_hz:
            raise PermanentError(
                f"{b.name}: frequency {b.freq_hz / 1e6:.3f} MHz differs from {ref.name}'s "
                f"{ref.freq_hz / 1e6:.3f} MHz by more than {freq_tolerance:.1%}; mosaic images of one band only"
            )
        if b.block_id in ids:
            raise PermanentError(f"{b.name}: block {b.block_id} is given twice; give each block once")
        ids.add(b.block_id)
        unit = str(b.header.get("BUNIT", "Jy/beam")).strip() if b.header is not None else "Jy/beam"
        if unit.lower().replace(" ", "") not in ("jy/beam", ""):
            raise PermanentError(f"{b.name}: BUNIT {unit!r} is not Jy/beam; cannot mosaic it")


# ---------------------------------------------------------------------------
# the output grid
# ---------------------------------------------------------------------------


def footprint_world(block: BlockImage, pb_cutoff: float, samples: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees of a coarse sample of the pixels where pb >= ``pb_cutoff`` (plus their edge)."""
    ny, nx = block.pb.shape
    step = max(1, max(ny, nx) // samples)
    ys = np.unique(np.r_[np.arange(0, ny, step), ny - 1])
    xs = np.unique(np.r_[np.arange(0, nx, step), nx - 1])
    sub = block.pb[np.ix_(ys, xs)]
    keep = np.isfinite(sub) & (sub >= pb_cutoff)
    # Widen by one sample so the footprint is not cut inside the cutoff contour.
    from scipy.ndimage import binary_dilation

    keep = binary_dilation(keep, iterations=1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    ra, dec = block.wcs.wcs_pix2world(xx[keep].astype(float), yy[keep].astype(float), 0)
    return ra, dec


def _unit_mean_direction(ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[float, float]:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    v = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
    return math.degrees(math.atan2(v[1], v[0])) % 360.0, math.degrees(math.atan2(v[2], math.hypot(v[0], v[1])))


def auto_grid(blocks: list[BlockImage], settings: MosaicSettings = MosaicSettings()) -> Grid:
    """The grid covering the union of the blocks' ``pb >= pb_cutoff`` footprints.

    SIN: centred on the mean block centre. CAR: CRVAL2 = 0 (RA and Dec linear),
    CDELT1 = -cell / cos(mean dec) so pixels are square at the strip's declination.
    The cell is ``settings.cell_arcsec`` or the finest input cell.
    """
    from astropy.wcs import WCS

    if not blocks:
        raise PermanentError("no block image to mosaic; image the strip's blocks first")
    centres = np.array([b.wcs.wcs_pix2world([[(b.pb.shape[1] - 1) / 2, (b.pb.shape[0] - 1) / 2]], 0)[0]
                        for b in blocks])
    ra0, dec0 = _unit_mean_direction(centres[:, 0], centres[:, 1])
    cell = settings.cell_arcsec / 3600 or min(float(np.min(np.abs(b.wcs.wcs.cdelt))) for b in blocks)

    w = WCS(naxis=2)
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    if settings.projection == "SIN":
        w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
        w.wcs.crval = [ra0, dec0]
        w.wcs.cdelt = [-cell, cell]
    else:
        w.wcs.ctype = ["RA---CAR", "DEC--CAR"]
        w.wcs.crval = [ra0, 0.0]
        w.wcs.cdelt = [-cell / max(math.cos(math.radians(dec0)), 1e-3), cell]
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.set()

    xs, ys = [], []
    for b in blocks:
        ra, dec = footprint_world(b, settings.pb_cutoff)
        if settings.projection == "SIN" and np.any(_separation_deg(ra, dec, ra0, dec0) > MAX_SIN_RADIUS_DEG):
            raise PermanentError(
                f"{b.name}: lies more than {MAX_SIN_RADIUS_DEG:.0f} deg from the SIN mosaic centre; "
                "use projection CAR or mosaic a shorter stretch of the strip"
            )
        x, y = w.wcs_world2pix(ra, dec, 0)
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    x0, x1 = math.floor(np.nanmin(x)) - 1, math.ceil(np.nanmax(x)) + 1
    y0, y1 = math.floor(np.nanmin(y)) - 1, math.ceil(np.nanmax(y)) + 1
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    if nx * ny > settings.max_pixels:
        raise PermanentError(
            f"the mosaic of {len(blocks)} blocks would have {ny} x {nx} pixels (> max_pixels "
            f"{settings.max_pixels}); mosaic a shorter stretch or use a coarser cell"
        )
    w.wcs.crpix = [1.0 - x0, 1.0 - y0]
    w.wcs.set()
    return Grid(wcs=w, shape=(int(ny), int(nx)))


def _separation_deg(ra, dec, ra0, dec0):
    ra, dec, ra0, dec0 = (np.radians(v) for v in (ra, dec, ra0, dec0))
    c = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(ra - ra0)
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


# ---------------------------------------------------------------------------
# reprojection
# ---------------------------------------------------------------------------


def pixel_map(wcs_out, wcs_in, y0: int, y1: int, x0: int, x1: int,
              max_error: float = MAX_MAP_ERROR_PIX) -> tuple[np.ndarray, np.ndarray]:
    """Input pixel coordinates (x, y; 0-based) of output pixels [y0:y1, x0:x1].

    Exact WCS transforms on a lattice of nodes, bilinear in between; the node
    spacing is halved until the map at the lattice midpoints is within
    ``max_error`` input pixels of the exact one (spacing 1 is exact).
    NaN where the input projection has no pixel (e.g. beyond an SIN hemisphere).
    """
    ny, nx = y1 - y0, x1 - x0
    step = FIRST_MAP_STEP
    while True:
        if step <= 1 or min(ny, nx) < 2 * step:
            return _exact_map(wcs_out, wcs_in, np.arange(y0, y1), np.arange(x0, x1))
        ys = np.r_[np.arange(y0, y1 - 1, step), y1 - 1]
        xs = np.r_[np.arange(x0, x1 - 1, step), x1 - 1]
        nodes_x, nodes_y = _exact_map(wcs_out, wcs_in, ys, xs)
        # Check at the midpoints of the lattice cells (where bilinear is worst).
        my = ((ys[:-1] + ys[1:]) / 2)[:: max(1, len(ys) // 24)]
        mx = ((xs[:-1] + xs[1:]) / 2)[:: max(1, len(xs) // 24)]
        ex, ey = _exact_map(wcs_out, wcs_in, my, mx)
        ix = _bilinear_nodes(nodes_x, ys, xs, my, mx)
        iy = _bilinear_nodes(nodes_y, ys, xs, my, mx)
        with np.errstate(invalid="ignore"):
            err = np.nanmax(np.hypot(ix - ex, iy - ey)) if np.isfinite(ex).any() else 0.0
        if np.isfinite(err) and err <= max_error and np.isfinite(nodes_x).all():
            rows, cols = np.arange(y0, y1), np.arange(x0, x1)
            return _bilinear_nodes(nodes_x, ys, xs, rows, cols), _bilinear_nodes(nodes_y, ys, xs, rows, cols)
        step //= 2


def _exact_map(wcs_out, wcs_in, rows, cols):
    xx, yy = np.meshgrid(np.asarray(cols, float), np.asarray(rows, float))
    ra, dec = wcs_out.wcs_pix2world(xx, yy, 0)
    with np.errstate(invalid="ignore"):
        x, y = wcs_in.wcs_world2pix(ra, dec, 0)
    return np.asarray(x), np.asarray(y)


def _bilinear_nodes(values, ys, xs, rows, cols):
    """Separable linear interpolation of node values (len(ys), len(xs)) at rows x cols."""
    jx = np.clip(np.searchsorted(xs, cols, side="right") - 1, 0, len(xs) - 2)
    tx = (np.asarray(cols, float) - xs[jx]) / (xs[jx + 1] - xs[jx])
    along = values[:, jx] * (1 - tx) + values[:, jx + 1] * tx  # (len(ys), len(cols))
    jy = np.clip(np.searchsorted(ys, rows, side="right") - 1, 0, len(ys) - 2)
    ty = ((np.asarray(rows, float) - ys[jy]) / (ys[jy + 1] - ys[jy]))[:, None]
    return along[jy] * (1 - ty) + along[jy + 1] * ty


def _keys_weights(t: np.ndarray, a: float = -0.5) -> list[np.ndarray]:
    """Keys cubic-convolution weights of the neighbours at offsets -1, 0, 1, 2 for fraction t in [0, 1)."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(1 + t), near(t), near(1 - t), far(2 - t)]


def stencil_valid(valid: np.ndarray, method: str) -> np.ndarray:
    """True at pixel (i, j) when the whole interpolation stencil based there is valid and inside."""
    lo, hi = {"bicubic": (-1, 2), "bilinear": (0, 1), "nearest": (0, 0)}[method]
    ny, nx = valid.shape
    out = np.zeros_like(valid)
    # out[i, j] = all(valid[i+lo : i+hi+1, j+lo : j+hi+1]) where that window is inside the image.
    ys = slice(-lo, ny - hi)
    xs = slice(-lo, nx - hi)
    acc = np.ones((ny - hi + lo, nx - hi + lo), dtype=bool)
    for dy in range(lo, hi + 1):
        for dx in range(lo, hi + 1):
            acc &= valid[-lo + dy: ny - hi + dy, -lo + dx: nx - hi + dx]
    out[ys, xs] = acc
    return out


def sample(data: np.ndarray, ok: np.ndarray, x: np.ndarray, y: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate ``data`` at pixel coordinates (x, y).

    Parameters
    ----------
    data : array (ny, nx)
        Finite where ``ok``.
    ok : array (ny, nx) of bool
        :func:`stencil_valid` of the data's finite mask for ``method``.
    x, y : arrays
        0-based input pixel coordinates (NaN allowed).
    method : str
        ``bicubic``, ``bilinear`` or ``nearest``.

    Returns
    -------
    values, valid : arrays shaped like x
    """
    ny, nx = data.shape
    with np.errstate(invalid="ignore"):
        if method == "nearest":
            i = np.floor(y + 0.5)
            j = np.floor(x + 0.5)
        else:
            i = np.floor(y)
            j = np.floor(x)
        inside = (i >= 0) & (i < ny) & (j >= 0) & (j < nx)
    ii = np.where(inside, i, 0).astype(np.intp)
    jj = np.where(inside, j, 0).astype(np.intp)
    valid = inside & ok[ii, jj]
    ii = np.where(valid, ii, 1 if ny > 2 else 0)
    jj = np.where(valid, jj, 1 if nx > 2 else 0)
    if method == "nearest":
        return data[ii, jj].astype(np.float64), valid
    ty = np.where(valid, y - i, 0.0)
    tx = np.where(valid, x - j, 0.0)
    if method == "bilinear":
        out = (data[ii, jj] * (1 - tx) + data[ii, jj + 1] * tx) * (1 - ty)
        out += (data[ii + 1, jj] * (1 - tx) + data[ii + 1, jj + 1] * tx) * ty
        return out, valid
    wy = _keys_weights(ty)
    wx = _keys_weights(tx)
    out = np.zeros(x.shape, dtype=np.float64)
    for a, dy in enumerate((-1, 0, 1, 2)):
        row = np.zeros(x.shape, dtype=np.float64)
        r = ii + dy
        for b, dx in enumerate((-1, 0, 1, 2)):
            row += wx[b] * data[r, jj + dx]
        out += wy[a] * row
    return out, valid


def reproject(data: np.ndarray, wcs_in, grid: Grid, method: str = "bicubic") -> np.ndarray:
    """``data`` (on ``wcs_in``) resampled onto ``grid``; NaN where it has no value."""
    finite = np.isfinite(data)
    ok = stencil_valid(finite, method)
    clean = np.where(finite, data, 0.0)
    ny, nx = grid.shape
    out = np.full(grid.shape, np.nan)
    rows = max(1, CHUNK_PIXELS // max(nx, 1))
    for y0 in range(0, ny, rows):
        y1 = min(ny, y0 + rows)
        x, y = pixel_map(grid.wcs, wcs_in, y0, y1, 0, nx)
        v, valid = sample(clean, ok, x, y, method)
        out[y0:y1] = np.where(valid, v, np.nan)
    return out


# ---------------------------------------------------------------------------
# combination
# ---------------------------------------------------------------------------


def block_box(block: BlockImage, grid: Grid, pb_cutoff: float) -> tuple[int, int, int, int] | None:
    """Output pixel box (y0, y1, x0, x1) holding the block's footprint, or None when off the grid."""
    ra, dec = footprint_world(block, pb_cutoff)
    if ra.size == 0:
        return None
    with np.errstate(invalid="ignore"):
        x, y = grid.wcs.wcs_world2pix(ra, dec, 0)
    if not np.isfinite(x).any():
        return None
    ny, nx = grid.shape
    step = max(block.pb.shape) / 96 + 2  # the footprint is sampled: widen by a sample
    y0 = max(0, math.floor(np.nanmin(y) - step))
    y1 = min(ny, math.ceil(np.nanmax(y) + step) + 1)
    x0 = max(0, math.floor(np.nanmin(x) - step))
    x1 = min(nx, math.ceil(np.nanmax(x) + step) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    return y0, y1, x0, x1


def combine(blocks: list[BlockImage], grid: Grid | None = None,
            settings: MosaicSettings = MosaicSettings()) -> Mosaic:
    """Combine blocks on ``grid`` (default :func:`auto_grid`), weighted per pixel.

    ``settings.weighting == "pb2/sigma2"``: see the module docstring.
    ``"equal"``: mosaic = mean of S_pbcor over the blocks with pb >= cutoff,
    noise = sqrt(sum(sigma^2/pb^2)) / n (for comparison only).

    Raises
    ------
    PermanentError
        Inconsistent blocks (frequency, duplicates, units): one line naming the file.
    """
    check_consistent(blocks, settings.freq_tolerance)
    blocks = sorted(blocks, key=lambda b: (b.date_obs, b.block_id))
    grid = grid or auto_grid(blocks, settings)
    sum_w = np.zeros(grid.shape)
    sum_ws = np.zeros(grid.shape)
    sum_var = np.zeros(grid.shape) if settings.weighting == "equal" else None
    method = settings.interpolation
    for b in blocks:
        box = block_box(b, grid, settings.pb_cutoff)
        if box is None:
            log.warning("%s lies outside the mosaic grid; left out", b.name)
            continue
        finite_img = np.isfinite(b.image)
        ok_img = stencil_valid(finite_img, method)
        img = np.where(finite_img, b.image, 0.0).astype(np.float32)
        finite_pb = np.isfinite(b.pb)
        ok_pb = stencil_valid(finite_pb, "bilinear")
        pbd = np.where(finite_pb, b.pb, 0.0).astype(np.float32)
        y0, y1, x0, x1 = box
        rows = max(1, CHUNK_PIXELS // (x1 - x0))
        var = b.sigma_jy ** 2
        for r0 in range(y0, y1, rows):
            r1 = min(y1, r0 + rows)
            x, y = pixel_map(grid.wcs, b.wcs, r0, r1, x0, x1)
            pb, pb_ok = sample(pbd, ok_pb, x, y, "bilinear")
            use = pb_ok & (pb >= settings.pb_cutoff)
            s, s_ok = sample(img, ok_img, x, y, method)
            use &= s_ok
            pb = np.where(use, pb, 1.0)
            s = np.where(use, s, 0.0)
            sl = (slice(r0, r1), slice(x0, x1))
            if settings.weighting == "pb2/sigma2":
                sum_w[sl] += np.where(use, pb * pb / var, 0.0)
                sum_ws[sl] += pb * s / var  # w * S_pbcor = (pb^2/sigma^2) (s/pb)
            else:
                sum_w[sl] += use
                sum_ws[sl] += s / pb
                sum_var[sl] += np.where(use, var / (pb * pb), 0.0)
    covered = sum_w > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(covered, sum_ws / sum_w, np.nan)
        if settings.weighting == "pb2/sigma2":
            noise = np.where(covered, 1.0 / np.sqrt(sum_w), np.nan)
        else:
            noise = np.where(covered, np.sqrt(sum_var) / sum_w, np.nan)
    beam = max((b.beam_deg for b in blocks), key=lambda bm: bm[0] * bm[1])
    m = Mosaic(
        image=image.astype(np.float32), noise=noise.astype(np.float32),
        weight=np.where(covered, sum_w, np.nan).astype(np.float32), grid=grid,
        block_ids=[b.block_id for b in blocks], sigmas_jy=[b.sigma_jy for b in blocks], beam_deg=beam,
        freq_hz=blocks[0].freq_hz, date_obs=blocks[0].date_obs, settings=settings,
    )
    m.header = mosaic_header(m, blocks[0].header)
    return m


# ---------------------------------------------------------------------------
# products
# ---------------------------------------------------------------------------


def mosaic_header(m: Mosaic, template=None):
    """FITS header of the mosaic image: grid WCS, the template's other axes, beam, date, blocks."""
    from astropy.io import fits
    from astropy.time import Time

    h = fits.Header()
    h["NAXIS"] = 2
    h["NAXIS1"] = m.grid.shape[1]
    h["NAXIS2"] = m.grid.shape[0]
    h.update(m.grid.wcs.to_header())
    extra_axes = 0
    if template is not None:
        n = int(template.get("NAXIS", 2))
        for i in range(3, n + 1):
            extra_axes += 1
            h[f"NAXIS{i}"] = 1
            for k in ("CTYPE", "CRVAL", "CDELT", "CRPIX", "CUNIT"):
                if f"{k}{i}" in template:
                    h[f"{k}{i}"] = template[f"{k}{i}"]
        h["NAXIS"] = 2 + extra_axes
        for key in ("TELESCOP", "OBJECT", "SPECSYS", "RESTFRQ", "BANDWID", "PBMODEL"):
            if key in template:
                h[key] = template[key]
    if "FREQ" not in [str(h.get(f"CTYPE{i}", "")) for i in range(3, h["NAXIS"] + 1)]:
        h["RESTFRQ"] = (m.freq_hz, "[Hz] reference frequency of the blocks")
    h["BMAJ"], h["BMIN"], h["BPA"] = m.beam_deg
    h.comments["BMAJ"] = "[deg] largest beam of the blocks"
    h["BUNIT"] = "Jy/beam"
    h["DATE-OBS"] = (m.date_obs, "start of the first block (UTC)")
    h["MJD-OBS"] = (Time(m.date_obs, scale="utc").mjd, "start of the first block (UTC)")
    h["NBLOCKS"] = (len(m.block_ids), "number of blocks combined")
    h["PBCUT"] = (m.settings.pb_cutoff, "block pixels with pb below this are left out")
    h["WEIGHTNG"] = (m.settings.weighting, "per-pixel weight of each block")
    h["INTERP"] = (m.settings.interpolation, "reprojection interpolation")
    for i, bid in enumerate(m.block_ids[:999], start=1):
        h[f"BLOCK{i:03d}"] = bid
    for bid, s in zip(m.block_ids, m.sigmas_jy):
        h.add_history(f"contimg mosaic: block {bid} sigma={s:.4g} Jy/beam")
    return h


def _plane_shape(header, shape2d):
    n = int(header["NAXIS"])
    return tuple([1] * (n - 2)) + tuple(shape2d)


def write_fits(path: Path, data: np.ndarray, header) -> Path:
    """Write ``data`` (ny, nx) with ``header`` (shape padded to its axes) atomically."""
    from astropy.io import fits

    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fits.PrimaryHDU(data.reshape(_plane_shape(header, data.shape)), header=header).writeto(
            tmp, overwrite=True, output_verify="exception")
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
    return path


def write_mosaic(m: Mosaic, out: MosaicProducts) -> dict[str, Path]:
    """Write the image, noise and weight FITS of ``m`` atomically; return their paths."""
    h = m.header.copy()
    noise_h = h.copy()
    noise_h["BUNIT"] = "Jy/beam"
    noise_h["COMMENT"] = "noise map: 1/sqrt(sum pb^2/sigma^2)" if m.settings.weighting == "pb2/sigma2" \
        else "noise map: sqrt(sum sigma^2/pb^2)/n"
    weight_h = h.copy()
    if m.settings.weighting == "pb2/sigma2":
        weight_h["BUNIT"] = ("beam2/Jy2", "sum over blocks of pb^2/sigma^2")
    else:
        weight_h["BUNIT"] = ("", "number of blocks")
    return {
        "image": write_fits(out.image_fits, m.image, h),
        "noise": write_fits(out.noise_fits, m.noise, noise_h),
        "weight": write_fits(out.weight_fits, m.weight, weight_h),
    }


def quicklook(image: np.ndarray, wcs, path: str | os.PathLike, *, noise: np.ndarray | None = None,
              title: str = "", max_side: int = 1600) -> Path:
    """PNG of ``image`` with RA/Dec grid and a colour bar (Jy/beam), written atomically.

    Large images are block-averaged to at most ``max_side`` pixels a side.
    The stretch runs from -3 to +20 times the median noise (``noise`` map or
    the robust rms of the image).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    k = max(1, math.ceil(max(image.shape) / max_side))
    shown, w = image, wcs
    if k > 1:
        ny, nx = (image.shape[0] // k) * k, (image.shape[1] // k) * k
        with np.errstate(invalid="ignore"), _quiet():
            shown = np.nanmean(image[:ny, :nx].reshape(ny // k, k, nx // k, k), axis=(1, 3))
        w = wcs.slice((slice(0, ny, k), slice(0, nx, k)))
        w.wcs.crpix = w.wcs.crpix - (k - 1) / (2 * k)  # a pooled pixel is centred mid-block
    sigma = float(np.nanmedian(noise)) if noise is not None and np.isfinite(noise).any() else robust_rms(image)
    if not np.isfinite(sigma) or sigma <= 0:
        sigma = 1.0
    fig = plt.figure(figsize=(10, max(3.0, 10 * shown.shape[0] / shown.shape[1] + 1)))
    try:
        ax = fig.add_subplot(projection=w)
        im = ax.imshow(shown, origin="lower", cmap="inferno", vmin=-3 * sigma, vmax=20 * sigma)
        ax.coords.grid(True, color="white", alpha=0.4, ls="dotted")
        ax.coords[0].set_axislabel("RA (ICRS)")
        ax.coords[1].set_axislabel("Dec (ICRS)")
        fig.colorbar(im, ax=ax, label="Jy/beam", fraction=0.046, pad=0.04)
        if title:
            ax.set_title(title)
        tmp = temporary_name(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            os.replace(tmp, path)
        except BaseException:
            remove_path(tmp)
            raise
    finally:
        plt.close(fig)
    return path


class _quiet:
    """Silence numpy's 'Mean of empty slice' warnings for all-NaN pooled blocks."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


def make_mosaic(blocks: list[BlockProducts | tuple[str | os.PathLike, str | os.PathLike]], out: MosaicProducts,
                settings: MosaicSettings = MosaicSettings(), *, grid: Grid | None = None,
                png: bool = True) -> MosaicResult:
    """Read block images, combine them and write the mosaic products atomically.

    Parameters
    ----------
    blocks : list of BlockProducts or (image_fits, pb_fits)
        The blocks of the strip, any order.
    out : MosaicProducts
        Where the image, noise, weight FITS and the PNG go.
    settings : MosaicSettings
    grid : Grid, optional
        Output grid; default :func:`auto_grid`.
    png : bool
        Also write the quicklook PNG.

    Raises
    ------
    PermanentError
        A missing or unreadable block FITS, or blocks that cannot be combined
        (frequency, units, duplicates): one line naming the file.
    """
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    images = []
    for b in blocks:
        images.append(read_block_products(b) if isinstance(b, BlockProducts) else read_block(*b))
    seconds["read"] = round(time.perf_counter() - t0, 3)
    t = time.perf_counter()
    m = combine(images, grid, settings)
    seconds["combine"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    paths = write_mosaic(m, out)
    seconds["write"] = round(time.perf_counter() - t, 3)
    if png:
        t = time.perf_counter()
        paths["png"] = quicklook(m.image, m.grid.wcs, out.quicklook_png, noise=m.noise,
                                 title=f"{out.mosaic_id} ({len(m.block_ids)} blocks)")
        seconds["png"] = round(time.perf_counter() - t, 3)
    seconds["total"] = round(time.perf_counter() - t0, 3)
    covered = np.isfinite(m.noise)
    ny, nx = m.grid.shape
    ra0, dec0 = (float(v) for v in m.grid.wcs.wcs_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0])
    return MosaicResult(
        mosaic_id=out.mosaic_id, paths={k: str(v) for k, v in paths.items()}, block_ids=m.block_ids,
        n_blocks=len(m.block_ids), shape=m.grid.shape,
        cell_arcsec=float(abs(m.grid.wcs.wcs.cdelt[1])) * 3600, projection=m.grid.wcs.wcs.ctype[0][-3:],
        center_ra_deg=ra0, center_dec_deg=dec0, freq_hz=m.freq_hz,
        beam_major_arcsec=m.beam_deg[0] * 3600, beam_minor_arcsec=m.beam_deg[1] * 3600, beam_pa_deg=m.beam_deg[2],
        noise_min_jy=float(np.nanmin(m.noise)) if covered.any() else math.nan,
        noise_median_jy=float(np.nanmedian(m.noise)) if covered.any() else math.nan,
        covered_fraction=float(covered.mean()), seconds=seconds,
    )
