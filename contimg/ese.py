"""Extreme Scattering Event (ESE) detection in light curves, with a known false-alarm rate.

The detector is a scan statistic for a dip (docs/ese.md explains the choices).
For each source, on its valid epochs in time order:

1. normalise: ``r = flux / median(flux)`` and ``s = flux_err / median(flux)``;
2. estimate an excess-scatter factor ``k`` robustly from first differences,
   ``k = median|Δr / sqrt(s_i^2 + s_{i+1}^2)| / 0.6745``: a slow dip barely
   changes consecutive differences, so k measures white scatter beyond the
   quoted errors (residual calibration errors) without being fooled by the dip;
3. standardise ``x = (r - 1) / (k s)`` and clip it at ``±clip`` so that one
   bad epoch or a caustic spike cannot dominate a window;
4. for every window of consecutive valid epochs (lengths on a geometric grid,
   ratio 1.25, starts a third of the length apart), the likelihood-ratio statistic
   of "two levels, inside and outside the window" against "constant",
   ``z = (mean_out - mean_in) / sqrt(1/W_in + 1/W_out)`` (weighted means,
   ``W`` sums of weights ``1/(k s)^2``), positive for a dip; cumulative sums
   make each window O(1);
5. the score is the largest z over windows.

Why the false-alarm probability (FAP) is known: for a steady source whose
errors are right up to a common factor, steps 1-3 make the score pivotal (its
law does not depend on the flux, the SNR or that factor), so it depends only
on the number of valid epochs N and the window grid. :func:`null_scores`
draws it by Monte-Carlo (fixed seed, cached per N) and
:func:`false_alarm_probability` reads the FAP off it, extrapolating beyond the
sample with an exponential tail fitted to the top 1 % of the sample (its scale
at the upper ~95 % bound): measured against 400 000 null light curves this
over-estimates the FAP beyond 1e-3, so the realised false-positive rate is at
most about the nominal (docs/ese.md has the measurement).
A source is a candidate when its FAP is at most ``fpr``.

Light curves come as 2-D arrays ``(n_sources, n_epochs)``, NaN for a missing
epoch, or as a table (:func:`detect_table`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats as _stats

from contimg.errors import PermanentError
from contimg.variability import compress_valid, map_source_blocks

DEFAULT_FPR = 1e-4
"""Default false-alarm probability per source: 0.1 expected false candidates per 1000 steady sources."""

TABLE_COLUMNS = ("source", "time", "flux", "flux_err")

_MAD_TO_SIGMA = 1.0 / 0.6744897501960817
# Null samples: 10 000 light curves per N resolve the FAP directly down to 1e-2
# (100 exceedances); below it the exponential tail takes over.
_N_SIM = 10_000
_TAIL_FRACTION = 0.01
_SEED = 20251005
# Exact calibration for every N up to here, then a geometric grid (ratio 1.1)
# with log-FAP interpolated linearly in log N.
_EXACT_N_MAX = 64


class BadLightCurveTable(PermanentError, ValueError):
    """A light-curve table that cannot be read or lacks a column; the message names it."""


@dataclass(frozen=True)
class ScanConfig:
    """How the dip scan searches; the null calibration depends on every field.

    Attributes
    ----------
    min_epochs : int
        Shortest dip window (epochs). ESEs last weeks; 1-2 epoch dips are outliers.
    max_fraction : float
        Longest dip window as a fraction of the valid epochs: the rest is the baseline.
    min_valid : int
        Sources with fewer valid epochs are not scanned (score NaN, FAP 1).
    length_ratio : float
        Ratio between consecutive window lengths (geometric grid, step >= 1 epoch).
    step_fraction : float
        Window starts are ``max(1, round(length * step_fraction))`` epochs apart.
    clip : float
        Standardised residuals are clipped at ``±clip`` (units of the inflated error).
    """

    min_epochs: int = 3
    max_fraction: float = 0.75
    min_valid: int = 10
    length_ratio: float = 1.25
    step_fraction: float = 1.0 / 3.0
    clip: float = 5.0

    def lengths(self, n_valid: int) -> np.ndarray:
        """Window lengths (epochs) scanned for a light curve of ``n_valid`` epochs."""
        top = int(self.max_fraction * n_valid)
        out, length = [], self.min_epochs
        while length <= top:
            out.append(length)
            length = max(length + 1, int(round(length * self.length_ratio)))
        return np.array(out, dtype=int)


@dataclass(frozen=True)
class DipScan:
    """The best dip window of every source; arrays of shape (n_sources,).

    Window indices are original epoch indices (columns of the input arrays).
    """

    score: np.ndarray
    """Largest window statistic z (units of sigma of one window; NaN if not scanned)."""
    fap: np.ndarray
    """False-alarm probability of that score for a steady source with N valid epochs."""
    start: np.ndarray
    """First epoch index of the best window (-1 if not scanned)."""
    stop: np.ndarray
    """Last epoch index of the best window, inclusive (-1 if not scanned)."""
    n_in: np.ndarray
    """Valid epochs in the window."""
    depth: np.ndarray
    """Fractional depth ``1 - mean_in / mean_out`` (weighted, unclipped)."""
    scale: np.ndarray
    """Typical factor applied to the quoted errors for the excess scatter (1 = none)."""
    n_valid: np.ndarray
    """Valid epochs of the source."""

    @property
    def significance(self) -> np.ndarray:
        """The FAP as a one-sided Gaussian significance (sigma)."""
        return _stats.norm.isf(self.fap)


@dataclass(frozen=True)
class Candidate:
    """One detected dip."""

    source: str
    score: float
    """Window statistic z (sigma of one window)."""
    fap: float
    """False-alarm probability for a steady source with this sampling."""
    significance: float
    """The FAP as a one-sided Gaussian significance (sigma)."""
    depth: float
    """Fractional dip depth (0.3 = 30 % dimmer than the baseline)."""
    n_epochs: int
    """Valid epochs inside the dip window."""
    start_time: float
    """Time of the first epoch in the dip (the table's time unit)."""
    end_time: float
    """Time of the last epoch in the dip."""
    duration: float
    """``end_time - start_time``."""
    scale: float
    """Excess-scatter factor k applied to the quoted errors."""
    reason: str
    """One line for a human."""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LightCurve:
    """One source's light curve (valid epochs only, in time order)."""

    source: str
    time: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray


# --------------------------------------------------------------------------- the scan


def _as_float_2d(x) -> np.ndarray:
    """2-D float array (float32 kept as is), masked entries NaN, without copying plain arrays."""
    if isinstance(x, np.ma.MaskedArray):
        x = np.ma.filled(x.astype(float), np.nan)
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(float)
    return np.atleast_2d(x)


def _row_median(x, n: np.ndarray, max_count: int = 255, dtype=None) -> np.ndarray:
    """Median of the first ``n[i]`` entries of each row i (NaN where n is 0).

    Rows longer than ``max_count`` use ``max_count`` evenly spaced entries:
    the median of 255 values is precise to ~8 % of a sigma, plenty for a
    normalisation and a noise scale, and it bounds the cost of the partition.

    Parameters
    ----------
    x : ndarray or callable
        The rows, or ``x(rows, cols)`` giving the entries at those rows (an
        index array, or ``slice(None)`` for all) and columns (an index array):
        then only the entries the median uses are ever computed.
    n : ndarray of int
        Entries per row.
    max_count : int
        Most entries a median is taken over.
    dtype : numpy dtype, optional
        Of the result; default ``x.dtype`` (required when x is a callable).
    """
    take = x if callable(x) else functools.partial(_take, x)
    out = np.full(n.shape[0], np.nan, dtype=x.dtype if dtype is None else dtype)
    for k in np.unique(n):
        if k <= 0:
            continue
        rows = np.flatnonzero(n == k)
        if rows.size == n.size:
            rows = slice(None)  # every row: index columns only, no copy of whole rows
        if k > max_count:
            cols = np.linspace(0, k - 1, max_count).round().astype(int)
            k = max_count
        else:
            cols = np.arange(k)
        lo, hi = (k - 1) // 2, k // 2
        part = np.partition(take(rows, cols), [lo, hi] if hi != lo else [lo], axis=1)
        out[rows] = 0.5 * (part[:, lo] + part[:, hi])
    return out


def _take(x: np.ndarray, rows, cols: np.ndarray) -> np.ndarray:
    """``x[rows][:, cols]`` without copying whole rows first."""
    return x[:, cols] if isinstance(rows, slice) else x[np.ix_(rows, cols)]


def _scan_block(f: np.ndarray, e: np.ndarray, cfg: ScanConfig):
    """Scan one block of sources; f, e NaN-padded 2-D. Returns per-row arrays."""
    # float32 fluxes, weights and cumulative sums: ~7 significant digits are
    # plenty for z ~ 1-100 and it halves the memory traffic that bounds the
    # speed. (The noise model in between, from sig2 on, is float64: mean_s2
    # divides by an integer count. The null calibration depends on it as is.)
    f, e = np.asarray(f, np.float32), np.asarray(e, np.float32)
    valid = np.isfinite(f) & np.isfinite(e) & (e > 0)
    if not valid.all():
        f, e = np.where(valid, f, np.nan), np.where(valid, e, np.nan)
    m, n_ep = f.shape
    fc, ec, order = compress_valid(f, e, valid)
    nv = valid.sum(axis=1)
    rows = np.arange(m)
    scanned = nv >= cfg.min_valid

    with np.errstate(invalid="ignore", divide="ignore"):
        med = _row_median(fc, nv)
        r = fc / med[:, None]
        s = ec / np.abs(med)[:, None]
        # Excess scatter, robustly from first differences (a slow dip barely
        # moves them): first an additive term in quadrature (an unmodelled
        # systematic the same at every epoch), then a common factor k.
        # The differences are computed only where the medians sample them.
        def abs_diff(rows, cols):
            return np.abs(_take(r, rows, cols + 1) - _take(r, rows, cols))

        def std_diff(rows, cols):
            return abs_diff(rows, cols) / np.sqrt(_take(sig2, rows, cols + 1) + _take(sig2, rows, cols))

        mad = _row_median(abs_diff, nv - 1, dtype=r.dtype) * _MAD_TO_SIGMA
        s2 = s**2
        # Means, not medians, of the quoted errors: they have no outliers and a
        # partition costs as much as the rest of the scan.
        mean_s2 = np.nansum(s2, axis=1) / np.maximum(nv, 1)
        extra2 = np.maximum(0.0, 0.5 * mad**2 - mean_s2)
        sig2 = s2 + extra2[:, None]
        k = _row_median(std_diff, nv - 1, dtype=np.result_type(r, sig2)) * _MAD_TO_SIGMA
        sig = np.sqrt(sig2)
        x = (r - 1.0) / (k[:, None] * sig)
        np.clip(x, -cfg.clip, cfg.clip, out=x)
        # Scale-free weights and values (see the module docstring): only the
        # clipping depends on k; z is invariant to a common error factor.
        s_ref = np.sqrt(np.nansum(sig2, axis=1) / np.maximum(nv, 1))
        sp = sig / s_ref[:, None]
        scale = k * np.sqrt((mean_s2 + extra2) / mean_s2)
    ok = np.isfinite(x) & np.isfinite(sp) & scanned[:, None]
    if ok.all():  # the usual case: the same values without the masking passes
        w = (1.0 / sp**2).astype(np.float32)
        a = (x / sp).astype(np.float32)
    else:
        w = np.where(ok, 1.0 / np.where(ok, sp, 1.0) ** 2, 0.0).astype(np.float32)
        a = np.where(ok, x / np.where(ok, sp, 1.0), 0.0).astype(np.float32)

    cw = np.zeros((m, n_ep + 1), np.float32)
    ca = np.zeros((m, n_ep + 1), np.float32)
    np.cumsum(w, axis=1, out=cw[:, 1:])
    np.cumsum(a, axis=1, out=ca[:, 1:])
    wtot = cw[:, -1:]
    mean_a = ca[:, -1:] / np.where(wtot > 0, wtot, 1)

    best = np.full(m, -np.inf, np.float32)
    b_start = np.zeros(m, int)
    b_len = np.zeros(m, int)
    partial = bool((nv < n_ep).any())
    max_len = (cfg.max_fraction * nv).astype(int)
    for length in cfg.lengths(int(nv.max()) if m else 0):
        step = max(1, round(length * cfg.step_fraction))
        hi = n_ep - length
        # z = (mean_a W_in - S_in) / sqrt(W_in W_out), in place: this loop is the hot spot.
        win = cw[:, length:n_ep + 1:step] - cw[:, 0:hi + 1:step]
        sin = ca[:, length:n_ep + 1:step] - ca[:, 0:hi + 1:step]
        z = np.multiply(mean_a, win)
        z -= sin
        np.subtract(wtot, win, out=sin)
        sin *= win
        with np.errstate(invalid="ignore", divide="ignore"):
            np.sqrt(sin, out=sin)
            z /= sin
        if partial:
            starts = np.arange(0, hi + 1, step)
            bad = (starts[None, :] + length > nv[:, None]) | (length > max_len)[:, None]
            z[bad] = -np.inf
            z[~np.isfinite(z)] = -np.inf
        # With every epoch valid, z is finite in every scanned row (argmax
        # would pick a NaN only in rows that are not scanned and get NaN anyway).
        j = np.argmax(z, axis=1)
        zj = z[rows, j]
        better = zj > best
        best[better] = zj[better]
        b_start[better] = j[better] * step
        b_len[better] = length
    score = best.astype(float) * np.sqrt(wtot[:, 0].astype(float))
    found = np.isfinite(score) & scanned
    score[~found] = np.nan

    # Depth from the unclipped normalised fluxes over the best window.
    fin = np.isfinite(r) & np.isfinite(s)
    if fin.all():
        wr = 1.0 / s**2
        wrr = wr * r
    else:
        wr = np.where(fin, 1.0 / np.where(fin, s, 1.0) ** 2, 0.0)
        wrr = wr * np.where(fin, r, 0.0)
    cwr = np.zeros((m, n_ep + 1), np.float32)
    crr = np.zeros((m, n_ep + 1), np.float32)
    np.cumsum(wr, axis=1, out=cwr[:, 1:])
    np.cumsum(wrr, axis=1, out=crr[:, 1:])
    b_stop = np.minimum(b_start + b_len, nv)
    w_in = cwr[rows, b_stop] - cwr[rows, b_start]
    s_in = crr[rows, b_stop] - crr[rows, b_start]
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_in = s_in / w_in
        mu_out = (crr[:, -1] - s_in) / (cwr[:, -1] - w_in)
        depth = 1.0 - mu_in / mu_out
    n_in = b_stop - b_start
    stop_c = b_start + b_len - 1
    if order is not None:
        start_o = order[rows, b_start]
        stop_o = order[rows, np.clip(stop_c, 0, n_ep - 1)]
    else:
        start_o, stop_o = b_start.copy(), stop_c.copy()
    start_o = np.where(found, start_o, -1)
    stop_o = np.where(found, stop_o, -1)
    depth[~found] = np.nan
    return score, start_o, stop_o, np.where(found, n_in, 0), depth, scale, nv


def scan_dips(flux, flux_err, *, config: ScanConfig = ScanConfig(), chunk: int | None = None,
              workers: int | None = None) -> DipScan:
    """Best dip window, its score and its false-alarm probability for every source.

    Parameters
    ----------
    flux, flux_err : array_like, shape (n_sources, n_epochs)
        Fluxes and 1-sigma errors (one unit), epochs in time order; NaN or
        masked marks a missing epoch. Uneven sampling is fine: windows are
        runs of consecutive valid epochs.
    config : ScanConfig
        The window grid and robustness settings.
    chunk : int, optional
        Sources per block: bounds memory to ~ chunk x n_epochs x 100 bytes per
        thread; default :func:`contimg.variability.default_chunk` (blocks that
        stay in cache). The results do not depend on it.
    workers : int, optional
        Threads scanning blocks at once (default
        :func:`contimg.variability.default_workers`); the results do not depend on it.

    Returns
    -------
    DipScan
    """
    f, e = _as_float_2d(flux), _as_float_2d(flux_err)
    if f.shape != e.shape:
        raise ValueError(f"flux {f.shape} and flux_err {e.shape} differ in shape; give one error per flux")
    parts = map_source_blocks(lambda fb, eb: _scan_block(fb, eb, config), (f, e), chunk, workers)
    if not parts:
        empty = np.zeros(0)
        return DipScan(empty, empty, empty.astype(int), empty.astype(int), empty.astype(int), empty, empty,
                       empty.astype(int))
    score, start, stop, n_in, depth, k, nv = (np.concatenate(c) for c in zip(*parts))
    fap = false_alarm_probability(score, nv, config=config)
    return DipScan(score, fap, start, stop, n_in, depth, k, nv)


# --------------------------------------------------------------------------- calibration


@functools.lru_cache(maxsize=256)
def null_scores(n_valid: int, config: ScanConfig = ScanConfig(), n_sim: int = _N_SIM) -> np.ndarray:
    """Scores of steady light curves with ``n_valid`` epochs, sorted (Monte-Carlo, fixed seed).

    The score is pivotal for a steady source (see the module docstring), so
    unit-SNR-free Gaussian light curves with equal errors stand for all of them.
    """
    rng = np.random.default_rng([_SEED, n_valid])
    sigma = 0.01
    out = []
    per = max(1, 2_000_000 // max(n_valid, 1))
    for i in range(0, n_sim, per):
        m = min(per, n_sim - i)
        f = 1.0 + sigma * rng.standard_normal((m, n_valid))
        out.append(_scan_block(f, np.full_like(f, sigma), config)[0])
    scores = np.concatenate(out)
    return np.sort(scores[np.isfinite(scores)])


def _calibration_grid(n_max: int) -> list[int]:
    grid = list(range(1, _EXACT_N_MAX + 1))
    g = float(_EXACT_N_MAX)
    while grid[-1] < n_max:
        g *= 1.1
        grid.append(int(math.ceil(g)))
    return grid


def _log_fap_exact(score: np.ndarray, n_valid: int, config: ScanConfig) -> np.ndarray:
    """log FAP at one calibrated N: empirical above the top 1 %, exponential tail below."""
    null = null_scores(n_valid, config)
    n_sim = null.size
    n_tail = max(20, int(_TAIL_FRACTION * n_sim))
    u0 = null[-n_tail]
    # The exponential scale is taken at its upper ~95 % bound (the MLE from
    # n_tail exceedances has a relative error 1/sqrt(n_tail)): the null tail
    # is close to exponential, slightly heavier (the excess scatter is
    # estimated from the data), so the plain MLE would under-estimate the FAP.
    beta = max(float(np.mean(null[-n_tail:] - u0)), 1e-6) * (1.0 + 2.0 / math.sqrt(n_tail))
    # (count + 1) / (n + 1): never zero, unbiased-conservative for an empirical p-value.
    count = n_sim - np.searchsorted(null, score, side="left")
    emp = np.log((count + 1.0) / (n_sim + 1.0))
    tail = np.log(n_tail / (n_sim + 1.0)) - (score - u0) / beta
    return np.where(score > u0, tail, emp)


def false_alarm_probability(score, n_valid, *, config: ScanConfig = ScanConfig()) -> np.ndarray:
    """Probability that a steady source with ``n_valid`` epochs scores at least ``score``.

    Parameters
    ----------
    score : array_like
        Scores from :func:`scan_dips` (NaN gives FAP 1).
    n_valid : array_like of int
        Valid epochs of each source (broadcast against ``score``).
    config : ScanConfig
        The configuration the scores were computed with.

    Returns
    -------
    ndarray
        FAP in (0, 1].
    """
    score = np.asarray(score, float)
    nv = np.broadcast_to(np.asarray(n_valid, int), score.shape)
    out = np.ones(score.shape)
    fin = np.isfinite(score) & (nv >= config.min_valid)
    if not fin.any():
        return out
    grid = np.array(_calibration_grid(int(nv[fin].max())))
    for n in np.unique(nv[fin]):
        sel = fin & (nv == n)
        sc = score[sel]
        if n <= _EXACT_N_MAX or n in grid:
            lf = _log_fap_exact(sc, int(n), config)
        else:
            hi = int(grid[np.searchsorted(grid, n)])
            lo = int(grid[np.searchsorted(grid, n) - 1])
            t = (math.log(n) - math.log(lo)) / (math.log(hi) - math.log(lo))
            lf = (1 - t) * _log_fap_exact(sc, lo, config) + t * _log_fap_exact(sc, hi, config)
        out[sel] = np.minimum(np.exp(lf), 1.0)
    return out


# --------------------------------------------------------------------------- candidates


def detect(flux, flux_err, time=None, source=None, *, fpr: float = DEFAULT_FPR,
           config: ScanConfig = ScanConfig(), scan: DipScan | None = None) -> list[Candidate]:
    """ESE candidates: sources whose best dip has a false-alarm probability <= ``fpr``.

    Parameters
    ----------
    flux, flux_err : array_like, shape (n_sources, n_epochs)
        Fluxes and errors, NaN for a missing epoch, epochs in time order.
    time : array_like, shape (n_epochs,) or (n_sources, n_epochs), optional
        Epoch times (e.g. MJD); default the epoch index.
    source : sequence of str, optional
        Source names; default the row index.
    fpr : float
        Target false-positive rate per steady source.
    config : ScanConfig
        The window grid.
    scan : DipScan, optional
        A scan already made with the same inputs (saves recomputing it).

    Returns
    -------
    list of Candidate
        Sorted by increasing FAP (most significant first).
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr={fpr} is not a probability; give e.g. 1e-4")
    sc = scan if scan is not None else scan_dips(flux, flux_err, config=config)
    n_src = sc.score.size
    f = np.atleast_2d(np.ma.filled(np.ma.asarray(flux, dtype=float), np.nan))
    if time is None:
        time = np.arange(f.shape[1], dtype=float)
    t = np.asarray(time, float)
    t2 = np.broadcast_to(t, f.shape) if t.ndim == 1 else t
    names = [str(i) for i in range(n_src)] if source is None else [str(s) for s in source]
    sig = sc.significance
    out = []
    for i in np.flatnonzero(sc.fap <= fpr):
        t0, t1 = float(t2[i, sc.start[i]]), float(t2[i, sc.stop[i]])
        reason = (f"dip {100 * sc.depth[i]:.0f}% deep over {int(sc.n_in[i])} epochs ({t0:g} to {t1:g}): "
                  f"z={sc.score[i]:.1f}, FAP {sc.fap[i]:.1e} for {int(sc.n_valid[i])} epochs"
                  f" (errors x{sc.scale[i]:.2f})")
        out.append(Candidate(names[i], float(sc.score[i]), float(sc.fap[i]), float(sig[i]),
                             float(sc.depth[i]), int(sc.n_in[i]), t0, t1, t1 - t0,
                             float(sc.scale[i]), reason))
    out.sort(key=lambda c: (c.fap, -c.score))
    return out


def candidates_table(cands: list[Candidate]):
    """The candidates as an astropy Table (print it, or ``write(..., format="ascii.ecsv")``).

    ``[c.as_dict() for c in cands]`` is the JSON form.
    """
    from astropy.table import Table

    names = list(Candidate.__dataclass_fields__)
    if not cands:
        dtypes = [str, float, float, float, float, int, float, float, float, float, str]
        return Table(names=names, dtype=dtypes)
    return Table(rows=[[getattr(c, k) for k in names] for c in cands], names=names)


# --------------------------------------------------------------------------- tables


def read_lightcurves(path) -> list[LightCurve]:
    """Read a light-curve table (CSV or ECSV) with columns source, time, flux, flux_err.

    Rows may come in any order; each source's epochs are sorted by time, and
    rows with a non-finite flux or a non-positive error are dropped (missing
    epochs). Extra columns are ignored.

    Raises
    ------
    BadLightCurveTable
        The file is missing or unreadable, or lacks a column.
    """
    from astropy.table import Table

    p = Path(path)
    if not p.is_file():
        raise BadLightCurveTable(f"light-curve table {p} does not exist; give a CSV or ECSV file")
    fmt = "ascii.ecsv" if p.suffix.lower() == ".ecsv" else "ascii.csv"
    try:
        tab = Table.read(p, format=fmt)
    except Exception as exc:  # astropy raises many kinds; the user needs the file name and the cause.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadLightCurveTable(f"cannot read light-curve table {p} as {fmt}: {first}") from None
    missing = [c for c in TABLE_COLUMNS if c not in tab.colnames]
    if missing:
        raise BadLightCurveTable(
            f"light-curve table {p} lacks column {', '.join(missing)}; "
            f"it needs {', '.join(TABLE_COLUMNS)} (has {', '.join(tab.colnames) or 'none'})")
    src = np.asarray(tab["source"]).astype(str)
    try:
        cols = [np.ma.filled(np.ma.asarray(tab[c], dtype=float), np.nan) for c in ("time", "flux", "flux_err")]
    except (TypeError, ValueError):
        raise BadLightCurveTable(f"light-curve table {p}: time, flux and flux_err must be numbers") from None
    t, f, e = cols
    good = np.isfinite(t) & np.isfinite(f) & np.isfinite(e) & (e > 0)
    src, t, f, e = src[good], t[good], f[good], e[good]
    order = np.lexsort((t, src))
    src, t, f, e = src[order], t[order], f[order], e[order]
    names, first = np.unique(src, return_index=True)
    bounds = list(first) + [src.size]
    return [LightCurve(str(names[k]), t[bounds[k]:bounds[k + 1]], f[bounds[k]:bounds[k + 1]],
                       e[bounds[k]:bounds[k + 1]]) for k in range(names.size)]


def pack_lightcurves(curves: list[LightCurve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NaN-padded 2-D time, flux and error arrays ``(n_sources, max_epochs)`` from light curves."""
    n = max((c.time.size for c in curves), default=0)
    shape = (len(curves), n)
    t, f, e = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for i, c in enumerate(curves):
        k = c.time.size
        t[i, :k], f[i, :k], e[i, :k] = c.time, c.flux, c.flux_err
    return t, f, e


def detect_table(path, *, fpr: float = DEFAULT_FPR, config: ScanConfig = ScanConfig()) -> list[Candidate]:
    """ESE candidates in a light-curve table (CSV or ECSV: source, time, flux, flux_err).

    Parameters
    ----------
    path : str or Path
        The table; any time unit (durations come out in it), any flux unit.
    fpr : float
        Target false-positive rate per steady source.
    config : ScanConfig
        The window grid.

    Returns
    -------
    list of Candidate
        Most significant first.
    """
    curves = read_lightcurves(path)
    t, f, e = pack_lightcurves(curves)
    return detect(f, e, t, [c.source for c in curves], fpr=fpr, config=config)


# --------------------------------------------------------------------------- plotting


def plot_candidate(lightcurve: LightCurve, candidate: Candidate, png_path) -> Path:
    """Plot a light curve with error bars and the detected dip window shaded.

    Parameters
    ----------
    lightcurve : LightCurve
        The source's light curve.
    candidate : Candidate
        Its candidate (from :func:`detect` or :func:`detect_table`).
    png_path : str or Path
        Where to write the PNG.

    Returns
    -------
    Path
        The written file.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    ax.errorbar(lightcurve.time, lightcurve.flux, yerr=lightcurve.flux_err, fmt="o", ms=3, lw=0.8,
                color="k", label="flux")
    ax.axvspan(candidate.start_time, candidate.end_time, color="tab:orange", alpha=0.25,
               label=f"dip {100 * candidate.depth:.0f}%")
    ax.set_xlabel("time")
    ax.set_ylabel("flux")
    ax.set_title(f"{candidate.source}: z={candidate.score:.1f}, FAP {candidate.fap:.1e}", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(png_path)
    fig.savefig(out, dpi=100)
    return out
