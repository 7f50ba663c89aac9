"""Blind source finding on a mosaic (or any image) with its noise map.

1. **Detection**: the signal-to-noise map ``image / noise`` (the mosaic's
   noise map, which varies across a strip) is cut at ``island_sigma``
   (default 3); connected pixels (8-connectivity, :func:`scipy.ndimage.label`)
   form an island, kept when its brightest pixel reaches ``threshold_sigma``
   (default 5).
2. **Components**: local maxima of the island (3x3) at or above
   ``threshold_sigma`` seed one elliptical Gaussian each (at most
   ``max_components``, brightest first).
3. **Fit**: all components of an island are fitted together (amplitude,
   centre, two widths, angle; :func:`scipy.optimize.least_squares`, bounded)
   to the island's pixels widened by ``fit_margin_beams`` beam majors (so the
   wings below the island cut are seen too) and excluding other islands. A
   secondary component fitted below ``threshold_sigma`` is dropped and the
   island refitted (a noise bump on a bright source's wing). When the free
   fit fails or runs to a bound, the restoring beam is fitted instead
   (amplitude and centre; flag ``FIXED_BEAM``), and when that fails too, the
   peak pixel and the flux-weighted centroid are reported (flag ``MOMENTS``).
4. **Measurements** per component: RA, Dec, peak flux (Jy/beam), integrated
   flux ``peak * (theta_maj theta_min) / (bmaj bmin)`` (Jy), fitted FWHM and
   position angle (not deconvolved), the noise map at the position
   (``local_rms``), ``snr = peak / local_rms``. Errors come from the fit's
   covariance with the sandwich estimator for noise correlated over the
   restoring beam (:func:`_parameter_covariance`); Condon (1997, PASP 109,
   166) when there is no fit (moments). The tests check their calibration
   (Condon's formulas alone gave position errors 1.4x too small).

The image is assumed background-subtracted (an interferometric image has
zero mean). See ``docs/mosaics.md`` for why this finder and not PyBDSF or
photutils.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PermanentError
from .fitsimage import read_plane
from .products import CATALOGUE_FORMATS, MosaicProducts, remove_path, temporary_name

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
MAD_TO_SIGMA = 1.4826

# flags (bits)
FIXED_BEAM = 1
"""The free Gaussian fit failed: the restoring beam was fitted (amplitude, centre)."""
MOMENTS = 2
"""Both fits failed: peak pixel and flux-weighted centroid."""
MULTIPLE = 4
"""The island holds more than one component."""
AT_EDGE = 8
"""The island touches the image edge or a blank (NaN) pixel: the flux may be incomplete."""
LARGE_ISLAND = 16
"""The island exceeds ``max_island_beams``: its components were fitted one by one within a beam of their peaks."""

ASTROPY_FORMATS = {"ecsv": "ascii.ecsv", "votable": "votable"}


@dataclass(frozen=True)
class FinderSettings:
    """How sources are found and measured."""

    threshold_sigma: float = 5.0
    """An island is a source when its brightest pixel reaches this many times the local noise."""
    island_sigma: float = 3.0
    """Pixels above this many sigma form islands."""
    max_components: int = 8
    """Gaussians fitted per island at most (the brightest local maxima)."""
    fit_margin_beams: float = 0.5
    """The fit sees the island widened by this many beam majors."""
    max_size_beams: float = 10.0
    """Upper bound of a fitted FWHM, in beam majors (a compact-source finder)."""
    max_island_beams: float = 30.0
    """Islands larger than this many beam areas are not fitted jointly (flag LARGE_ISLAND)."""

    def __post_init__(self):
        if not 0 < self.island_sigma <= self.threshold_sigma:
            raise ValueError(
                f"island_sigma {self.island_sigma} must be positive and at most threshold_sigma {self.threshold_sigma}"
            )
        if self.max_components < 1:
            raise ValueError(f"max_components {self.max_components} must be at least 1")


COLUMNS = [
    ("source_id", None, "running number, brightest island first"),
    ("island_id", None, "island the component belongs to"),
    ("ra", "deg", "right ascension (ICRS)"),
    ("dec", "deg", "declination (ICRS)"),
    ("ra_err", "arcsec", "1-sigma error of ra (on the sky)"),
    ("dec_err", "arcsec", "1-sigma error of dec"),
    ("peak_flux", "Jy/beam", "fitted peak"),
    ("peak_flux_err", "Jy/beam", "1-sigma error of peak_flux"),
    ("int_flux", "Jy", "integrated flux density"),
    ("int_flux_err", "Jy", "1-sigma error of int_flux"),
    ("local_rms", "Jy/beam", "noise map at the position"),
    ("snr", None, "peak_flux / local_rms"),
    ("maj", "arcsec", "fitted FWHM, major axis (not deconvolved)"),
    ("min", "arcsec", "fitted FWHM, minor axis"),
    ("pa", "deg", "position angle of the major axis, east of north"),
    ("x", "pix", "0-based pixel x of the centre"),
    ("y", "pix", "0-based pixel y of the centre"),
    ("n_components", None, "components fitted in the island"),
    ("flags", None, "bits: 1 fixed-beam fit, 2 moments, 4 multiple, 8 at edge, 16 large island"),
]


def robust_rms(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return MAD_TO_SIGMA * float(np.median(np.abs(v - np.median(v)))) if v.size else math.nan


def find_sources(image: np.ndarray, wcs, beam_deg: tuple[float, float, float], noise: np.ndarray | float | None = None,
                 settings: FinderSettings = FinderSettings()):
    """Find and measure the sources of an image.

    Parameters
    ----------
    image : array (ny, nx)
        Jy/beam; NaN where blank.
    wcs : astropy.wcs.WCS
        Celestial WCS of the image.
    beam_deg : (float, float, float)
        Restoring beam BMAJ, BMIN (degrees) and BPA (degrees east of north).
    noise : array (ny, nx) or float, optional
        Noise map (Jy/beam). Default: the robust rms of the image, everywhere.
    settings : FinderSettings

    Returns
    -------
    astropy.table.Table
        One row per component, columns :data:`COLUMNS` with units.
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float64)
    if noise is None:
        noise = robust_rms(image)
    noise = np.broadcast_to(np.asarray(noise, dtype=np.float64), image.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(np.isfinite(image) & (noise > 0), image / noise, np.nan)
    blank = ~np.isfinite(snr)
    snr0 = np.where(blank, -np.inf, snr)
    labels, n_isl = ndimage.label(snr0 >= settings.island_sigma, structure=np.ones((3, 3)))
    rows = []
    if n_isl:
        peaks = ndimage.maximum(snr0, labels, index=np.arange(1, n_isl + 1))
        geometry = _Geometry(wcs, beam_deg)
        slices = ndimage.find_objects(labels)
        margin = int(math.ceil(settings.fit_margin_beams * geometry.bmaj_pix)) + 1
        order = np.argsort(-peaks)
        for k in order:
            if peaks[k] < settings.threshold_sigma:
                break
            rows.extend(_measure_island(image, noise, snr0, blank, labels, k + 1, slices[k], margin, geometry,
                                        settings))
    return _table(rows, wcs, beam_deg, settings)


def find_sources_fits(image_fits: str | os.PathLike, noise_fits: str | os.PathLike | None = None,
                      settings: FinderSettings = FinderSettings()):
    """:func:`find_sources` on a FITS image (with BMAJ/BMIN/BPA) and its noise-map FITS."""
    from astropy.wcs import WCS

    header, image = read_plane(image_fits, todo="make the mosaic first")
    for key in ("BMAJ", "BMIN", "BPA"):
        if key not in header:
            raise PermanentError(f"{image_fits}: no {key} in the header; the finder needs the restoring beam")
    noise = None
    if noise_fits is not None:
        _, noise = read_plane(noise_fits, todo="make the mosaic first")
        if noise.shape != image.shape:
            raise PermanentError(f"{noise_fits}: noise map shape {noise.shape} differs from the image's {image.shape}")
    table = find_sources(image, WCS(header).celestial, (header["BMAJ"], header["BMIN"], header["BPA"]), noise,
                         settings)
    table.meta["image"] = str(image_fits)
    table.meta["noise_map"] = str(noise_fits) if noise_fits is not None else "robust rms of the image"
    for key in ("DATE-OBS", "NBLOCKS", "RESTFRQ"):
        if key in header:
            table.meta[key] = header[key]
    return table


def write_catalogue(table, path: str | os.PathLike, fmt: str) -> Path:
    """Write ``table`` as ``fmt`` (``ecsv`` or ``votable``) atomically."""
    if fmt not in ASTROPY_FORMATS:
        raise ValueError(f"catalogue format {fmt!r} is not one of {', '.join(ASTROPY_FORMATS)}")
    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        out = table.copy(copy_data=False)
        if fmt == "votable":  # VOTable meta must be strings
            out.meta = {k: str(v) for k, v in table.meta.items()}
        out.write(tmp, format=ASTROPY_FORMATS[fmt], overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
    return path


def write_catalogues(table, out: MosaicProducts) -> dict[str, Path]:
    """The mosaic's catalogue in every format of :data:`contimg.products.CATALOGUE_FORMATS`."""
    return {fmt: write_catalogue(table, out.catalogue(fmt), fmt) for fmt in CATALOGUE_FORMATS}


# ---------------------------------------------------------------------------
# internals
# ---------------------------------------------------------------------------


class _Geometry:
    """Pixel scale and beam in pixels of an image."""

    def __init__(self, wcs, beam_deg):
        from astropy.wcs.utils import proj_plane_pixel_scales

        self.wcs = wcs
        scales = proj_plane_pixel_scales(wcs)  # deg per pixel along x, y
        self.cell_deg = float(np.sqrt(scales[0] * scales[1]))
        self.bmaj_pix = beam_deg[0] / self.cell_deg
        self.bmin_pix = beam_deg[1] / self.cell_deg
        self.bpa_rad = math.radians(beam_deg[2])
        self.beam_theta = _pa_to_theta(self.bpa_rad)
        self.sig_bmaj = self.bmaj_pix * FWHM_TO_SIGMA
        self.sig_bmin = self.bmin_pix * FWHM_TO_SIGMA
        self._kernel = None

    def beam_kernel(self) -> np.ndarray:
        """The restoring beam (peak 1) on integer pixel offsets out to 5 sigma_major: the noise correlation."""
        if self._kernel is None:
            r = int(math.ceil(5 * self.sig_bmaj))
            dy, dx = np.mgrid[-r:r + 1, -r:r + 1].astype(float)
            self._kernel = _gauss((1.0, 0.0, 0.0, self.sig_bmaj, self.sig_bmin, self.beam_theta), dx, dy)
        return self._kernel


def _pa_to_theta(pa_rad: float) -> float:
    """Angle of the major axis from +x (counter-clockwise) for PA east of north (north +y, east -x)."""
    return pa_rad + math.pi / 2


def _gauss(p, x, y):
    """Elliptical Gaussian: p = (amp, x0, y0, sig_major, sig_minor, theta from +x)."""
    a, x0, y0, sa, sb, th = p
    c, s = math.cos(th), math.sin(th)
    dx, dy = x - x0, y - y0
    u = dx * c + dy * s
    v = -dx * s + dy * c
    return a * np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))


def _gauss_and_derivatives(p, x, y):
    """The Gaussian and its derivatives by (amp, x0, y0, sig_major, sig_minor, theta): shape (7, npix)."""
    a, x0, y0, sa, sb, th = p
    c, s = math.cos(th), math.sin(th)
    dx, dy = x - x0, y - y0
    u = dx * c + dy * s
    v = -dx * s + dy * c
    e = np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
    g = a * e
    ua, vb = u / (sa * sa), v / (sb * sb)
    return np.stack([g, e, g * (ua * c - vb * s), g * (ua * s + vb * c), g * u * ua / sa, g * v * vb / sb,
                     g * u * v * (1 / (sb * sb) - 1 / (sa * sa))])


def _measure_island(image, noise, snr0, blank, labels, label, sl, margin, g: _Geometry, st: FinderSettings):
    from scipy import ndimage

    ny, nx = image.shape
    y0, y1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, ny)
    x0, x1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, nx)
    lab = labels[y0:y1, x0:x1]
    isl = lab == label
    cut = image[y0:y1, x0:x1]
    s_cut = snr0[y0:y1, x0:x1]
    n_cut = noise[y0:y1, x0:x1]
    yy, xx = np.mgrid[y0:y1, x0:x1]
    grown = ndimage.binary_dilation(isl, structure=np.ones((3, 3)), iterations=margin)
    fit_mask = grown & ((lab == 0) | isl) & np.isfinite(cut)
    flags = 0
    touches_edge = (sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == ny or sl[1].stop == nx or
                    (ndimage.binary_dilation(isl, structure=np.ones((3, 3))) & blank[y0:y1, x0:x1]).any())
    if touches_edge:
        flags |= AT_EDGE

    # Seeds: local maxima of the SNR in the island at or above the threshold, brightest first.
    local_max = (s_cut == ndimage.maximum_filter(s_cut, size=3, mode="constant", cval=-np.inf)) & isl
    local_max &= s_cut >= st.threshold_sigma
    seeds = sorted(zip(*np.nonzero(local_max)), key=lambda ij: -s_cut[ij])[: st.max_components]
    if not seeds:  # a plateau: the brightest pixel
        seeds = [np.unravel_index(np.argmax(np.where(isl, s_cut, -np.inf)), isl.shape)]
    comps = [(float(cut[i, j]), float(xx[i, j]), float(yy[i, j])) for i, j in seeds]

    beam_area = 2 * math.pi * g.sig_bmaj * g.sig_bmin
    if isl.sum() <= st.max_island_beams * beam_area:
        groups = [(comps, fit_mask)]
    else:
        # Too large to fit jointly (extended emission or a wrong noise map): each component on
        # its own, on the island pixels within one beam major of its seed.
        flags |= LARGE_ISLAND
        groups = [([c], fit_mask & (np.hypot(xx - c[1], yy - c[2]) <= g.bmaj_pix)) for c in comps]

    rows = []
    n_total = len(comps)
    for group, mask in groups:
        fitted, jac, kind = _fit_island(group, mask, cut, n_cut, isl, xx, yy, (x0, x1, y0, y1), g, st, noise)
        cov = _parameter_covariance(jac, mask, g) if jac is not None else None
        npar = 3 if kind == FIXED_BEAM else 6
        n_total = n_total if flags & LARGE_ISLAND else len(fitted)
        for k, p in enumerate(fitted):
            amp, x, y, sa, sb, th = p
            rms = _noise_at(noise, x, y)
            f = flags | kind | (MULTIPLE if n_total > 1 else 0)
            c = cov[npar * k: npar * k + npar, npar * k: npar * k + npar] if cov is not None else None
            rows.append(_row(amp, x, y, sa, sb, th, rms, g, label, n_total, f, c))
    return rows


def _fit_island(comps, mask, cut, n_cut, isl, xx, yy, box, g: _Geometry, st: FinderSettings, noise):
    """Fit ``comps`` jointly to the pixels of ``mask``: (fitted, jacobian or None, kind flag).

    Free Gaussians, else the fixed beam, else moments; secondary components
    fitted below the threshold are dropped and the rest refitted.
    """
    z = cut[mask]
    fx, fy = xx[mask].astype(float), yy[mask].astype(float)
    nz = n_cut[mask]
    size_hi = st.max_size_beams * g.sig_bmaj
    size_lo = 0.5 * g.sig_bmin
    while True:
        result = _fit_free(comps, fx, fy, z, nz, g, size_lo, size_hi, box)
        kind = 0
        if result is None:
            result = _fit_fixed(comps, fx, fy, z, nz, g, box)
            kind = FIXED_BEAM
        if result is None:
            result = _moments(comps, cut, isl, xx, yy, g)
            kind = MOMENTS
        fitted, jac = result
        keep = [0] + [i for i in range(1, len(fitted))
                      if fitted[i][0] >= st.threshold_sigma * _noise_at(noise, fitted[i][1], fitted[i][2])]
        if len(keep) == len(fitted) or kind == MOMENTS:
            return fitted, jac, kind
        comps = [(fitted[i][0], fitted[i][1], fitted[i][2]) for i in keep]


def _parameter_covariance(jac: np.ndarray, fit_mask: np.ndarray, g: _Geometry) -> np.ndarray | None:
    """Covariance of least-squares parameters whose residuals have noise correlated like the beam.

    The fit minimises sum(r^2) with r = (model - data) / noise, but the noise
    of neighbouring pixels is correlated by the restoring beam (correlation
    matrix R), so Cov = (J^T J)^-1 (J^T R J) (J^T J)^-1 (the sandwich
    estimator). R J is a convolution of each column of J, laid out on the
    pixel grid, with the beam.
    """
    from scipy.signal import fftconvolve

    jtj = jac.T @ jac
    try:
        inv = np.linalg.inv(jtj)
    except np.linalg.LinAlgError:
        return None
    kernel = g.beam_kernel()
    rows, cols = np.nonzero(fit_mask.any(axis=1))[0], np.nonzero(fit_mask.any(axis=0))[0]
    fit_mask = fit_mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # J is zero outside: crop exactly
    grid = np.zeros((jac.shape[1],) + fit_mask.shape)
    grid[:, fit_mask] = jac.T
    rj = fftconvolve(grid, kernel[None], mode="same", axes=(1, 2))[:, fit_mask]  # (npar, npix)
    jrj = jac.T @ rj.T
    cov = inv @ jrj @ inv
    return 0.5 * (cov + cov.T)


def _noise_at(noise, x, y):
    ny, nx = noise.shape
    i = min(max(int(round(y)), 0), ny - 1)
    j = min(max(int(round(x)), 0), nx - 1)
    return float(noise[i, j])


def _fit_free(comps, fx, fy, z, nz, g: _Geometry, size_lo, size_hi, box):
    from scipy.optimize import least_squares

    n = len(comps)
    if z.size < 6 * n + 1:
        return None
    x0, x1, y0, y1 = box
    p0, lo, hi = [], [], []
    for a, x, y in comps:
        p0 += [max(a, 1e-30), x, y, min(max(g.sig_bmaj, size_lo * 1.01), size_hi * 0.99),
               min(max(g.sig_bmin, size_lo * 1.01), size_hi * 0.99), g.beam_theta]
        lo += [0.0, x0 - 0.5, y0 - 0.5, size_lo, size_lo, g.beam_theta - math.pi]
        hi += [np.inf, x1 - 0.5, y1 - 0.5, size_hi, size_hi, g.beam_theta + math.pi]

    def resid(p):
        m = np.zeros_like(z)
        for k in range(n):
            m += _gauss(p[6 * k: 6 * k + 6], fx, fy)
        return (m - z) / nz

    def jac(p):
        out = np.empty((z.size, 6 * n))
        for k in range(n):
            out[:, 6 * k: 6 * k + 6] = (_gauss_and_derivatives(p[6 * k: 6 * k + 6], fx, fy)[1:] / nz).T
        return out

    try:
        sol = least_squares(resid, p0, jac=jac, bounds=(lo, hi), x_scale="jac", max_nfev=100 * (n + 1))
    except (ValueError, np.linalg.LinAlgError):
        return None
    if not sol.success:
        return None
    out = []
    jac = sol.jac.copy()
    for k in range(n):
        a, x, y, sa, sb, th = sol.x[6 * k: 6 * k + 6]
        near_bound = (min(sa, sb) <= size_lo * 1.001 or max(sa, sb) >= size_hi * 0.999 or a <= 0
                      or math.hypot(x - comps[k][1], y - comps[k][2]) > 2 * g.bmaj_pix)
        if near_bound:
            return None
        if sb > sa:  # keep sa the major axis
            sa, sb, th = sb, sa, th + math.pi / 2
            jac[:, [6 * k + 3, 6 * k + 4]] = jac[:, [6 * k + 4, 6 * k + 3]]
        out.append((float(a), float(x), float(y), float(sa), float(sb), float(th)))
    return out, jac


def _fit_fixed(comps, fx, fy, z, nz, g: _Geometry, box):
    from scipy.optimize import least_squares

    n = len(comps)
    if z.size < 3 * n + 1:
        return None
    x0, x1, y0, y1 = box
    p0, lo, hi = [], [], []
    for a, x, y in comps:
        p0 += [max(a, 1e-30), x, y]
        lo += [0.0, x0 - 0.5, y0 - 0.5]
        hi += [np.inf, x1 - 0.5, y1 - 0.5]

    def resid(p):
        m = np.zeros_like(z)
        for k in range(n):
            m += _gauss((p[3 * k], p[3 * k + 1], p[3 * k + 2], g.sig_bmaj, g.sig_bmin, g.beam_theta), fx, fy)
        return (m - z) / nz

    def jac(p):
        out = np.empty((z.size, 3 * n))
        for k in range(n):
            d = _gauss_and_derivatives((p[3 * k], p[3 * k + 1], p[3 * k + 2], g.sig_bmaj, g.sig_bmin, g.beam_theta),
                                       fx, fy)
            out[:, 3 * k: 3 * k + 3] = (d[1:4] / nz).T
        return out

    try:
        sol = least_squares(resid, p0, jac=jac, bounds=(lo, hi), x_scale="jac", max_nfev=100 * (n + 1))
    except (ValueError, np.linalg.LinAlgError):
        return None
    if not sol.success:
        return None
    out = []
    for k in range(n):
        a, x, y = sol.x[3 * k: 3 * k + 3]
        if a <= 0 or math.hypot(x - comps[k][1], y - comps[k][2]) > g.bmaj_pix:
            return None
        out.append((float(a), float(x), float(y), g.sig_bmaj, g.sig_bmin, g.beam_theta))
    return out, sol.jac.copy()


def _moments(comps, cut, isl, xx, yy, g: _Geometry):
    a, x, y = comps[0]
    w = np.where(isl & (cut >= 0.5 * a), cut, 0.0)
    if w.sum() > 0:
        x = float((w * xx).sum() / w.sum())
        y = float((w * yy).sum() / w.sum())
    return [(a, x, y, g.sig_bmaj, g.sig_bmin, g.beam_theta)], None


def _rho2(theta_maj, theta_min, theta_n, snr, a_maj, a_min):
    """Condon (1997) eq. 41: rho^2 for exponents (alpha_M, alpha_m)."""
    return (theta_maj * theta_min / (4 * theta_n**2) * (1 + (theta_n / theta_maj) ** 2) ** a_maj
            * (1 + (theta_n / theta_min) ** 2) ** a_min * snr**2)


def _row(amp, x, y, sa, sb, th, rms, g: _Geometry, island, n_comp, flags, cov=None):
    """One catalogue row from a fitted component (pixel units), the local noise and the fit covariance.

    Errors from ``cov`` (parameters amp, x, y[, sig_major, sig_minor, theta]
    in the fit's units) when given, else Condon (1997).
    """
    ra, dec = (float(v) for v in g.wcs.wcs_pix2world([[x, y]], 0)[0])
    tmaj, tmin = sa / FWHM_TO_SIGMA, sb / FWHM_TO_SIGMA  # FWHM, pixels
    tn = math.sqrt(g.bmaj_pix * g.bmin_pix)  # noise correlation length: the restoring beam
    snr = amp / rms if rms > 0 else math.nan
    r_amp = _rho2(tmaj, tmin, tn, snr, 1.5, 1.5)
    r_maj = _rho2(tmaj, tmin, tn, snr, 2.5, 0.5)
    r_min = _rho2(tmaj, tmin, tn, snr, 0.5, 2.5)
    amp_err = amp * math.sqrt(2 / r_amp) if r_amp > 0 else math.nan
    pos_err_maj = sa * math.sqrt(2 / r_maj) if r_maj > 0 else math.nan  # pixels, along the major axis
    pos_err_min = sb * math.sqrt(2 / r_min) if r_min > 0 else math.nan
    maj_err = tmaj * math.sqrt(2 / r_maj) if r_maj > 0 else math.nan
    min_err = tmin * math.sqrt(2 / r_min) if r_min > 0 else math.nan
    area_ratio = (tmaj * tmin) / (g.bmaj_pix * g.bmin_pix)
    int_flux = amp * area_ratio
    if flags & (FIXED_BEAM | MOMENTS):
        int_err = abs(int_flux) * (amp_err / amp if amp else math.nan)
    else:
        int_err = abs(int_flux) * math.sqrt((amp_err / amp) ** 2 + (1 / area_ratio)
                                            * ((maj_err / tmaj) ** 2 + (min_err / tmin) ** 2))
    # Position angle east of north of the major axis (x to the west, y to the north).
    pa = math.degrees(th - math.pi / 2) % 180.0
    # Covariance of (x, y) in pixels, then on the sky through the local WCS Jacobian.
    if cov is not None and np.all(np.isfinite(cov)) and np.all(np.diag(cov) >= 0):
        amp_err = math.sqrt(cov[0, 0])
        cxy = cov[1:3, 1:3]
        if cov.shape[0] == 6:
            grad = np.array([area_ratio, amp * area_ratio / sa, amp * area_ratio / sb])
            int_err = math.sqrt(max(float(grad @ cov[np.ix_([0, 3, 4], [0, 3, 4])] @ grad), 0.0))
            maj_err = math.sqrt(cov[3, 3]) / FWHM_TO_SIGMA
            min_err = math.sqrt(cov[4, 4]) / FWHM_TO_SIGMA
        else:
            int_err = amp_err * area_ratio
    else:
        u = np.array([math.cos(th), math.sin(th)])
        v = np.array([-math.sin(th), math.cos(th)])
        cxy = pos_err_maj**2 * np.outer(u, u) + pos_err_min**2 * np.outer(v, v)
    jw = _sky_jacobian(g.wcs, x, y)  # arcsec (east, north) per pixel
    csky = jw @ cxy @ jw.T
    ra_err, dec_err = math.sqrt(max(csky[0, 0], 0.0)), math.sqrt(max(csky[1, 1], 0.0))
    return dict(
        island_id=island, ra=ra, dec=dec, ra_err=ra_err, dec_err=dec_err, peak_flux=amp, peak_flux_err=amp_err,
        int_flux=int_flux, int_flux_err=int_err, local_rms=rms, snr=snr,
        maj=tmaj * g.cell_deg * 3600, min=tmin * g.cell_deg * 3600, pa=pa, x=x, y=y, n_components=n_comp,
        flags=flags,
    )


def _sky_jacobian(wcs, x, y, h=0.5):
    """d(east, north)/d(x, y) in arcsec per pixel at pixel (x, y)."""
    pts = np.array([[x - h, y], [x + h, y], [x, y - h], [x, y + h]])
    w = wcs.wcs_pix2world(pts, 0)
    cosd = math.cos(math.radians(w[:, 1].mean()))
    dra = (w[:, 0] - w[:, 0].mean() + 180.0) % 360.0 - 180.0
    j = np.array([[(dra[1] - dra[0]) * cosd, (dra[3] - dra[2]) * cosd],
                  [w[1, 1] - w[0, 1], w[3, 1] - w[2, 1]]]) / (2 * h)
    return j * 3600.0


def _table(rows, wcs, beam_deg, st: FinderSettings):
    from astropy import units as u
    from astropy.table import Table

    t = Table()
    for i, r in enumerate(rows, start=1):
        r["source_id"] = i
    for name, unit, desc in COLUMNS:
        values = [r[name] for r in rows]
        dtype = np.int64 if name in ("source_id", "island_id", "n_components", "flags") else np.float64
        col = np.array(values, dtype=dtype)
        t[name] = col * u.Unit(unit) if unit else col
        t[name].description = desc
    t.meta.update({
        "finder": "contimg.sourcefind",
        "threshold_sigma": st.threshold_sigma,
        "island_sigma": st.island_sigma,
        "beam_major_arcsec": beam_deg[0] * 3600,
        "beam_minor_arcsec": beam_deg[1] * 3600,
        "beam_pa_deg": beam_deg[2],
        "errors": "Condon (1997) for noise correlated over the restoring beam",
    })
    return t
