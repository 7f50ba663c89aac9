"""The simulated sky: point sources, where they are, and what the beam lets through.

A source is unpolarised (Stokes I) with a power-law spectrum ``S(nu) = S_1.4GHz
(nu / 1.4 GHz) ** alpha``, optionally scaled block by block (``flux_per_block``,
e.g. an extreme-scattering-event dip).

Directions are unit vectors in the ITRS (Earth-fixed, metres-free): the
apparent topocentric direction of a source at time ``t`` is astropy's ICRS ->
ITRS transform *with the site as observer*, so it carries annual and diurnal
aberration and polar motion. That is the same place pyuvdata computes with ERFA
(``atco13``) when it phases data, to a few milliarcseconds; the geocentric ITRS
frame would differ by the ~0.2 arcsec diurnal aberration, several degrees of
phase on an outrigger baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from contimg import telescope as tel

REFERENCE_FREQ_HZ = 1.4e9
DEFAULT_SPECTRAL_INDEX = -0.7

# Random sky: dN/dS ~ S**-2 between these limits gives a handful of Jy-level
# sources among a few hundred, the rest tens to hundreds of mJy.
RANDOM_FLUX_MIN_JY = 0.02
RANDOM_FLUX_MAX_JY = 5.0
RANDOM_ALPHA_MEAN = -0.7
RANDOM_ALPHA_STD = 0.2
# Half-width of the random-source strip, in primary-beam FWHMs at the band bottom.
STRIP_HALF_WIDTH_FWHM = 2.0


@dataclass(frozen=True)
class Source:
    """An unpolarised point source.

    Attributes
    ----------
    name : str
        Unique name within a scenario.
    ra_deg, dec_deg : float
        ICRS position, degrees.
    flux_jy : float
        Stokes I flux density at 1.4 GHz, Jy.
    spectral_index : float
        ``alpha`` in ``S ~ nu ** alpha``.
    flux_per_block : tuple of float or None
        Multiplies ``flux_jy`` block by block (length = number of blocks);
        ``None`` for a steady source.
    """

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float = DEFAULT_SPECTRAL_INDEX
    flux_per_block: tuple[float, ...] | None = None

    def block_scale(self, block: int) -> float:
        """Flux scale of this source in ``block`` (1 for a steady source)."""
        return 1.0 if self.flux_per_block is None else float(self.flux_per_block[block])

    def to_dict(self, n_blocks: int) -> dict:
        """JSON-ready description, with the 1.4 GHz flux of every block."""
        out = asdict(self)
        out["flux_per_block"] = None if self.flux_per_block is None else list(self.flux_per_block)
        out["flux_jy_per_block"] = [self.flux_jy * self.block_scale(b) for b in range(n_blocks)]
        return out


def spectral_fluxes(sources: Sequence[Source], freq_hz: np.ndarray, block: int) -> np.ndarray:
    """Flux densities (Jy) of ``sources`` at ``freq_hz`` in ``block``.

    Returns
    -------
    ndarray, shape (n_sources, n_freqs)
    """
    s = np.array([src.flux_jy * src.block_scale(block) for src in sources])
    alpha = np.array([src.spectral_index for src in sources])
    ratio = np.asarray(freq_hz, dtype=float)[None, :] / REFERENCE_FREQ_HZ
    return s[:, None] * ratio ** alpha[:, None]


def phase_centre_itrs(dec_deg: float) -> np.ndarray:
    """ITRS unit vector of hour angle 0 at declination ``dec_deg`` over the site.

    The DSA-110 fringe-stops (and points) here: fixed on the Earth, so the sky
    drifts through it.
    """
    lon, dec = np.radians(tel.SITE_LON_DEG), np.radians(dec_deg)
    return np.array([np.cos(dec) * np.cos(lon), np.cos(dec) * np.sin(lon), np.sin(dec)])


def meridian_altaz_deg(dec_deg: float) -> tuple[float, float]:
    """(azimuth, altitude) in degrees of hour angle 0, declination ``dec_deg``.

    North (az 0) when the declination is north of the geodetic latitude, south
    (az 180) otherwise; altitude ``90 - |lat - dec|``.
    """
    az = 0.0 if dec_deg > tel.SITE_LAT_DEG else 180.0
    return az, 90.0 - abs(tel.SITE_LAT_DEG - dec_deg)


def itrs_directions(ra_deg: np.ndarray, dec_deg: np.ndarray, times) -> np.ndarray:
    """Apparent topocentric ITRS unit vectors of sources at ``times``.

    Parameters
    ----------
    ra_deg, dec_deg : array, shape (n_sources,)
        ICRS positions, degrees.
    times : astropy.time.Time, shape (n_times,)

    Returns
    -------
    ndarray, shape (n_sources, n_times, 3)
    """
    from astropy import units as u
    from astropy.coordinates import ITRS, SkyCoord

    ra = np.atleast_1d(np.asarray(ra_deg, dtype=float))
    if ra.size == 0:
        return np.zeros((0, len(times), 3))
    dec = np.atleast_1d(np.asarray(dec_deg, dtype=float))
    coord = SkyCoord(ra=ra[:, None] * u.deg, dec=dec[:, None] * u.deg, frame="icrs")
    frame = ITRS(obstime=times.reshape(1, -1), location=tel.site_location())
    xyz = coord.transform_to(frame).cartesian.xyz.value  # (3, n_sources, n_times)
    xyz = np.moveaxis(xyz, 0, -1)
    return xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)


def angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (radians) between unit vectors along the last axis; broadcasts."""
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.arctan2(cross, np.sum(a * b, axis=-1))


def hour_angle_rad(direction: np.ndarray) -> np.ndarray:
    """Local hour angle (radians, -pi..pi) of ITRS unit vectors at the site."""
    lon_dir = np.arctan2(direction[..., 1], direction[..., 0])
    return np.angle(np.exp(1j * (np.radians(tel.SITE_LON_DEG) - lon_dir)))


def transit_ra_deg(dec_deg: float, time) -> float:
    """ICRS right ascension of a source at ``dec_deg`` that transits at ``time``.

    Starts from the local apparent sidereal time and removes the residual hour
    angle (precession, nutation, aberration) by a few fixed-point steps.
    """
    ra = time.sidereal_time("apparent", longitude=tel.SITE_LON_DEG).deg
    for _ in range(4):
        ha = hour_angle_rad(itrs_directions([ra], [dec_deg], time.reshape(1))[0, 0])
        ra = (ra + np.degrees(ha)) % 360.0
    return float(ra)


def random_sky(
    n_sources: int,
    rng: np.random.Generator,
    *,
    ra_range_deg: tuple[float, float],
    dec_range_deg: tuple[float, float],
    prefix: str = "SIM",
) -> list[Source]:
    """Random point sources, uniform on the sphere inside an RA/Dec box.

    Fluxes follow ``dN/dS ~ S**-2`` between RANDOM_FLUX_MIN_JY and
    RANDOM_FLUX_MAX_JY; spectral indices are normal(-0.7, 0.2).
    ``ra_range_deg`` may wrap through 0 (``hi`` is allowed to exceed 360).
    """
    ra_lo, ra_hi = ra_range_deg
    sin_lo, sin_hi = np.sin(np.radians(dec_range_deg))
    ra = (ra_lo + rng.uniform(0.0, 1.0, n_sources) * (ra_hi - ra_lo)) % 360.0
    dec = np.degrees(np.arcsin(rng.uniform(sin_lo, sin_hi, n_sources)))
    # Inverse CDF of dN/dS ~ S^-2: 1/S uniform between 1/max and 1/min.
    inv = rng.uniform(1.0 / RANDOM_FLUX_MAX_JY, 1.0 / RANDOM_FLUX_MIN_JY, n_sources)
    flux = 1.0 / inv
    alpha = rng.normal(RANDOM_ALPHA_MEAN, RANDOM_ALPHA_STD, n_sources)
    return [
        Source(f"{prefix}{i:04d}", round(float(r), 6), round(float(d), 6), round(float(s), 6), round(float(a), 4))
        for i, (r, d, s, a) in enumerate(zip(ra, dec, flux, alpha))
    ]


def strip_box(dec_deg: float, lst_start_deg: float, lst_end_deg: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """RA/Dec box around the strip the beam sweeps between two sidereal times.

    Padded by STRIP_HALF_WIDTH_FWHM primary-beam FWHMs (at the bottom of the
    band, where the beam is widest) on every side.

    Returns
    -------
    (ra_lo, ra_hi), (dec_lo, dec_hi) : degrees; ``ra_hi`` may exceed 360.
    """
    pad = STRIP_HALF_WIDTH_FWHM * np.degrees(tel.primary_beam_fwhm_rad(tel.BAND_BOTTOM_HZ))
    dec_lo, dec_hi = max(dec_deg - pad, -90.0), min(dec_deg + pad, 90.0)
    widest = max(abs(dec_lo), abs(dec_hi))
    ra_pad = 180.0 if widest >= 89.0 else min(180.0, pad / np.cos(np.radians(widest)))
    span = (lst_end_deg - lst_start_deg) % 360.0
    if span + 2 * ra_pad >= 360.0:
        return (0.0, 360.0), (dec_lo, dec_hi)
    return (lst_start_deg - ra_pad, lst_start_deg + span + ra_pad), (dec_lo, dec_hi)
