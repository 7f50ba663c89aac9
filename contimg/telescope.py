"""The DSA-110: site, stations, band, timing and primary beam (FIELD-NOTES §1).

Everything here is a fact about the instrument, not a processing choice, so it
lives outside the configuration.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

log = logging.getLogger(__name__)

TELESCOPE_NAME = "DSA-110"
SITE_LAT_DEG = 37.2334
SITE_LON_DEG = -118.2856
SITE_HEIGHT_M = 1182.6

DISH_DIAMETER_M = 4.65
N_SUBBANDS = 16
N_CHANNELS = 48
CHANNEL_WIDTH_HZ = 244_140.625
SUBBAND_WIDTH_HZ = N_CHANNELS * CHANNEL_WIDTH_HZ  # 11.71875 MHz
BAND_TOP_HZ = 1498.75e6
BAND_BOTTOM_HZ = BAND_TOP_HZ - N_SUBBANDS * SUBBAND_WIDTH_HZ  # 1311.25 MHz
N_INTEGRATIONS = 24
INTEGRATION_S = 12.884902
BLOCK_DURATION_S = N_INTEGRATIONS * INTEGRATION_S  # ~309.2 s
POLARIZATIONS = ("XX", "XY", "YX", "YY")
POLARIZATION_NUMBERS = (-5, -7, -8, -6)  # AIPS codes for XX, XY, YX, YY
SEFD_JY = 5800.0
C_M_S = 299_792_458.0


@dataclass(frozen=True)
class Station:
    """One DSA-110 station (WGS84 geodetic)."""

    name: str
    number: int
    lat_deg: float
    lon_deg: float
    height_m: float
    height_filled: bool = False  # True when the station list had no elevation


@lru_cache(maxsize=1)
def stations() -> tuple[Station, ...]:
    """The 117 DSA-110 stations from ``resources/dsa110_stations.csv``.

    A station without an elevation (one in the list) gets the median elevation
    of the others; it is logged, not fatal.
    """
    text = resources.files("contimg.resources").joinpath("dsa110_stations.csv").read_text()
    rows = [r for r in csv.reader(line for line in text.splitlines() if not line.startswith("#"))]
    header, body = rows[0], [r for r in rows[1:] if r]
    idx = {name: i for i, name in enumerate(header)}
    heights = [float(r[idx["elevation_m"]]) for r in body if r[idx["elevation_m"]].strip()]
    fill = float(np.median(heights))
    out = []
    for r in body:
        h = r[idx["elevation_m"]].strip()
        name = r[idx["station"]].strip()
        if not h:
            log.debug("station %s has no elevation; using the median %.1f m", name, fill)
        out.append(
            Station(
                name=name,
                number=int(name.split("-")[-1]),
                lat_deg=float(r[idx["latitude_deg"]]),
                lon_deg=float(r[idx["longitude_deg"]]),
                height_m=float(h) if h else fill,
                height_filled=not h,
            )
        )
    return tuple(out)


def station_ecef(selected: tuple[Station, ...] | None = None) -> np.ndarray:
    """Earth-centred (ITRS) positions in metres, shape (n_stations, 3)."""
    from astropy import units as u
    from astropy.coordinates import EarthLocation

    st = selected if selected is not None else stations()
    loc = EarthLocation.from_geodetic(
        lon=[s.lon_deg for s in st] * u.deg,
        lat=[s.lat_deg for s in st] * u.deg,
        height=[s.height_m for s in st] * u.m,
    )
    return np.stack([loc.x.to_value(u.m), loc.y.to_value(u.m), loc.z.to_value(u.m)], axis=1)


def site_location():
    """The array reference position (astropy EarthLocation)."""
    from astropy import units as u
    from astropy.coordinates import EarthLocation

    return EarthLocation.from_geodetic(SITE_LON_DEG * u.deg, SITE_LAT_DEG * u.deg, SITE_HEIGHT_M * u.m)


def subband_frequencies(subband: int, n_channels: int = N_CHANNELS) -> np.ndarray:
    """Channel centre frequencies (Hz, ascending) of one subband.

    ``sb00`` is the highest subband. A preset with fewer channels keeps the
    subband's 11.72 MHz and widens the channels.
    """
    if not 0 <= subband < N_SUBBANDS:
        raise ValueError(f"subband {subband} is outside 0..{N_SUBBANDS - 1}")
    top = BAND_TOP_HZ - subband * SUBBAND_WIDTH_HZ
    width = SUBBAND_WIDTH_HZ / n_channels
    return top - SUBBAND_WIDTH_HZ + (np.arange(n_channels) + 0.5) * width


def channel_width(n_channels: int = N_CHANNELS) -> float:
    """Channel width in Hz for a subband split into ``n_channels``."""
    return SUBBAND_WIDTH_HZ / n_channels


def airy_power_beam(theta_rad: np.ndarray, freq_hz: np.ndarray | float) -> np.ndarray:
    """Power response of a uniformly illuminated 4.65 m dish (Airy pattern).

    Parameters
    ----------
    theta_rad : array
        Angle from the pointing direction, radians.
    freq_hz : array or float
        Frequency, Hz; broadcast against ``theta_rad``.
    """
    from scipy.special import j1

    x = np.pi * DISH_DIAMETER_M * np.sin(theta_rad) * np.asarray(freq_hz) / C_M_S
    x = np.asarray(x, dtype=np.float64)
    out = np.ones_like(x)
    nz = np.abs(x) > 1e-9
    out[nz] = (2.0 * j1(x[nz]) / x[nz]) ** 2
    return out


def primary_beam_fwhm_rad(freq_hz: float) -> float:
    """FWHM of the Airy power beam (about 1.02 lambda/D)."""
    return 1.029 * C_M_S / freq_hz / DISH_DIAMETER_M
