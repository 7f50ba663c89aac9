"""Flag one subband Measurement Set: bad values, bad antennas and RFI.

Steps, in order (docs/calibration.md explains the choices):

1. **Zeros and NaNs**: every visibility that is exactly zero or not finite
   (a dead input, a dropped correlator packet).
2. **Known bad antennas**: ``flagging.bad_antennas`` (for every night, or
   for one UTC date with ``YYYY-MM-DD:NAME``).
3. **Antennas found bad from their autocorrelations**: an antenna whose
   median XX or YY autocorrelation power is ``auto_outlier_factor`` above or
   below the array median (a noisy or dead receiver), or whose
   autocorrelations are all flagged after step 1 (dead: zeros). Skipped
   with ``use_autocorrelations = false`` (data without trustworthy
   autocorrelations, such as the ATA test file).
4. **RFI**: by default SumThreshold (``strategy = "sumthreshold"``,
   :mod:`contimg.sumthreshold`) on the parallel hands' amplitudes already in
   memory; or AOFlagger (``"aoflagger"``: Debian's ``aoflagger`` program with
   contimg's Lua strategy, ``resources/aoflagger-dsa110.lua``); or
   ``casatasks.flagdata`` with ``tfcrop`` and/or ``rflag``.

Steps 1-3 are done in numpy on the FLAG column (one read, one write), which
avoids CASA's antenna-selection syntax for names containing ``-``; step 4 is
CASA's or AOFlagger's. Flag fractions are counted on the cross-correlations, per antenna and
overall, before and after; the result is JSON-friendly.

Speed (a full subband: 165672 rows x 48 channels x 4 correlations):

- The bulk columns (DATA, FLAG) are read and written with python-casacore:
  casatools' ``getcol`` of DATA takes ~7 s (it converts to complex128 through
  its binding), python-casacore's 0.35 s. The table is closed before CASA's
  flagdata opens it.
- tfcrop and rflag run as one ``flagdata`` call (``mode='list'``): one pass
  over the data with both agents, instead of one pass each.
- They look at the parallel hands only (``RFI_CORRELATION``): RFI shows in
  XX and YY at least as strongly as in the cross hands of linear feeds, and
  every flag is extended across all four correlations afterwards anyway;
  the cross hands (noise-like for unpolarized sky) added only false
  positives and 3/4 of the cost (47 s -> ~12 s a subband, measured).

- SumThreshold runs on the DATA read for steps 1-3 and its flags go out with
  theirs in the one FLAG write: the whole step takes ~3.3 s a subband, against
  ~6.6 s with AOFlagger (which reads the MS and writes FLAG once more itself)
  and ~17.7 s with tfcrop+rflag (docs/calibration.md).

CASA is not thread-safe: call from one thread per process.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import casa_env, external
from .config import FlaggingConfig
from .errors import PermanentError, TransientError
from .products import is_disk_error

log = logging.getLogger(__name__)

PARALLEL_HANDS = (0, 3)
"""XX and YY in the correlation order pyuvdata writes (XX, XY, YX, YY)."""
DEAD_FRACTION = 0.9
"""An antenna with more than this fraction of zero or NaN data is reported as dead."""
RFI_CORRELATION = "ABS_XX,YY"
"""What tfcrop and rflag look at: the amplitudes of the parallel hands (see the module docstring)."""


@dataclass
class FlagResult:
    """What :func:`flag_subband` did; ``as_dict()`` is JSON-friendly.

    Fractions count flagged visibilities (rows x channels x correlations) of
    the cross-correlations.
    """

    ms_path: str
    strategy: str
    fraction_before: float
    fraction_after: float
    per_antenna_before: dict[str, float]
    per_antenna_after: dict[str, float]
    per_channel_after: list[float]
    """Fraction flagged per channel (ascending frequency)."""
    fraction_after_step: dict[str, float]
    """Overall fraction after each step: zeros, known_bad, autocorrelations, rfi."""
    bad_antennas: dict[str, str]
    """Antenna name -> why it was flagged entirely (known bad, zeros, autocorrelation outlier)."""
    auto_power_ratio: dict[str, list[float]]
    """Antenna name -> [XX, YY] median autocorrelation power over the array median."""
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def bad_antennas_for_date(entries: list[str], date: str | None) -> list[str]:
    """Names from ``flagging.bad_antennas`` that apply on UTC ``date`` (``YYYY-MM-DD``).

    ``"DSA-003"`` applies every night; ``"2025-10-05:DSA-003"`` only on that date.
    """
    out = []
    for entry in entries:
        if ":" in entry:
            day, name = (x.strip() for x in entry.split(":", 1))
            if date is not None and day == date:
                out.append(name)
        else:
            out.append(entry.strip())
    return out


def flag_subband(ms: str | Path, settings: FlaggingConfig, *, date: str | None = None) -> FlagResult:
    """Flag a subband MS in place and report the flag fractions.

    Parameters
    ----------
    ms : path
        The subband Measurement Set (FLAG column updated in place; re-running
        only adds flags, so the step is idempotent in effect).
    settings : FlaggingConfig
    date : str, optional
        UTC date of the block (``YYYY-MM-DD``) for date-bound ``bad_antennas``
        entries; by default the date of the MS's first integration.

    Returns
    -------
    FlagResult

    Raises
    ------
    PermanentError
        The MS is missing or unreadable.
    TransientError
        Writing the flags failed for lack of space or permission.
    """
    ms = Path(ms)
    if not (ms / "table.dat").is_file():
        raise PermanentError(f"{ms} is not a Measurement Set; convert the subband again before flagging")
    from casacore import tables

    t0 = time.perf_counter()
    names = _antenna_names(ms)
    tb = None
    try:
        tb = tables.table(str(ms), readonly=False, ack=False)
        a1, a2 = tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2")
        # python-casacore gives (n_row, n_chan, n_corr); .T is the (n_corr, n_chan, n_row) view used below.
        flag = tb.getcol("FLAG").T
        data = tb.getcol("DATA").T
        times = tb.getcol("TIME") if settings.strategy == "sumthreshold" else None
        if date is None:
            date = _utc_date(tb.getcell("TIME", 0))
        cross = a1 != a2
        before = _fractions(flag, a1, a2, cross, names)
        steps: dict[str, float] = {}

        # 1. zeros and NaNs
        flag |= (data == 0) | ~np.isfinite(data)
        steps["zeros"] = _overall(flag, cross)
        zero_frac = _fractions(flag, a1, a2, cross, names)[1]
        bad: dict[str, str] = {}
        for name, frac in zero_frac.items():
            if frac > DEAD_FRACTION and before[1][name] < DEAD_FRACTION:
                bad[name] = f"dead: {100 * frac:.0f}% of its data are zero or NaN"

        # 2. known bad antennas
        known = bad_antennas_for_date(list(settings.bad_antennas), date)
        unknown = [n for n in known if n not in names]
        if unknown:
            log.warning("%s: flagging.bad_antennas names %s, not in this MS; ignored", ms, ", ".join(unknown))
        for name in known:
            if name in names:
                bad[name] = "known bad (flagging.bad_antennas)"
        _flag_antennas(flag, a1, a2, [names.index(n) for n in bad])
        steps["known_bad"] = _overall(flag, cross)

        # 3. autocorrelation outliers
        ratios = _auto_power_ratios(data, flag, a1, a2, len(names))
        factor = settings.auto_outlier_factor
        found = []
        for i, name in enumerate(names if settings.use_autocorrelations else []):
            r = ratios[i]
            if name in bad or not np.any(a1 == i):
                continue
            if not np.all(np.isfinite(r)):
                bad[name] = "dead: no unflagged autocorrelation"
                found.append(i)
            elif np.any(r > factor) or np.any(r < 1 / factor):
                bad[name] = (
                    f"autocorrelation power XX {r[0]:.2f}x, YY {r[1]:.2f}x the array median "
                    f"(outside 1/{factor:g}..{factor:g})"
                )
                found.append(i)
        _flag_antennas(flag, a1, a2, found)
        steps["autocorrelations"] = _overall(flag, cross)
        t_numpy = time.perf_counter()
        if settings.strategy == "sumthreshold":  # 4. RFI, here, on the data in memory
            _flag_rfi_in_memory(data, flag, a1, a2, times, settings)
        del data
        tb.putcol("FLAG", np.ascontiguousarray(flag.T))
        tb.flush()
    except RuntimeError as e:
        if is_disk_error(e):
            raise TransientError(f"writing flags to {ms} failed ({e}); free space or fix permissions, then retry") from e
        raise PermanentError(f"{ms} could not be flagged ({str(e).splitlines()[0]}); convert the subband again") from e
    finally:
        if tb is not None:
            tb.close()  # before CASA's flagdata opens the MS

    # 4. RFI (sumthreshold: done above)
    if settings.strategy != "sumthreshold":
        _flag_rfi(ms, settings)
        extend = rfi_flagdata_call(settings) is not None  # AOFlagger writes all four correlations itself
        with tables.table(str(ms), readonly=not extend, ack=False) as tb:
            flag = tb.getcol("FLAG").T
            if extend:
                # RFI seen in one correlation spoils them all (and calibration solves
                # per feed): extend the RFI flags across the correlations.
                flag[:] = flag.any(axis=0, keepdims=True)
                tb.putcol("FLAG", np.ascontiguousarray(flag.T))
    t_rfi = time.perf_counter()
    after = _fractions(flag, a1, a2, cross, names)
    steps["rfi"] = after[0]
    per_channel = flag[:, :, cross].mean(axis=(0, 2))
    return FlagResult(
        ms_path=str(ms),
        strategy=settings.strategy,
        fraction_before=before[0],
        fraction_after=after[0],
        per_antenna_before=before[1],
        per_antenna_after=after[1],
        per_channel_after=[round(float(x), 6) for x in per_channel],
        fraction_after_step=steps,
        bad_antennas=bad,
        auto_power_ratio={n: [round(float(x), 4) for x in ratios[i]] for i, n in enumerate(names) if np.any(a1 == i)},
        seconds={
            "bad_data": round(t_numpy - t0, 3),
            "rfi": round(t_rfi - t_numpy, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    )


def rfi_commands(settings: FlaggingConfig) -> list[dict]:
    """Keyword arguments of each ``casatasks.flagdata`` call of the RFI step.

    ``datacolumn='data'`` because flagging runs before calibration; the
    amplitudes of the parallel hands (``RFI_CORRELATION``); the thresholds
    come from the settings; no flag backups (the pipeline's MSs are re-created
    from the raw files when needed). :func:`rfi_flagdata_call` runs them in
    one pass.
    """
    common = {"datacolumn": "data", "correlation": RFI_CORRELATION, "action": "apply", "flagbackup": False}
    tfcrop = dict(
        common,
        mode="tfcrop",
        timecutoff=settings.tfcrop_timecutoff,
        freqcutoff=settings.tfcrop_freqcutoff,
        extendflags=False,
    )
    rflag = dict(
        common,
        mode="rflag",
        timedevscale=settings.rflag_timedevscale,
        freqdevscale=settings.rflag_freqdevscale,
        extendflags=False,
    )
    return {"none": [], "tfcrop": [tfcrop], "rflag": [rflag], "tfcrop+rflag": [tfcrop, rflag],
            "aoflagger": [], "sumthreshold": []}[settings.strategy]


def rfi_flagdata_call(settings: FlaggingConfig) -> dict | None:
    """Keyword arguments of the one ``casatasks.flagdata`` call that runs every RFI command.

    One command is passed as it is; several go in ``mode='list'``, which runs
    their agents side by side in a single pass over the MS (each agent sees
    the flags as they were before the call; the union of their flags is
    written). None when the strategy is ``none``.
    """
    cmds = rfi_commands(settings)
    if not cmds:
        return None
    if len(cmds) == 1:
        return cmds[0]
    lines = [" ".join(f"{k}={v!r}" for k, v in c.items() if k not in ("action", "flagbackup")) for c in cmds]
    return {"mode": "list", "inpfile": lines, "action": "apply", "flagbackup": False}


AOFLAGGER = "aoflagger"


def aoflagger_strategy(settings: FlaggingConfig) -> Path:
    """The Lua strategy file AOFlagger runs: the configured one, else contimg's own."""
    if settings.aoflagger_strategy:
        return Path(settings.aoflagger_strategy).expanduser()
    from importlib import resources

    return Path(str(resources.files("contimg") / "resources" / "aoflagger-dsa110.lua"))


def aoflagger_command(ms: Path, settings: FlaggingConfig, *, executable: str = AOFLAGGER) -> list[str]:
    """AOFlagger's argument list for one subband MS (deterministic; AOFlagger is not needed to build it).

    DATA is flagged (flagging runs before calibration); the whole MS is read
    into memory (a subband is a few hundred MB), with ``threads``
    threads (0: the cores this process may use).
    """
    threads = settings.threads or external.available_cores()
    return [executable, "-column", "DATA", "-memory-read", "-j", str(threads),
            "-strategy", str(aoflagger_strategy(settings)), str(ms)]


def _run_aoflagger(ms: Path, settings: FlaggingConfig) -> None:
    exe = external.require(AOFLAGGER, needed_for="flagging.strategy = 'aoflagger'",
                           otherwise="set flagging.strategy = 'tfcrop+rflag'")
    strategy = aoflagger_strategy(settings)
    if not strategy.is_file():
        raise PermanentError(f"the AOFlagger strategy {strategy} is missing; reinstall contimg or fix "
                             "flagging.aoflagger_strategy")
    # subprocess.run kills AOFlagger if this task is interrupted (its time limit)
    proc = subprocess.run(aoflagger_command(ms, settings, executable=exe), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower() or "exception" in ln.lower()]
        last = (errors or lines or ["no output"])[-1][:200]
        if is_disk_error(RuntimeError(proc.stdout + proc.stderr)):
            raise TransientError(f"aoflagger on {ms} failed ({last}); free space or fix permissions, then retry")
        raise PermanentError(f"aoflagger on {ms} failed (exit {proc.returncode}: {last}); check the strategy "
                             f"{strategy} and the MS, or set flagging.strategy = 'tfcrop+rflag'")


def _flag_rfi(ms: Path, settings: FlaggingConfig) -> None:
    if settings.strategy == "aoflagger":
        _run_aoflagger(ms, settings)
        return
    kwargs = rfi_flagdata_call(settings)
    if kwargs is None:
        return
    try:
        casa_env.casatasks().flagdata(vis=str(ms), **kwargs)
    except RuntimeError as e:
        if is_disk_error(e):
            raise TransientError(f"flagdata on {ms} failed ({e}); free space or fix permissions, then retry") from e
        raise


def _flag_rfi_in_memory(data: np.ndarray, flag: np.ndarray, a1: np.ndarray, a2: np.ndarray, times: np.ndarray,
                        settings: FlaggingConfig) -> None:
    """SumThreshold (:mod:`contimg.sumthreshold`) on the parallel hands' amplitudes; flags all four correlations.

    ``data`` and ``flag`` are the (correlation, channel, row) views of the
    subband; the cross-correlation rows are arranged into one (time, channel)
    plane per baseline (a missing integration is a flagged sample).
    """
    from . import sumthreshold

    cross = np.flatnonzero(a1 != a2)
    if cross.size == 0:
        return
    baseline = a1[cross].astype(np.int64) * 100_000 + a2[cross]
    _, b_index = np.unique(baseline, return_inverse=True)
    _, t_index = np.unique(times[cross], return_inverse=True)
    n_bl, n_t, n_chan = int(b_index.max()) + 1, int(t_index.max()) + 1, data.shape[1]
    amp = np.zeros((2, n_bl, n_t, n_chan), dtype=np.float32)
    known = np.ones((2, n_bl, n_t, n_chan), dtype=bool)
    for k, pol in enumerate(PARALLEL_HANDS):
        amp[k, b_index, t_index] = np.abs(data[pol][:, cross]).T
        known[k, b_index, t_index] = flag[pol][:, cross].T
    st = sumthreshold.SumThresholdSettings(threshold=settings.sumthreshold_threshold, sir_eta=settings.sumthreshold_sir_eta)
    rfi = sumthreshold.detect(amp.reshape(2 * n_bl, n_t, n_chan), known.reshape(2 * n_bl, n_t, n_chan), st,
                              threads=settings.threads or external.available_cores())
    rfi = rfi.reshape(2, n_bl, n_t, n_chan).any(axis=0)  # RFI in either hand spoils all four correlations
    flag[:, :, cross] |= rfi[b_index, t_index].T[None, :, :]


def _antenna_names(ms: Path) -> list[str]:
    tb = casa_env.casatools().table()
    try:
        tb.open(str(ms / "ANTENNA"))
        return [str(n) for n in tb.getcol("NAME")]
    finally:
        tb.close()


def _utc_date(mjd_seconds: float) -> str:
    from astropy.time import Time

    return Time(mjd_seconds / 86400.0, format="mjd", scale="utc").isot[:10]


def _overall(flag: np.ndarray, cross: np.ndarray) -> float:
    return float(flag[:, :, cross].mean()) if cross.any() else 0.0


def _fractions(flag, a1, a2, cross, names) -> tuple[float, dict[str, float]]:
    """Overall and per-antenna flagged fraction of the cross-correlations."""
    per_row = flag.mean(axis=(0, 1))  # fraction per row
    out = {}
    for i, name in enumerate(names):
        rows = cross & ((a1 == i) | (a2 == i))
        if rows.any():
            out[name] = round(float(per_row[rows].mean()), 6)
    return (float(per_row[cross].mean()) if cross.any() else 0.0), out


def _flag_antennas(flag: np.ndarray, a1: np.ndarray, a2: np.ndarray, indices: list[int]) -> None:
    if indices:
        flag[:, :, np.isin(a1, indices) | np.isin(a2, indices)] = True


def _auto_power_ratios(data, flag, a1, a2, n_ant) -> np.ndarray:
    """Median XX and YY autocorrelation power of each antenna over the array median.

    Returns
    -------
    ndarray, shape (n_antennas, 2); NaN where an antenna has no unflagged autocorrelation.
    """
    level = np.full((n_ant, 2), np.nan)
    autos = np.flatnonzero(a1 == a2)
    for row_ant in np.unique(a1[autos]):
        rows = autos[a1[autos] == row_ant]
        for k, pol in enumerate(PARALLEL_HANDS):
            # complex128 (exact from complex64) keeps the medians as they were with casatools' getcol.
            vals = np.abs(data[pol][:, rows].astype(np.complex128))[~flag[pol][:, rows]]
            if vals.size:
                level[row_ant, k] = np.median(vals)
    ref = np.nanmedian(level, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return level / ref[None, :]
