"""Convert one subband file (UVH5) to a Measurement Set with a fixed phase centre.

The phase-centre rule (see :mod:`contimg.phasing` for the frames):

1. ``phase_center`` given (ICRS, radians): phase to it.
2. A DSA-110 drift-scan file (a "driftscan" centre and
   ``extra_keywords['phase_center_dec']``): phase to
   :func:`phasing.block_phase_center` at ``block_mid_jd`` (else the file's
   mid-time) and the pointing declination. All subbands of a block must get
   the same ``block_mid_jd`` so that they share one field.
3. Another drift-scan file (one driftscan or unprojected centre, e.g. HERA):
   phase to the ICRS position of that centre at the same mid-time.
4. Otherwise (already phased to a sidereal source, like the ATA test file):
   keep the centre.

In every case the UVWs are recomputed from antenna positions, site and times
(:func:`phasing.recompute_geometry`, then pyuvdata's ``phase()`` with
``use_ant_pos=True``); the stored float32 UVWs are never used, not even as the
"old" w of a rephasing. The result records :func:`phasing.uvw_check` of the
MS as written (its metadata read back), which must be about 0.0 m.

Before writing, a DSA-110 file gets TELESCOPE_NAME "DSA-110" (tclean finds
the primary beam by it) and 4.65 m dishes, channels are put in ascending
order and baselines conjugated to ant1 < ant2. The MS is written with
pyuvdata (python-casacore) to a temporary sibling and renamed into place, so
the final path never holds a partial MS and a re-run replaces an old MS only
once the new one is complete.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import phasing, telescope
from .errors import BadSubbandFile, TransientError
from .products import is_disk_error, remove_path, replace_directory, temporary_name

log = logging.getLogger(__name__)

PHASE_CENTER_DEC_KEY = "phase_center_dec"
"""Header keyword of a DSA-110 file holding the pointing declination (radians)."""

DSA110_NAMES = {"DSA-110", "DSA110", "DSA_110", "OVRO_DSA", "OVRO-DSA"}
"""Telescope names that mean the DSA-110; written as :data:`telescope.TELESCOPE_NAME`."""

DRIFT_TYPES = ("driftscan", "unprojected")

# Errors while writing that are about the disk, not the data: retry later.

# Bytes per visibility in the MS (complex64 DATA, float32 WEIGHT_SPECTRUM, bool
# FLAG), plus a margin for the row columns and subtables.
_MS_BYTES_PER_VIS = 8 + 4 + 1
_MS_SPACE_MARGIN = 1.2


@dataclass
class ConvertResult:
    """What :func:`convert_subband` did; ``as_dict()`` is JSON-friendly."""

    ms_path: str
    source_path: str
    telescope: str
    n_antennas: int
    """Antennas with data."""
    n_baselines: int
    """Baselines with data, autocorrelations included."""
    n_times: int
    n_channels: int
    freq_min_hz: float
    freq_max_hz: float
    phase_center_ra_deg: float
    """Phase centre (ICRS except for a kept centre, which stays in its own frame)."""
    phase_center_dec_deg: float
    phase_center_name: str
    """Field name in the MS: ``JHHMMSS.s+DDMMSS``, or the file's name when kept."""
    phase_center_rule: str
    """``given``, ``block meridian``, ``drift-scan centre`` or ``kept``."""
    uvw_check_max_m: float
    uvw_check_rms_m: float
    seconds: dict[str, float]
    """Wall time of each step (read, phase, write) and the total."""
    pointing_dec_deg: float | None = None
    """The file's pointing declination (``phase_center_dec`` header), DSA-110 files only."""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def convert_subband(
    uvh5_path: str | os.PathLike,
    ms_path: str | os.PathLike,
    *,
    phase_center: tuple[float, float] | None = None,
    block_mid_jd: float | None = None,
) -> ConvertResult:
    """Convert one subband UVH5 file to a Measurement Set.

    Parameters
    ----------
    uvh5_path : path
        The raw subband file.
    ms_path : path
        The MS to write; replaced atomically if it exists.
    phase_center : (float, float), optional
        ICRS (RA, Dec) in radians to phase to; overrides the rule below.
    block_mid_jd : float, optional
        UTC Julian date of the block's middle; the phase centre of a drift-scan
        file is the meridian point at this time (default: the file's own
        mid-time, which differs between the subbands of a block).

    Returns
    -------
    ConvertResult

    Raises
    ------
    BadSubbandFile
        The file is missing, truncated, not UVH5 or inconsistent.
    TransientError
        Writing failed for lack of space or permission; retrying may help.
    """
    t0 = time.perf_counter()
    src, dst = Path(uvh5_path), Path(ms_path)
    uvd = read_subband(src)
    t_read = time.perf_counter()

    rule, center = choose_phase_center(uvd, src, phase_center=phase_center, block_mid_jd=block_mid_jd)
    apply_phase_center(uvd, center)
    prepare_for_ms(uvd)
    t_phase = time.perf_counter()

    check = write_ms_atomically(uvd, dst)
    t_write = time.perf_counter()

    return conversion_result(uvd, src, dst, rule, check, (t0, t_read, t_phase, t_write))


def conversion_result(uvd, src: Path, dst: Path, rule: str, check: dict[str, float],
                      times: tuple[float, float, float, float]) -> ConvertResult:
    """The :class:`ConvertResult` of a conversion, from the metadata as written (both converters).

    ``times`` are the ``perf_counter`` readings at the start and after reading,
    phasing and writing.
    """
    t0, t_read, t_phase, t_write = times
    ra, dec = _single_phase_center(uvd)
    freqs = np.asarray(uvd.freq_array).ravel()
    keywords = uvd.extra_keywords or {}
    pointing = (math.degrees(_pointing_declination(keywords[PHASE_CENTER_DEC_KEY], src))
                if PHASE_CENTER_DEC_KEY in keywords else None)
    return ConvertResult(
        ms_path=str(dst),
        source_path=str(src),
        telescope=str(uvd.telescope.name),
        n_antennas=int(uvd.Nants_data),
        n_baselines=int(uvd.Nbls),
        n_times=int(uvd.Ntimes),
        n_channels=int(uvd.Nfreqs),
        freq_min_hz=float(freqs.min()),
        freq_max_hz=float(freqs.max()),
        phase_center_ra_deg=math.degrees(ra),
        phase_center_dec_deg=math.degrees(dec),
        phase_center_name=_center_name(uvd),
        phase_center_rule=rule,
        uvw_check_max_m=check["max_m"],
        uvw_check_rms_m=check["rms_m"],
        seconds={
            "read": round(t_read - t0, 3),
            "phase": round(t_phase - t_read, 3),
            "write": round(t_write - t_phase, 3),
            "total": round(t_write - t0, 3),
        },
        pointing_dec_deg=pointing,
    )


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def read_subband(path: Path):
    """Read a UVH5 file; any failure to read it is a :class:`BadSubbandFile`.

    Parameters
    ----------
    path : Path
        The subband file.

    Returns
    -------
    pyuvdata.UVData
    """
    from pyuvdata import UVData

    if not path.is_file():
        raise BadSubbandFile(f"{path} does not exist; check the path, or leave this subband out of the block")
    try:
        # Checked below, once the float32 UVWs of DSA-110 files (which
        # pyuvdata's check rejects) are widened; they are recomputed anyway.
        uvd = UVData.from_file(str(path), file_type="uvh5", run_check=False)
    except PermissionError as e:
        raise BadSubbandFile(f"{path} cannot be read ({e.strerror}); fix its permissions and resubmit the block") from e
    except (OSError, KeyError, AttributeError, ValueError, TypeError, IndexError, RuntimeError) as e:
        # h5py raises OSError for truncated or non-HDF5 files; pyuvdata
        # KeyError or AttributeError for missing datasets and header items.
        raise BadSubbandFile(
            f"{path} is truncated or not a valid UVH5 file ({_first_line(e)}); "
            "re-transfer it or leave it out of the block"
        ) from e
    uvd.uvw_array = np.asarray(uvd.uvw_array, dtype=np.float64)
    try:
        uvd.check()
    except ValueError as e:
        raise BadSubbandFile(
            f"{path} is not a consistent UVH5 data set ({_first_line(e)}); "
            "fix the writer or leave it out of the block"
        ) from e
    return uvd


def is_dsa110(uvd) -> bool:
    """True for a DSA-110 file: a DSA-110 telescope name or the pointing-declination keyword."""
    name = str(uvd.telescope.name or "").strip().upper()
    return name in DSA110_NAMES or PHASE_CENTER_DEC_KEY in (uvd.extra_keywords or {})


# ---------------------------------------------------------------------------
# phase centre
# ---------------------------------------------------------------------------


def choose_phase_center(
    uvd, path: Path, *, phase_center: tuple[float, float] | None, block_mid_jd: float | None
) -> tuple[str, tuple[float, float] | None]:
    """Apply the phase-centre rule of this module.

    Returns
    -------
    rule : str
        ``given``, ``block meridian``, ``drift-scan centre`` or ``kept``.
    center : (float, float) or None
        ICRS (RA, Dec) in radians to phase to; None to keep the file's centre.
    """
    if phase_center is not None:
        ra, dec = (float(v) for v in phase_center)
        if not (math.isfinite(ra) and math.isfinite(dec) and abs(dec) <= math.pi / 2):
            raise ValueError(f"phase_center {phase_center!r} is not an (RA, Dec) in radians")
        return "given", (ra % (2 * math.pi), dec)

    catalog = uvd.phase_center_catalog
    drift = [c for c in catalog.values() if c["cat_type"] in DRIFT_TYPES]
    if not drift:
        return "kept", None
    mid_jd = block_mid_jd if block_mid_jd is not None else _mid_jd(uvd)

    keywords = uvd.extra_keywords or {}
    if PHASE_CENTER_DEC_KEY in keywords:
        dec = _pointing_declination(keywords[PHASE_CENTER_DEC_KEY], path)
        _warn_if_centre_disagrees(uvd, drift[0], dec, path)
        return "block meridian", phasing.block_phase_center(mid_jd, dec)

    if len(catalog) > 1:
        raise BadSubbandFile(
            f"{path} mixes {len(catalog)} phase centres, some drift scans; "
            "convert it with an explicit phase_center"
        )
    ha, dec = _drift_hadec(drift[0], uvd.telescope.location.lat.rad)
    return "drift-scan centre", phasing.hadec_to_icrs(mid_jd, ha, dec, location=uvd.telescope.location)


def apply_phase_center(uvd, center: tuple[float, float] | None) -> None:
    """Recompute the geometry from antenna positions, then phase to ``center``.

    Parameters
    ----------
    uvd : pyuvdata.UVData
        Modified in place.
    center : (float, float) or None
        ICRS (RA, Dec) radians; None keeps the catalogue centres.
    """
    # First the UVWs of the centre the data are fringe-stopped at, from
    # positions: the rephasing below takes its "old" w from them.
    phasing.recompute_geometry(uvd)
    if center is None:
        return
    ra, dec = center
    uvd.phase(
        lon=ra,
        lat=dec,
        epoch="J2000",
        phase_frame="icrs",
        cat_type="sidereal",
        cat_name=phasing.phase_center_name(ra, dec),
        use_ant_pos=True,
        cleanup_old_sources=True,
    )


def _mid_jd(uvd) -> float:
    t = np.asarray(uvd.time_array)
    return float((t.min() + t.max()) / 2)


def _pointing_declination(value, path: Path) -> float:
    try:
        dec = float(value)
    except (TypeError, ValueError):
        dec = float("nan")
    if not (math.isfinite(dec) and abs(dec) <= math.pi / 2):
        raise BadSubbandFile(
            f"{path}: extra_keywords/{PHASE_CENTER_DEC_KEY} = {value!r} is not a declination in radians; "
            "fix the header or leave the file out of the block"
        )
    return dec


def _drift_hadec(entry: dict, lat_rad: float) -> tuple[float, float]:
    """Observed hour angle and declination of a driftscan (az, alt) or unprojected centre."""
    import erfa

    if entry["cat_type"] == "unprojected":
        return 0.0, lat_rad
    ha, dec = erfa.ae2hd(float(entry["cat_lon"]), float(entry["cat_lat"]), lat_rad)
    return float(ha), float(dec)


def _warn_if_centre_disagrees(uvd, entry: dict, dec: float, path: Path) -> None:
    """Log when the declared driftscan centre is not the meridian at the keyword's declination."""
    ha_c, dec_c = _drift_hadec(entry, uvd.telescope.location.lat.rad)
    off = math.degrees(math.hypot(math.remainder(ha_c, 2 * math.pi) * math.cos(dec), dec_c - dec))
    if off > 1 / 60:
        log.warning(
            "%s: the driftscan centre (HA %.4f deg, Dec %.4f deg) is %.3f deg from the meridian at "
            "%s = %.4f deg; the keyword wins",
            path, math.degrees(ha_c), math.degrees(dec_c), off, PHASE_CENTER_DEC_KEY, math.degrees(dec),
        )


def _single_phase_center(uvd) -> tuple[float, float]:
    entry = uvd.phase_center_catalog[int(uvd.phase_center_id_array[0])]
    return float(entry["cat_lon"]), float(entry["cat_lat"])


def _center_name(uvd) -> str:
    return str(uvd.phase_center_catalog[int(uvd.phase_center_id_array[0])]["cat_name"])


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def prepare_for_ms(uvd) -> None:
    """Metadata fixes before writing: DSA-110 name and dishes, ascending channels, sample counts."""
    _repair_nsamples(uvd)
    if is_dsa110(uvd):
        # CASA looks the primary beam up by TELESCOPE_NAME (see imaging.py).
        uvd.telescope.name = telescope.TELESCOPE_NAME
        if uvd.telescope.antenna_diameters is None:
            uvd.telescope.antenna_diameters = np.full(uvd.telescope.Nants, telescope.DISH_DIAMETER_M)
    freqs = np.asarray(uvd.freq_array).ravel()
    if np.any(np.diff(freqs) < 0):
        # DSA-110 subbands run downwards in frequency; ascending channels make
        # concatenated spectral windows sort cleanly.
        uvd.reorder_freqs(channel_order="freq")
    # A descending file may carry negative widths; in an MS the sign of
    # CHAN_WIDTH states the channel order, which is now ascending.
    uvd.channel_width = np.abs(uvd.channel_width)
    # CASA expects ant1 < ant2 (pyuvdata would otherwise do this on writing).
    uvd.conjugate_bls("ant1<ant2")


def _repair_nsamples(uvd) -> None:
    """Make the sample counts (the MS weights) usable.

    A count below zero or not finite is invalid (UVH5 requires counts >= 0);
    CASA drops data of negative weight, so such a file would not calibrate.
    When every count of the file is the same invalid value the file simply
    carries no counts (the ATA test file has -1.23e12 throughout): every
    visibility gets the count 1. Otherwise the invalid ones are flagged, with
    count 0. A metadata-only object (the fast converter's) is left alone.
    """
    ns = uvd.nsample_array
    if ns is None:
        return
    bad = ~np.isfinite(ns) | (ns < 0)
    if not bad.any():
        return
    if bad.all() and np.unique(ns).size == 1:
        log.warning("%s: every sample count is %r (invalid); all visibilities get weight 1",
                    uvd.telescope.name, float(ns.flat[0]))
        uvd.nsample_array = np.ones_like(ns)
        return
    log.warning("%s: %d invalid sample counts (negative or not finite); those visibilities are flagged",
                uvd.telescope.name, int(bad.sum()))
    uvd.flag_array = uvd.flag_array | bad
    uvd.nsample_array = np.where(bad, 0, ns).astype(ns.dtype)


def write_ms_atomically(uvd, ms_path: Path) -> dict[str, float]:
    """Write ``uvd`` as an MS at a temporary sibling, check it, then rename it in place.

    Returns
    -------
    dict
        :func:`phasing.uvw_check` of the MS as written (read back).

    Raises
    ------
    TransientError
        Lack of space or permission while writing; nothing is left behind.
    """

    def write(tmp: Path) -> dict[str, float]:
        with warnings.catch_warnings():
            # Expected for raw data: units "uncalib"; and pyuvdata's SIGMA of
            # zero-weight (flagged) rows, which CASA ignores.
            warnings.filterwarnings("ignore", message="Writing in the MS file that the units")
            warnings.filterwarnings("ignore", message="invalid value encountered in power")
            uvd.write_ms(str(tmp), clobber=True)
        return check_written_ms(tmp, expected_rows=int(uvd.Nblts), final=ms_path)

    return atomic_ms(uvd, ms_path, write)


def atomic_ms(uvd, ms_path: Path, write_and_check: Callable[[Path], dict[str, float]]) -> dict[str, float]:
    """Run ``write_and_check(tmp)`` on a temporary sibling of ``ms_path``, then rename it in place.

    The one write protocol of both converters: the space for ``uvd`` is checked
    first; a disk error (space, permissions) becomes a :class:`TransientError`
    naming the MS and what to do; on any failure the temporary MS is removed,
    so nothing half-written is ever left. Returns what ``write_and_check`` returns.
    """
    tmp = temporary_name(ms_path)
    try:
        ms_path.parent.mkdir(parents=True, exist_ok=True)
        remove_path(tmp)
        _check_free_space(uvd, ms_path)
        check = write_and_check(tmp)
        replace_directory(tmp, ms_path)
        return check
    except (OSError, RuntimeError) as e:
        remove_path(tmp)
        if is_disk_error(e):
            raise TransientError(
                f"writing {ms_path} failed ({_first_line(e)}); free space or fix permissions "
                f"in {ms_path.parent}, the conversion is retried"
            ) from e
        raise
    except BaseException:
        remove_path(tmp)
        raise


def _check_free_space(uvd, ms_path: Path) -> None:
    need = int(uvd.Nblts) * int(uvd.Nfreqs) * int(uvd.Npols) * _MS_BYTES_PER_VIS * _MS_SPACE_MARGIN
    free = shutil.disk_usage(ms_path.parent).free
    if free < need:
        raise TransientError(
            f"only {free / 1e6:.0f} MB free in {ms_path.parent}, writing {ms_path.name} needs about "
            f"{need / 1e6:.0f} MB; free space on the scratch disk, the conversion is retried"
        )


def check_written_ms(ms: Path, *, expected_rows: int, final: Path) -> dict[str, float]:
    """Read a written MS's metadata back: row count and the UVW check.

    Checking the MS rather than the object in memory also covers the
    conjugation and sign flips pyuvdata applies on writing.
    """
    from pyuvdata import UVData

    back = UVData.from_file(str(ms), file_type="ms", read_data=False)
    if back.Nblts != expected_rows:
        raise RuntimeError(f"the MS written for {final} has {back.Nblts} baseline-times instead of {expected_rows}")
    return phasing.uvw_check(back)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
