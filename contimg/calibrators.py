"""The calibrator catalogue and which calibrators a block's drifting beam sees.

The catalogue ships as ``contimg/resources/calibrators.csv``: name, ICRS
position, Stokes I flux density at a reference frequency (1.4 GHz) and a
spectral index, for a few VLA L-band calibrators near the survey declinations
plus the synthetic ``SIMCAL*`` calibrators of simulated scenarios.

A block is a *calibrator block* when a catalogued source seen through the
fixed primary beam (Airy pattern of the 4.65 m dish pointed at hour angle 0
and the pointing declination) reaches ``min_apparent_jy`` at some
integration of the block, at the band centre.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Sequence

import numpy as np

from . import telescope as tel

CATALOGUE_FILE = "calibrators.csv"
BAND_CENTRE_HZ = 0.5 * (tel.BAND_TOP_HZ + tel.BAND_BOTTOM_HZ)


@dataclass(frozen=True)
class CatalogueCalibrator:
    """One catalogue entry.

    Attributes
    ----------
    name : str
    ra_deg, dec_deg : float
        ICRS, degrees.
    flux_jy : float
        Stokes I at ``reference_hz``, Jy.
    spectral_index : float
        ``alpha`` in ``S ~ nu ** alpha``.
    reference_hz : float
    kind : str
        ``real`` or ``synthetic`` (simulator only).
    notes : str
    """

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float
    reference_hz: float = 1.4e9
    kind: str = "real"
    notes: str = ""

    def flux_at(self, freq_hz: np.ndarray | float) -> np.ndarray:
        """Stokes I flux density (Jy) at ``freq_hz``."""
        return self.flux_jy * (np.asarray(freq_hz, dtype=float) / self.reference_hz) ** self.spectral_index

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CalibratorInBlock:
    """A catalogued calibrator seen by a block's beam.

    Attributes
    ----------
    calibrator : CatalogueCalibrator
    apparent_jy : float
        Largest flux density through the primary beam during the block, at the
        band centre, Jy.
    min_offset_deg : float
        Smallest angle between the calibrator and the pointing during the block.
    peak_jd : float
        UTC Julian date of the integration where ``apparent_jy`` is reached.
    """

    calibrator: CatalogueCalibrator
    apparent_jy: float
    min_offset_deg: float
    peak_jd: float

    def as_dict(self) -> dict:
        return {
            "name": self.calibrator.name,
            "apparent_jy": self.apparent_jy,
            "min_offset_deg": self.min_offset_deg,
            "peak_jd": self.peak_jd,
            "catalogue": self.calibrator.as_dict(),
        }


@lru_cache(maxsize=1)
def catalogue() -> tuple[CatalogueCalibrator, ...]:
    """Every entry of ``resources/calibrators.csv`` (lines starting with ``#`` are comments)."""
    text = resources.files("contimg.resources").joinpath(CATALOGUE_FILE).read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    out = []
    for row in csv.DictReader(lines):
        out.append(
            CatalogueCalibrator(
                name=row["name"].strip(),
                ra_deg=float(row["ra_deg"]),
                dec_deg=float(row["dec_deg"]),
                flux_jy=float(row["flux_jy"]),
                spectral_index=float(row["spectral_index"]),
                reference_hz=float(row["reference_hz"]),
                kind=row["kind"].strip(),
                notes=row["notes"].strip(),
            )
        )
    return tuple(out)


def lookup(name: str) -> CatalogueCalibrator | None:
    """The catalogue entry called ``name`` (case-insensitive), or None."""
    key = name.strip().upper()
    for cal in catalogue():
        if cal.name.upper() == key:
            return cal
    return None


def get(name: str) -> CatalogueCalibrator:
    """The catalogue entry called ``name``; KeyError lists the known names."""
    cal = lookup(name)
    if cal is None:
        known = ", ".join(c.name for c in catalogue())
        raise KeyError(f"calibrator {name!r} is not in {CATALOGUE_FILE} (known: {known}); add it there")
    return cal


def block_times_jd(mid_jd: float) -> np.ndarray:
    """Integration centres (UTC JD) of a block with mid-time ``mid_jd``."""
    offsets = (np.arange(tel.N_INTEGRATIONS) - (tel.N_INTEGRATIONS - 1) / 2) * tel.INTEGRATION_S
    return mid_jd + offsets / 86400.0


def beam_attenuation(
    ra_deg: float, dec_deg: float, times_jd: np.ndarray, pointing_dec_rad: float, freq_hz: np.ndarray | float
) -> np.ndarray:
    """Primary-beam power response towards a source along the drift.

    The dish is fixed at hour angle 0 and the pointing declination (observed
    frame); the source's apparent topocentric direction at each time gives
    its angle from the pointing (the same geometry as the simulator).

    Parameters
    ----------
    ra_deg, dec_deg : float
        ICRS position of the source.
    times_jd : array, shape (n_times,)
        UTC Julian dates.
    pointing_dec_rad : float
        Pointing declination, radians.
    freq_hz : float or array, shape (n_freqs,)

    Returns
    -------
    ndarray, shape (n_times, n_freqs) (n_freqs = 1 for a scalar frequency)
    """
    theta = offset_from_pointing(ra_deg, dec_deg, times_jd, pointing_dec_rad)
    freqs = np.atleast_1d(np.asarray(freq_hz, dtype=float))
    return tel.airy_power_beam(theta[:, None], freqs[None, :])


def offset_from_pointing(ra_deg: float, dec_deg: float, times_jd: np.ndarray, pointing_dec_rad: float) -> np.ndarray:
    """Angle (radians) between a source and the fixed pointing at each time."""
    from astropy.time import Time

    from . import sky

    times = Time(np.atleast_1d(np.asarray(times_jd, dtype=float)), format="jd", scale="utc")
    dirs = sky.itrs_directions([ra_deg], [dec_deg], times)[0]
    pointing = sky.phase_centre_itrs(math.degrees(pointing_dec_rad))
    return sky.angle_between(dirs, pointing)


def calibrators_in_block(
    mid_jd: float,
    dec_rad: float,
    min_apparent_jy: float,
    *,
    entries: Sequence[CatalogueCalibrator] | None = None,
    freq_hz: float = BAND_CENTRE_HZ,
    include_synthetic: bool = True,
) -> list[CalibratorInBlock]:
    """Catalogued calibrators that the drifting beam of a block sees brightly enough.

    Parameters
    ----------
    mid_jd : float
        UTC Julian date of the block's middle.
    dec_rad : float
        Pointing declination, radians.
    min_apparent_jy : float
        Smallest apparent (beam-attenuated) flux density that counts, Jy.
    entries : sequence of CatalogueCalibrator, optional
        Default: the shipped catalogue.
    freq_hz : float
        Frequency of the test (default the band centre).
    include_synthetic : bool
        False leaves out the simulator's synthetic entries (``kind ==
        "synthetic"``, the ``SIMCAL*``): ``calibration.include_synthetic_calibrators``.

    Returns
    -------
    list of CalibratorInBlock
        Brightest first; empty when the block is not a calibrator block.
    """
    entries = catalogue() if entries is None else tuple(entries)
    if not include_synthetic:
        entries = tuple(c for c in entries if c.kind != "synthetic")
    times = block_times_jd(mid_jd)
    # Cheap pre-selection: only sources within a few beam widths of the pointing
    # declination can be seen (the drift moves the beam in RA only).
    reach = math.degrees(4 * tel.primary_beam_fwhm_rad(tel.BAND_BOTTOM_HZ))
    dec0 = math.degrees(dec_rad)
    out = []
    for cal in entries:
        if abs(cal.dec_deg - dec0) > reach:
            continue
        theta = offset_from_pointing(cal.ra_deg, cal.dec_deg, times, dec_rad)
        apparent = float(cal.flux_at(freq_hz)) * tel.airy_power_beam(theta, freq_hz)
        # Beyond the first null the Airy sidelobes are < 2 %: never a calibrator block.
        i = int(np.argmax(apparent))
        if apparent[i] >= min_apparent_jy and theta[i] < tel.primary_beam_fwhm_rad(freq_hz):
            out.append(CalibratorInBlock(cal, float(apparent[i]), math.degrees(float(theta.min())), float(times[i])))
    return sorted(out, key=lambda c: -c.apparent_jy)


def calibrator_for_block(mid_jd: float, dec_rad: float, min_apparent_jy: float,
                         max_offset_deg: float, *, include_synthetic: bool = True) -> CalibratorInBlock | None:
    """The calibrator that makes a block a calibrator block, or None.

    It must be bright enough through the beam (``min_apparent_jy``) and pass
    within ``max_offset_deg`` of the pointing during the block: solving on a
    calibrator out in the beam's edge would lean on the beam model where it is
    least certain. The brightest such calibrator wins. ``include_synthetic``:
    see :func:`calibrators_in_block`.
    """
    for c in calibrators_in_block(mid_jd, dec_rad, min_apparent_jy, include_synthetic=include_synthetic):
        if c.min_offset_deg <= max_offset_deg:
            return c
    return None
