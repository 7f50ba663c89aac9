"""Bandpass and gain calibration of subband Measurement Sets.

- **Model** (:func:`write_calibrator_model`): MODEL_DATA is written directly,
  per row and channel, as ``S(nu) B(theta(t), nu) exp(+2 pi i (u l + v m +
  w (n - 1)) nu / c)`` with the MS's UVWs, the calibrator's (l, m) relative to
  the phase centre and ``B`` the Airy power beam at the calibrator's angle
  from the fixed pointing at each integration. ``ft()`` with a component list
  cannot follow the beam attenuation along the drift (up to ~10 % over a
  block at the band edges), so it is not used.
- **Solve** (:func:`solve_subband`): ``casatasks.bandpass`` (per channel,
  ``solint = bandpass_solint``), then ``casatasks.gaincal`` (amplitude and
  phase, ``solint``) with the bandpass applied. The product B x G is the
  complex gain. Caltables are written under temporary names and renamed into
  place (``products.caltable`` names them).
- **Selection** (:func:`select_caltables`, pure): the nearest caltable set
  before and after the target within the validity window; two sets get
  linear interpolation weights.
- **Apply** (:func:`apply_subband`): ``casatasks.applycal`` into
  CORRECTED_DATA. Two sets are merged into one table per kind (rows of both)
  so that CASA's linear time interpolation uses both solutions.

CASA is not thread-safe: call from one thread per process.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import casa_env, products, telescope as tel
from .calibrators import CatalogueCalibrator
from .config import CalibrationConfig
from .errors import PermanentError, TransientError
from .products import is_disk_error, remove_path, replace_directory, temporary_name

log = logging.getLogger(__name__)

MODEL_CHUNK_ROWS = 20_000
"""Rows of MODEL_DATA computed and written at once (bounds the memory)."""

MODEL_BEAMS = ("drift", "none")
"""Primary-beam attenuation of the calibrator model: ``drift`` (the DSA-110's fixed
dish, Airy power beam along the block's drift) or ``none`` (no attenuation: a
tracking dish pointed at the calibrator, as in the VLA and ATA test data)."""


# ---------------------------------------------------------------------------
# caltable sets and their selection (pure)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CaltableSet:
    """The caltables of one subband solved on one calibrator block.

    Attributes
    ----------
    block_id : str
        The calibrator block.
    subband : int
    bandpass, gain : str
        Caltable paths.
    time_jd : float
        UTC Julian date the solutions refer to (mid-time of the calibrator data).
    calibrator : str
        Catalogue name of the calibrator.
    """

    block_id: str
    subband: int
    bandpass: str
    gain: str
    time_jd: float
    calibrator: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CaltableSelection:
    """The caltable set(s) a target block gets, with interpolation weights.

    ``sets`` is empty (no valid caltables), one set (weight 1) or two sets on
    either side of the target (weights summing to 1, the nearer heavier).
    """

    sets: tuple[CaltableSet, ...]
    weights: tuple[float, ...]

    def __bool__(self) -> bool:
        return bool(self.sets)

    def as_dict(self) -> dict:
        return {"sets": [s.as_dict() for s in self.sets], "weights": list(self.weights)}


def select_caltables(candidates: Sequence[CaltableSet], target_mid_jd: float, window_s: float) -> CaltableSelection:
    """Nearest valid caltable set(s) for a target block, in either direction.

    Parameters
    ----------
    candidates : sequence of CaltableSet
        Sets of the target's subband (others are the caller's mistake and are
        ignored only if their subband differs from the first candidate's).
    target_mid_jd : float
        UTC Julian date of the target block's middle.
    window_s : float
        Sets further than this from the target are not valid.

    Returns
    -------
    CaltableSelection
        Two sets with linear weights when valid sets exist on both sides,
        else the nearest one, else none.
    """
    window_d = window_s / 86400.0
    valid = [c for c in candidates if abs(c.time_jd - target_mid_jd) <= window_d]
    before = [c for c in valid if c.time_jd <= target_mid_jd]
    after = [c for c in valid if c.time_jd > target_mid_jd]
    b = max(before, key=lambda c: c.time_jd) if before else None
    a = min(after, key=lambda c: c.time_jd) if after else None
    if b is not None and (a is None or b.time_jd == target_mid_jd):
        return CaltableSelection((b,), (1.0,))
    if a is not None and b is None:
        return CaltableSelection((a,), (1.0,))
    if a is None:
        return CaltableSelection((), ())
    w_after = (target_mid_jd - b.time_jd) / (a.time_jd - b.time_jd)
    return CaltableSelection((b, a), (1.0 - w_after, w_after))


# ---------------------------------------------------------------------------
# the calibrator model
# ---------------------------------------------------------------------------


def write_calibrator_model(
    ms: str | Path, calibrator: CatalogueCalibrator, *, pointing_dec_rad: float | None = None,
    primary_beam: str = "drift",
) -> dict:
    """Write MODEL_DATA of a calibrator seen through the drifting primary beam.

    Parameters
    ----------
    ms : path
        A subband MS with one field (the block's phase centre).
    calibrator : CatalogueCalibrator
    pointing_dec_rad : float, optional
        Pointing declination (observed frame). Default: the phase centre's
        observed declination at the MS's mid-time (the phase centre is the
        meridian point at the block's mid-time). Unused with ``primary_beam = "none"``.
    primary_beam : str
        ``drift`` (default; the DSA-110 drift scan) or ``none`` (the model is
        the catalogue flux density, unattenuated: data of a tracking dish
        pointed at the calibrator, such as the VLA and ATA test files).

    Returns
    -------
    dict
        ``l``, ``m`` (direction cosines of the calibrator), ``beam_min`` and
        ``beam_max`` (the attenuation range over the block at the band centre
        of the MS; 1 with ``primary_beam = "none"``), ``pointing_dec_deg``
        (None with ``primary_beam = "none"``).
    """
    from . import calibrators

    if primary_beam not in MODEL_BEAMS:
        raise ValueError(f"primary_beam {primary_beam!r} is not one of {', '.join(MODEL_BEAMS)}")
    ms = Path(ms)
    ct, cta = casa_env.casatools(), casa_env.casatasks()
    ra0, dec0 = _phase_centre(ms)
    freqs = _frequencies(ms)
    tb = ct.table()
    tb.open(str(ms))
    try:
        times = tb.getcol("TIME")
        has_model = "MODEL_DATA" in tb.colnames()
    finally:
        tb.close()
    if pointing_dec_rad is None and primary_beam == "drift":
        pointing_dec_rad = _observed_dec(ra0, dec0, float(np.mean(times)))
    if not has_model:
        # Adds MODEL_DATA (and CORRECTED_DATA) columns, both reset.
        cta.clearcal(vis=str(ms), addmodel=True)

    ra, dec = math.radians(calibrator.ra_deg), math.radians(calibrator.dec_deg)
    dra = ra - ra0
    l_ = math.cos(dec) * math.sin(dra)
    m_ = math.sin(dec) * math.cos(dec0) - math.cos(dec) * math.sin(dec0) * math.cos(dra)
    n_ = math.sqrt(max(0.0, 1.0 - l_ * l_ - m_ * m_))

    utimes, inverse = np.unique(times, return_inverse=True)
    jd = utimes / 86400.0 + 2400000.5
    if primary_beam == "drift":
        beam = calibrators.beam_attenuation(calibrator.ra_deg, calibrator.dec_deg, jd, pointing_dec_rad, freqs)
    else:
        beam = np.ones((len(jd), len(freqs)))
    spectrum = calibrator.flux_at(freqs)  # (n_chan,)
    amp_t = beam * spectrum[None, :]  # (n_times, n_chan)

    tb = ct.table()
    tb.open(str(ms), nomodify=False)
    try:
        n_rows = tb.nrows()
        n_corr = tb.getcell("DATA", 0).shape[0]
        for start in range(0, n_rows, MODEL_CHUNK_ROWS):
            n = min(MODEL_CHUNK_ROWS, n_rows - start)
            uvw = tb.getcol("UVW", start, n)  # (3, n)
            delay = (uvw[0] * l_ + uvw[1] * m_ + uvw[2] * (n_ - 1.0)) / tel.C_M_S  # seconds
            vis = amp_t[inverse[start : start + n]].T * np.exp(2j * np.pi * freqs[:, None] * delay[None, :])
            model = np.zeros((n_corr, len(freqs), n), dtype=np.complex64)
            model[0] = vis
            model[n_corr - 1] = vis  # XX = YY = I for an unpolarised source; XY = YX = 0
            tb.putcol("MODEL_DATA", model, start, n)
        tb.flush()
    except RuntimeError as e:
        if is_disk_error(e):
            raise TransientError(f"writing MODEL_DATA of {ms} failed ({e}); free space, then retry") from e
        raise
    finally:
        tb.close()
    mid = len(freqs) // 2
    return {
        "l": l_,
        "m": m_,
        "beam_min": float(beam[:, mid].min()),
        "beam_max": float(beam[:, mid].max()),
        "pointing_dec_deg": None if pointing_dec_rad is None else math.degrees(pointing_dec_rad),
    }


# ---------------------------------------------------------------------------
# solving
# ---------------------------------------------------------------------------


@dataclass
class SolveResult:
    """What :func:`solve_subband` made; ``as_dict()`` is JSON-friendly.

    ``caltables`` is the :class:`CaltableSet` to register; it is valid for
    target blocks within ``validity_window_s`` of ``caltables.time_jd``
    (``valid_from_jd`` .. ``valid_to_jd``).
    """

    caltables: CaltableSet
    valid_from_jd: float
    valid_to_jd: float
    validity_window_s: float
    refant: str
    model: dict
    flagged_solutions: dict[str, float]
    """Fraction of flagged solutions per kind (bandpass, gain)."""
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def solve_subband(
    ms: str | Path,
    calibrator: CatalogueCalibrator,
    settings: CalibrationConfig,
    out_dir: str | Path,
    *,
    block_id: str | None = None,
    subband: int | None = None,
    pointing_dec_rad: float | None = None,
    primary_beam: str = "drift",
) -> SolveResult:
    """Solve the bandpass and complex gains of one subband of a calibrator block.

    Parameters
    ----------
    ms : path
        Flagged subband MS of the calibrator block; its MODEL_DATA is rewritten.
    calibrator : CatalogueCalibrator
        The calibrator in the beam (``calibrators.calibrators_in_block``).
    settings : CalibrationConfig
    out_dir : path
        The products root; caltables go to ``products.caltable(out_dir, block_id, subband, kind)``.
    block_id, subband : optional
        Default: parsed from the MS name (``{block_id}_sb{NN}.ms``).
    pointing_dec_rad : float, optional
        See :func:`write_calibrator_model`.
    primary_beam : str
        ``drift`` (DSA-110, default) or ``none``; see :func:`write_calibrator_model`.

    Returns
    -------
    SolveResult

    Raises
    ------
    PermanentError
        The MS is missing, or CASA found no solution (e.g. all data flagged).
    TransientError
        Lack of space or permission while writing.
    """
    ms = Path(ms)
    if not (ms / "table.dat").is_file():
        raise PermanentError(f"{ms} is not a Measurement Set; convert the subband again before calibrating")
    if block_id is None or subband is None:
        parsed = _parse_subband_ms(ms)
        block_id = parsed[0] if block_id is None else block_id
        subband = parsed[1] if subband is None else subband
    paths = {kind: products.caltable(out_dir, block_id, subband, kind) for kind in products.CALTABLE_KINDS}
    tmps = {kind: temporary_name(p) for kind, p in paths.items()}
    cta = casa_env.casatasks()
    t0 = time.perf_counter()
    model = write_calibrator_model(ms, calibrator, pointing_dec_rad=pointing_dec_rad, primary_beam=primary_beam)
    t_model = time.perf_counter()
    refant = settings.refant or choose_refant(ms)
    casa_refant = casa_antenna_selection(refant, _antenna_names(ms))
    try:
        paths["bandpass"].parent.mkdir(parents=True, exist_ok=True)
        for tmp in tmps.values():
            remove_path(tmp)
        cta.bandpass(**bandpass_args(ms, tmps["bandpass"], casa_refant, settings))
        t_bp = time.perf_counter()
        if not (tmps["bandpass"] / "table.dat").is_file():
            # CASA logs its error and returns: say so here rather than let gaincal fail on the missing table.
            raise PermanentError(
                f"CASA wrote no bandpass caltable for {ms} (block {block_id}, sb{subband:02d}, refant "
                f"{casa_refant!r}); see the CASA log {_casa_log()}, check the flags and the calibrator"
            )
        cta.gaincal(**gaincal_args(ms, tmps["gain"], tmps["bandpass"], casa_refant, settings))
        t_g = time.perf_counter()
        for kind in ("bandpass", "gain"):
            if not (tmps[kind] / "table.dat").is_file():
                raise PermanentError(
                    f"CASA wrote no {kind} caltable for {ms} (block {block_id}, sb{subband:02d}); "
                    "check the flags and the calibrator, or treat the block as a target"
                )
        used = _antennas_with_data(ms)
        flagged = {kind: _flagged_solution_fraction(tmps[kind], used) for kind in tmps}
        if flagged["bandpass"] >= 1.0 or flagged["gain"] >= 1.0:
            raise PermanentError(
                f"every {'bandpass' if flagged['bandpass'] >= 1 else 'gain'} solution of {ms} (block {block_id}, "
                f"sb{subband:02d}) is flagged; the calibrator is too faint or the data are bad"
            )
        for kind in ("bandpass", "gain"):
            replace_directory(tmps[kind], paths[kind])
    except (OSError, RuntimeError) as e:
        for tmp in tmps.values():
            remove_path(tmp)
        if is_disk_error(e):
            raise TransientError(f"writing caltables of {ms} failed ({e}); free space or fix permissions") from e
        raise
    except BaseException:
        for tmp in tmps.values():
            remove_path(tmp)
        raise
    mid_jd = _mid_jd(ms)
    window_d = settings.validity_window_s / 86400.0
    return SolveResult(
        caltables=CaltableSet(
            block_id, subband, str(paths["bandpass"]), str(paths["gain"]), mid_jd, calibrator.name
        ),
        valid_from_jd=mid_jd - window_d,
        valid_to_jd=mid_jd + window_d,
        validity_window_s=settings.validity_window_s,
        refant=refant,
        model=model,
        flagged_solutions=flagged,
        seconds={
            "model": round(t_model - t0, 3),
            "bandpass": round(t_bp - t_model, 3),
            "gaincal": round(t_g - t_bp, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    )


def bandpass_args(ms: Path, caltable: Path, refant: str, settings: CalibrationConfig) -> dict:
    """Keyword arguments of ``casatasks.bandpass``: per-channel B, not normalised.

    Not normalising puts the whole gain amplitude into B; the following G
    solution then only follows changes within the block.
    """
    return dict(
        vis=str(ms), caltable=str(caltable), solint=settings.bandpass_solint, combine="scan",
        refant=refant, bandtype="B", minsnr=settings.minsnr, solnorm=False, append=False,
    )


def gaincal_args(ms: Path, caltable: Path, bandpass: Path, refant: str, settings: CalibrationConfig) -> dict:
    """Keyword arguments of ``casatasks.gaincal``: amplitude-and-phase G with the bandpass applied."""
    return dict(
        vis=str(ms), caltable=str(caltable), solint=settings.solint, combine="scan", refant=refant,
        gaintype="G", calmode="ap", minsnr=settings.minsnr, gaintable=[str(bandpass)], append=False,
    )


def casa_antenna_selection(names: str, antenna_names: Sequence[str]) -> str:
    """The antennas ``names`` (one or a comma list) as CASA's antenna selection will read them.

    CASA parses a name that starts with a digit and goes on with letters
    (the ATA's ``1c``) as a quantity with a unit and fails; such a name is
    given as its index in the ANTENNA table instead. Names CASA reads as
    they are (``DSA-051``, ``ea05``, the VLA's ``7``) are kept.

    Raises
    ------
    PermanentError
        A name not in ``antenna_names``, or one whose index is also another
        antenna's name (CASA could not tell them apart).
    """
    import re

    out = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if not re.match(r"^\d+[^\d,]", name):
            out.append(name)
            continue
        if name not in antenna_names:
            raise PermanentError(f"antenna {name!r} is not in the MS (antennas: {', '.join(antenna_names)})")
        index = str(list(antenna_names).index(name))
        if index in antenna_names:
            raise PermanentError(f"antenna {name!r} cannot be given to CASA: its index {index} is another antenna's "
                                 "name; set calibration.refant to another antenna")
        out.append(index)
    return ",".join(out)


def choose_refant(ms: str | Path) -> str:
    """The antenna with the fewest flagged cross-correlations (ties: the first in the table)."""
    ct = casa_env.casatools()
    tb = ct.table()
    tb.open(str(Path(ms) / "ANTENNA"))
    try:
        names = [str(n) for n in tb.getcol("NAME")]
    finally:
        tb.close()
    tb = ct.table()
    tb.open(str(ms))
    try:
        a1, a2 = tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2")
        per_row = tb.getcol("FLAG").mean(axis=(0, 1))
    finally:
        tb.close()
    cross = a1 != a2
    best, best_frac = None, 2.0
    for i, name in enumerate(names):
        rows = cross & ((a1 == i) | (a2 == i))
        if rows.any() and per_row[rows].mean() < best_frac:
            best, best_frac = name, float(per_row[rows].mean())
    if best is None or best_frac >= 1.0:
        raise PermanentError(f"{ms}: every antenna is fully flagged; no reference antenna, the subband cannot be calibrated")
    return best


# ---------------------------------------------------------------------------
# applying
# ---------------------------------------------------------------------------


@dataclass
class ApplyResult:
    """What :func:`apply_subband` applied; ``as_dict()`` is JSON-friendly."""

    ms_path: str
    selection: dict
    fraction_flagged_after: float
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def apply_subband(
    ms: str | Path, caltables: CaltableSelection | CaltableSet, settings: CalibrationConfig | None = None
) -> ApplyResult:
    """Apply caltables to a subband MS: DATA -> CORRECTED_DATA.

    Parameters
    ----------
    ms : path
    caltables : CaltableSelection or CaltableSet
        From :func:`select_caltables` (one set, or two to interpolate
        linearly in time), or a single set.
    settings : CalibrationConfig, optional
        Unused for now (kept so that the call is stable when applycal options
        become configurable).

    Raises
    ------
    PermanentError
        No caltables, or a caltable is missing.
    """
    ms = Path(ms)
    sel = caltables if isinstance(caltables, CaltableSelection) else CaltableSelection((caltables,), (1.0,))
    if not sel:
        raise PermanentError(f"no valid caltables for {ms}; wait for a calibrator block or image it uncalibrated")
    for s in sel.sets:
        for p in (s.bandpass, s.gain):
            if not (Path(p) / "table.dat").is_file():
                raise PermanentError(f"caltable {p} (calibrator block {s.block_id}) is missing; solve that block again")
    cta = casa_env.casatasks()
    t0 = time.perf_counter()
    work = ms.parent / f".{ms.name}.caltables"
    try:
        if len(sel.sets) == 1:
            tables = [sel.sets[0].bandpass, sel.sets[0].gain]
            interp = ["nearest,linear", "nearest"]
        else:
            remove_path(work)
            work.mkdir(parents=True)
            tables = [
                str(merge_caltables([s.bandpass for s in sel.sets], work / "merged.bcal")),
                str(merge_caltables([s.gain for s in sel.sets], work / "merged.gcal")),
            ]
            # Linear in time between the two solution times: the weights of the selection.
            interp = ["linear,linear", "linear"]
        cta.applycal(
            vis=str(ms), gaintable=tables, interp=interp, calwt=[False] * len(tables), flagbackup=False,
            applymode="calflag",
        )
    except RuntimeError as e:
        if is_disk_error(e):
            raise TransientError(f"applycal on {ms} failed ({e}); free space or fix permissions") from e
        raise
    finally:
        remove_path(work)
    t_apply = time.perf_counter()
    ct = casa_env.casatools()
    tb = ct.table()
    tb.open(str(ms))
    try:
        if "CORRECTED_DATA" not in tb.colnames():
            raise PermanentError(f"applycal wrote no CORRECTED_DATA in {ms}; check the caltables and the CASA log")
        frac = float(tb.getcol("FLAG").mean())
    finally:
        tb.close()
    return ApplyResult(
        ms_path=str(ms),
        selection=sel.as_dict(),
        fraction_flagged_after=frac,
        seconds={"applycal": round(t_apply - t0, 3), "total": round(time.perf_counter() - t0, 3)},
    )


def merge_caltables(tables: Sequence[str | Path], out: str | Path) -> Path:
    """One caltable holding the solutions of several (same kind, same spectral window).

    The first table is copied (with its subtables), the main-table rows of the
    others appended; CASA then interpolates between their solution times.
    """
    ct = casa_env.casatools()
    out = Path(out)
    tb = ct.table()
    tb.open(str(tables[0]))
    try:
        tb.copy(str(out), deep=True, valuecopy=True, returnobject=False)
    finally:
        tb.close()
    for other in tables[1:]:
        src = ct.table()
        src.open(str(other))
        try:
            src.copyrows(str(out))  # appends to the end of ``out``
        finally:
            src.close()
    return out


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _phase_centre(ms: Path) -> tuple[float, float]:
    tb = casa_env.casatools().table()
    tb.open(str(ms / "FIELD"))
    try:
        if tb.nrows() != 1:
            raise PermanentError(f"{ms} has {tb.nrows()} fields; a subband MS of one block has one")
        d = tb.getcol("PHASE_DIR")[:, 0, 0]
    finally:
        tb.close()
    return float(d[0]), float(d[1])


def _frequencies(ms: Path) -> np.ndarray:
    tb = casa_env.casatools().table()
    tb.open(str(ms / "SPECTRAL_WINDOW"))
    try:
        if tb.nrows() != 1:
            raise PermanentError(f"{ms} has {tb.nrows()} spectral windows; a subband MS has one")
        return np.asarray(tb.getcol("CHAN_FREQ")[:, 0], dtype=float)
    finally:
        tb.close()


def _mid_jd(ms: Path) -> float:
    tb = casa_env.casatools().table()
    tb.open(str(ms))
    try:
        t = tb.getcol("TIME")
    finally:
        tb.close()
    return float((t.min() + t.max()) / 2 / 86400.0 + 2400000.5)


def _observed_dec(ra_rad: float, dec_rad: float, time_mjd_s: float) -> float:
    """Observed (topocentric, of-date) declination of an ICRS position at a time."""
    from astropy import units as u
    from astropy.coordinates import HADec, SkyCoord
    from astropy.time import Time

    t = Time(time_mjd_s / 86400.0, format="mjd", scale="utc")
    frame = HADec(obstime=t, location=tel.site_location(), pressure=0 * u.hPa)
    c = SkyCoord(ra=ra_rad * u.rad, dec=dec_rad * u.rad, frame="icrs").transform_to(frame)
    return float(c.dec.rad)


def _antenna_names(ms: Path) -> list[str]:
    tb = casa_env.casatools().table()
    tb.open(str(ms / "ANTENNA"))
    try:
        return [str(n) for n in tb.getcol("NAME")]
    finally:
        tb.close()


def _casa_log() -> str:
    import os

    return os.environ.get("CONTIMG_CASA_LOGFILE", "(CASA log)")


def _antennas_with_data(ms: Path) -> np.ndarray:
    """Antenna indices that appear in the main table (pyuvdata's ANTENNA table has unused rows)."""
    tb = casa_env.casatools().table()
    tb.open(str(ms))
    try:
        return np.union1d(tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2"))
    finally:
        tb.close()


def _flagged_solution_fraction(caltable: Path, antennas: np.ndarray) -> float:
    """Fraction of flagged solutions of the antennas that have data."""
    tb = casa_env.casatools().table()
    tb.open(str(caltable))
    try:
        if not tb.nrows():
            return 1.0
        rows = np.isin(tb.getcol("ANTENNA1"), antennas)
        return float(tb.getcol("FLAG")[:, :, rows].mean()) if rows.any() else 1.0
    finally:
        tb.close()


def _parse_subband_ms(ms: Path) -> tuple[str, int]:
    import re

    m = re.match(r"^(?P<block>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})_sb(?P<sb>\d{2})\.ms$", ms.name)
    if not m:
        raise PermanentError(f"{ms}: cannot tell block and subband from the name; pass block_id and subband")
    return m["block"], int(m["sb"])
