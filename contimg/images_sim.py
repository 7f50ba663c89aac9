"""Synthetic block images of a declination strip, with known sky and noise.

For the mosaic and source-finder tests and benches: each block is a
flat-noise image ``pb * sky (x) beam + noise`` on its own SIN grid centred on
its phase centre (the meridian at the pointing declination at the block's
mid-time: consecutive blocks step by 309 s of sidereal time in RA), with

- point sources rendered as the restoring beam (an elliptical Gaussian,
  BMAJ/BMIN/BPA of the header) at their exact sub-pixel positions, scaled by
  the primary beam at the source;
- a Gaussian primary beam of FWHM ``pb_fwhm_deg`` centred on the phase centre
  (the Airy main lobe to a few %; the ``pb`` product is written from it);
- noise correlated like an interferometric image's: white noise filtered so
  that its autocorrelation is the restoring beam, scaled to rms ``sigma``.

Headers are like :mod:`contimg.imaging`'s exports: RA, Dec, Stokes, Freq axes,
BMAJ/BMIN/BPA, BUNIT, DATE-OBS, BLOCKID.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from .products import format_timestamp

SIDEREAL_DEG_PER_S = 360.0 / 86164.0905
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass
class StripSpec:
    """A strip of overlapping blocks at one declination."""

    dec_deg: float = 54.6
    ra0_deg: float = 150.0
    """Phase centre RA of the first block."""
    n_blocks: int = 6
    block_seconds: float = 309.0
    """Block length: the RA step between consecutive phase centres is this much sidereal time."""
    npix: int = 256
    cell_arcsec: float = 60.0
    beam_deg: tuple[float, float, float] = (4.8 / 60, 4.0 / 60, 30.0)
    """Restoring beam BMAJ, BMIN (deg), BPA (deg east of north)."""
    pb_fwhm_deg: float = 2.7
    freq_hz: float = 1.405e9
    sigmas_jy: list[float] = field(default_factory=lambda: [1e-3])
    """Noise per block (cycled when shorter than n_blocks)."""
    start: datetime = datetime(2025, 10, 5, 3, 12, 45, tzinfo=timezone.utc)

    def ra_step_deg(self) -> float:
        return self.block_seconds * SIDEREAL_DEG_PER_S

    def centre(self, i: int) -> tuple[float, float]:
        return (self.ra0_deg + i * self.ra_step_deg()) % 360.0, self.dec_deg

    def block_id(self, i: int) -> str:
        return format_timestamp(self.start + timedelta(seconds=i * self.block_seconds))

    def sigma(self, i: int) -> float:
        return float(self.sigmas_jy[i % len(self.sigmas_jy)])


def block_header(spec: StripSpec, i: int):
    """The FITS header of block ``i`` (4 axes: RA, Dec, Stokes, Freq)."""
    from astropy.io import fits

    ra, dec = spec.centre(i)
    n = spec.npix
    h = fits.Header()
    h["NAXIS"] = 4
    h["NAXIS1"], h["NAXIS2"], h["NAXIS3"], h["NAXIS4"] = n, n, 1, 1
    for ax, (ctype, crval, cdelt, crpix, cunit) in enumerate([
        ("RA---SIN", ra, -spec.cell_arcsec / 3600, n / 2 + 1, "deg"),
        ("DEC--SIN", dec, spec.cell_arcsec / 3600, n / 2 + 1, "deg"),
        ("STOKES", 1.0, 1.0, 1.0, ""),
        ("FREQ", spec.freq_hz, 187.5e6, 1.0, "Hz"),
    ], start=1):
        h[f"CTYPE{ax}"], h[f"CRVAL{ax}"], h[f"CDELT{ax}"], h[f"CRPIX{ax}"] = ctype, crval, cdelt, crpix
        if cunit:
            h[f"CUNIT{ax}"] = cunit
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    h["SPECSYS"] = "LSRK"
    h["BMAJ"], h["BMIN"], h["BPA"] = spec.beam_deg
    h["BUNIT"] = "Jy/beam"
    h["TELESCOP"] = "DSA-110"
    h["DATE-OBS"] = spec.block_id(i)
    h["MJD-OBS"] = (spec.start + timedelta(seconds=i * spec.block_seconds)).timestamp() / 86400.0 + 40587.0
    h["BLOCKID"] = spec.block_id(i)
    return h


def beam_covariance_pix(beam_deg: tuple[float, float, float], cell_deg: float) -> np.ndarray:
    """2x2 covariance (pixels^2, axes x, y) of the restoring beam; x increases to the west."""
    sm = beam_deg[0] / cell_deg * FWHM_TO_SIGMA
    sn = beam_deg[1] / cell_deg * FWHM_TO_SIGMA
    pa = math.radians(beam_deg[2])
    u = np.array([-math.sin(pa), math.cos(pa)])  # major axis: from north towards east (-x)
    v = np.array([math.cos(pa), math.sin(pa)])
    return sm * sm * np.outer(u, u) + sn * sn * np.outer(v, v)


def correlated_noise(shape: tuple[int, int], cov_pix: np.ndarray, sigma: float, rng) -> np.ndarray:
    """Gaussian noise of rms ``sigma`` whose autocorrelation is a Gaussian of covariance ``cov_pix``."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    c = cov_pix / 2.0  # a kernel of covariance C/2, correlated with itself, has covariance C
    q = c[0, 0] * fx * fx + 2 * c[0, 1] * fx * fy + c[1, 1] * fy * fy
    out = np.fft.irfft2(np.fft.rfft2(white) * np.exp(-2 * math.pi**2 * q), s=shape)
    return out * (sigma / out.std())


def gaussian_pb(wcs, shape, centre: tuple[float, float], fwhm_deg: float) -> np.ndarray:
    """Gaussian primary beam (peak 1) on the pixels of ``wcs``."""
    yy, xx = np.indices(shape, dtype=float)
    ra, dec = wcs.wcs_pix2world(xx, yy, 0)
    sep = angular_separation_deg(ra, dec, *centre)
    return np.exp(-0.5 * (sep / (fwhm_deg * FWHM_TO_SIGMA)) ** 2)


def angular_separation_deg(ra, dec, ra0, dec0):
    ra, dec, ra0, dec0 = (np.radians(v) for v in (ra, dec, ra0, dec0))
    c = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(ra - ra0)
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def add_point_sources(image: np.ndarray, wcs, cov_pix: np.ndarray, ra, dec, amplitude) -> None:
    """Add beam-shaped sources of peak ``amplitude`` at (ra, dec) to ``image`` in place."""
    ny, nx = image.shape
    inv = np.linalg.inv(cov_pix)
    r = int(math.ceil(5 * math.sqrt(np.linalg.eigvalsh(cov_pix).max())))
    xs, ys = wcs.wcs_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
    for x0, y0, a in zip(xs, ys, np.atleast_1d(amplitude)):
        ix, iy = int(round(x0)), int(round(y0))
        if not (-r <= ix < nx + r and -r <= iy < ny + r):
            continue
        ylo, yhi, xlo, xhi = max(iy - r, 0), min(iy + r + 1, ny), max(ix - r, 0), min(ix + r + 1, nx)
        if ylo >= yhi or xlo >= xhi:
            continue
        dy, dx = np.mgrid[ylo:yhi, xlo:xhi]
        dx = dx - x0
        dy = dy - y0
        q = inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy
        image[ylo:yhi, xlo:xhi] += a * np.exp(-0.5 * q)


def synth_block(spec: StripSpec, i: int, ra=(), dec=(), flux=(), *, rng=None, noise: bool = True):
    """(image, pb, header) of block ``i`` with point sources of ``flux`` (Jy) at (ra, dec)."""
    from astropy.wcs import WCS

    rng = np.random.default_rng(rng)
    h = block_header(spec, i)
    wcs = WCS(h).celestial
    shape = (spec.npix, spec.npix)
    pb = gaussian_pb(wcs, shape, spec.centre(i), spec.pb_fwhm_deg)
    cov = beam_covariance_pix(spec.beam_deg, spec.cell_arcsec / 3600)
    image = correlated_noise(shape, cov, spec.sigma(i), rng) if noise else np.zeros(shape)
    ra, dec, flux = (np.atleast_1d(np.asarray(v, float)) for v in (ra, dec, flux))
    if ra.size:
        pb_at = np.exp(-0.5 * (angular_separation_deg(ra, dec, *spec.centre(i))
                               / (spec.pb_fwhm_deg * FWHM_TO_SIGMA)) ** 2)
        add_point_sources(image, wcs, cov, ra, dec, flux * pb_at)
    return image.astype(np.float32), pb.astype(np.float32), h


def write_block(directory: Path, image: np.ndarray, pb: np.ndarray, header) -> tuple[Path, Path]:
    """Write ``{block_id}.image.fits`` and ``{block_id}.pb.fits`` into ``directory``."""
    from astropy.io import fits

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bid = header["BLOCKID"]
    img_path = directory / f"{bid}.image.fits"
    pb_path = directory / f"{bid}.pb.fits"
    fits.PrimaryHDU(image.reshape(1, 1, *image.shape), header=header).writeto(img_path, overwrite=True)
    pb_header = header.copy()
    pb_header["BUNIT"] = ""
    fits.PrimaryHDU(pb.reshape(1, 1, *pb.shape), header=pb_header).writeto(pb_path, overwrite=True)
    return img_path, pb_path


def write_strip(spec: StripSpec, directory: Path, ra=(), dec=(), flux=(), *, seed: int = 0,
                noise: bool = True) -> list[tuple[Path, Path]]:
    """Write every block of the strip; returns (image, pb) paths in block order."""
    rng = np.random.default_rng(seed)
    return [write_block(directory, *synth_block(spec, i, ra, dec, flux, rng=rng, noise=noise))
            for i in range(spec.n_blocks)]


def random_positions(spec: StripSpec, n: int, rng, *, max_offset_deg: float | None = None,
                     min_separation_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions uniform on the sky along the strip (within ``max_offset_deg`` of its centre line).

    Default offset limit: where the Gaussian pb falls to 0.3. RA spans from the
    first to the last block centre. Positions closer than ``min_separation_deg``
    to an earlier one are redrawn.
    """
    if max_offset_deg is None:
        max_offset_deg = spec.pb_fwhm_deg * FWHM_TO_SIGMA * math.sqrt(-2 * math.log(0.3))
    ra_lo = spec.ra0_deg
    ra_hi = spec.ra0_deg + (spec.n_blocks - 1) * spec.ra_step_deg()
    ras, decs = [], []
    s_lo, s_hi = math.sin(math.radians(spec.dec_deg - max_offset_deg)), math.sin(math.radians(spec.dec_deg + max_offset_deg))
    tries = 0
    while len(ras) < n:
        tries += 1
        if tries > 1000 * n:
            raise ValueError(f"cannot place {n} sources {min_separation_deg} deg apart in the strip")
        ra = rng.uniform(ra_lo, ra_hi)
        dec = math.degrees(math.asin(rng.uniform(s_lo, s_hi)))
        if min_separation_deg > 0 and ras and np.min(angular_separation_deg(np.array(ras), np.array(decs), ra, dec)) < min_separation_deg:
            continue
        ras.append(ra % 360.0)
        decs.append(dec)
    return np.array(ras), np.array(decs)
