"""Variability statistics of light curves, for many sources at once.

Light curves are 2-D arrays ``(n_sources, n_epochs)`` of flux densities and
their 1-sigma errors (any one unit, e.g. Jy). A missing epoch is NaN (or
masked, for a ``numpy.ma`` array) in the flux or the error; each source uses
only its own valid epochs. The definitions follow docs/ese.md (and
FIELD-NOTES §2), for N valid fluxes ``I_i`` with errors ``s_i`` and weights
``w_i = 1 / s_i**2``:

- ``eta = N/(N-1) * (mean(w I^2) - mean(w I)^2 / mean(w))``, the weighted
  reduced chi-square about the weighted mean; ``chi2 = (N-1) * eta`` follows a
  chi-square law with N-1 degrees of freedom for a steady source with correct
  errors, which gives ``chi2_p``.
- ``V = std(I, ddof=1) / mean(I)``.
- two-epoch ``Vs = (I_a - I_b) / sqrt(s_a^2 + s_b^2)`` and
  ``m = 2 (I_a - I_b) / (I_a + I_b)`` (:func:`two_epoch`).

All functions are pure and vectorised over sources.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import stats as _stats

# Thresholds commonly used for the two-epoch statistics (e.g. Mooley et al. 2016).
VS_THRESHOLD = 4.3
M_THRESHOLD = 0.26

# Default threads for source blocks: every core, but at most 8, because each
# thread holds a block's temporaries (~100 bytes per flux for the dip scan).
MAX_DEFAULT_WORKERS = 8


# Default fluxes per block of sources: 256 000 (1 MB in float32), so that a
# block's temporaries stay in the per-core cache (2 MB L2 on the 2-core
# machine: the scan ran ~1.6x faster than with 512 000-flux blocks).
BLOCK_FLUXES = 256_000


def default_chunk(n_epochs: int) -> int:
    """Sources per block by default: ``BLOCK_FLUXES // n_epochs`` (at least 1)."""
    return max(1, BLOCK_FLUXES // max(1, int(n_epochs)))


def default_workers() -> int:
    """Threads used by default for source blocks: the usable cores, at most ``MAX_DEFAULT_WORKERS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


def map_source_blocks(func, arrays, chunk: int | None = None, workers: int | None = None) -> list:
    """``func`` on consecutive blocks of ``chunk`` sources (rows), results in block order.

    Blocks run in ``workers`` threads: numpy releases the GIL inside its array
    loops, so threads use several cores without copying the inputs. Each block
    is computed the same way whatever the thread count, so results do not
    depend on it.

    Parameters
    ----------
    func : callable
        ``func(*blocks)`` with one row block of each array.
    arrays : sequence of ndarray
        Arrays with sources along the first axis (same length).
    chunk : int or None
        Sources per block (bounds memory per thread and keeps blocks in
        cache); None for :func:`default_chunk` of the arrays' second axis.
    workers : int, optional
        Threads; default :func:`default_workers`. 1 runs in the calling thread.

    Returns
    -------
    list
        ``func``'s result for each block.
    """
    n = arrays[0].shape[0]
    if chunk is None:
        chunk = default_chunk(arrays[0].shape[1] if arrays[0].ndim > 1 else 1)
    chunk = max(1, int(chunk))
    starts = range(0, n, chunk)
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(starts) < 2:
        return [func(*(a[i:i + chunk] for a in arrays)) for i in starts]
    with ThreadPoolExecutor(max_workers=min(workers, len(starts))) as pool:
        return list(pool.map(lambda i: func(*(a[i:i + chunk] for a in arrays)), starts))


def as_nan_arrays(flux, flux_err) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float 2-D copies of flux and error with NaN wherever an epoch is missing.

    Parameters
    ----------
    flux, flux_err : array_like, shape (n_sources, n_epochs) or (n_epochs,)
        Flux densities and 1-sigma errors; NaN or masked marks a missing epoch.
        A non-positive or non-finite error also marks the epoch missing.

    Returns
    -------
    flux, flux_err : ndarray, shape (n_sources, n_epochs)
    valid : ndarray of bool, same shape
    """
    f = np.ma.filled(np.ma.asarray(flux, dtype=float), np.nan)
    e = np.ma.filled(np.ma.asarray(flux_err, dtype=float), np.nan)
    f, e = np.atleast_2d(f), np.atleast_2d(e)
    if f.shape != e.shape:
        raise ValueError(f"flux {f.shape} and flux_err {e.shape} differ in shape; give one error per flux")
    valid = np.isfinite(f) & np.isfinite(e) & (e > 0)
    f = np.where(valid, f, np.nan)
    e = np.where(valid, e, np.nan)
    return f, e, valid


@dataclass(frozen=True)
class VariabilityStats:
    """Per-source statistics; every field is an array of shape (n_sources,).

    A source with fewer than 2 valid epochs has NaN statistics.
    """

    n_epochs: np.ndarray
    """Number of valid epochs N."""
    weighted_mean: np.ndarray
    """Inverse-variance weighted mean flux (flux unit)."""
    eta: np.ndarray
    """Weighted reduced chi-square about the weighted mean (dimensionless)."""
    chi2: np.ndarray
    """``(N-1) * eta``: chi-square about the weighted mean."""
    chi2_p: np.ndarray
    """Probability of a chi-square at least this large for a steady source with correct errors."""
    v: np.ndarray
    """Coefficient of variation ``std(ddof=1) / mean``."""
    vs_max: np.ndarray
    """The two-epoch Vs of largest modulus among consecutive valid epochs (signed)."""
    m_at_vs_max: np.ndarray
    """The two-epoch modulation index m of that same pair."""

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def two_epoch(flux_a, err_a, flux_b, err_b) -> tuple[np.ndarray, np.ndarray]:
    """Two-epoch variability statistics, element-wise.

    Parameters
    ----------
    flux_a, err_a, flux_b, err_b : array_like
        Fluxes and 1-sigma errors at epochs a and b (one flux unit), broadcastable.

    Returns
    -------
    vs : ndarray
        ``(I_a - I_b) / sqrt(s_a^2 + s_b^2)``: the difference in units of its error.
    m : ndarray
        ``2 (I_a - I_b) / (I_a + I_b)``: the fractional modulation.
    """
    fa, fb = np.asarray(flux_a, float), np.asarray(flux_b, float)
    ea, eb = np.asarray(err_a, float), np.asarray(err_b, float)
    diff = fa - fb
    with np.errstate(invalid="ignore", divide="ignore"):
        return diff / np.hypot(ea, eb), 2.0 * diff / (fa + fb)


def variability_stats(flux, flux_err, *, chunk: int | None = None, workers: int | None = None) -> VariabilityStats:
    """eta, V, chi-square and the largest consecutive two-epoch Vs / m of every source.

    Parameters
    ----------
    flux, flux_err : array_like, shape (n_sources, n_epochs)
        Flux densities and 1-sigma errors, epochs in time order; NaN or masked
        marks a missing epoch (each source uses its own valid epochs).
    chunk : int, optional
        Sources per block (bounds memory and keeps blocks in cache); default
        :func:`default_chunk`. The results do not depend on it.
    workers : int, optional
        Threads working on blocks at once (default :func:`default_workers`);
        the results do not depend on it.

    Returns
    -------
    VariabilityStats
    """
    f = np.atleast_2d(np.ma.filled(np.ma.asarray(flux), np.nan))
    e = np.atleast_2d(np.ma.filled(np.ma.asarray(flux_err), np.nan))
    if f.shape != e.shape:
        raise ValueError(f"flux {f.shape} and flux_err {e.shape} differ in shape; give one error per flux")
    parts = map_source_blocks(_stats_block, (f, e), chunk, workers)
    if not parts:
        z = np.zeros(0)
        return VariabilityStats(z.astype(int), z, z, z, z, z, z, z)
    return VariabilityStats(*(np.concatenate(c) for c in zip(*parts)))


def _stats_block(flux, flux_err) -> tuple:
    fa, ea = np.asarray(flux), np.asarray(flux_err)
    if fa.dtype.kind == "f" and np.isfinite(fa).all() and np.isfinite(ea).all() and (ea > 0).all():
        return _stats_block_complete(fa, ea)
    f, e, valid = as_nan_arrays(flux, flux_err)
    n = valid.sum(axis=1)
    f0 = np.where(valid, f, 0.0)
    w = np.where(valid, 1.0 / np.where(valid, e, 1.0) ** 2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sw = w.sum(axis=1)
        wmean = (w * f0).sum(axis=1) / sw
        # The centred form sum w (I - mean)^2 equals the FIELD-NOTES formula
        # N/(N-1) (mean(wI^2) - mean(wI)^2/mean(w)) but does not lose digits to
        # cancellation at high SNR (the two terms agree to ~1/SNR^2).
        resid = np.where(valid, f0 - wmean[:, None], 0.0)
        chi2 = (w * resid**2).sum(axis=1)
        dof = n - 1
        eta = chi2 / dof
        mean = f0.sum(axis=1) / n
        dev = np.where(valid, f0 - mean[:, None], 0.0)
        v = np.sqrt((dev**2).sum(axis=1) / dof) / mean
    chi2_p = _stats.chi2.sf(chi2, np.maximum(dof, 1))
    few = n < 2
    for arr in (wmean, chi2, eta, v, chi2_p):
        arr[few] = np.nan
    vs_max, m_max = _max_consecutive_two_epoch(f, e, valid)
    return n, wmean, eta, chi2, chi2_p, v, vs_max, m_max


def _stats_block_complete(f: np.ndarray, e: np.ndarray) -> tuple:
    """The same statistics when every epoch is valid: no masking, input precision kept."""
    n_src, n = f.shape
    nn = np.full(n_src, n)
    if n < 2:
        nan = np.full(n_src, np.nan)
        return nn, nan, nan, nan, nan, nan, nan, nan
    w = 1.0 / (e * e)
    sw = w.sum(axis=1, dtype=np.float64)
    wmean = (w * f).sum(axis=1, dtype=np.float64) / sw
    dev = f - wmean[:, None].astype(f.dtype)
    chi2 = (w * dev * dev).sum(axis=1, dtype=np.float64)
    mean = f.mean(axis=1, dtype=np.float64)
    dev = f - mean[:, None].astype(f.dtype)
    v = np.sqrt((dev * dev).sum(axis=1, dtype=np.float64) / (n - 1)) / mean
    eta = chi2 / (n - 1)
    chi2_p = _stats.chi2.sf(chi2, n - 1)
    j = _argmax_abs_vs(f, e)
    rows = np.arange(n_src)
    # Vs and m of the chosen pair only, with the same arithmetic as two_epoch on every pair.
    vs, m = two_epoch(f[rows, j + 1], e[rows, j + 1], f[rows, j], e[rows, j])
    return nn, wmean, eta, chi2, chi2_p, v, vs, m


def _argmax_abs_vs(f: np.ndarray, e: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Per row, the consecutive pair j (epochs j, j+1) of largest abs(Vs); every entry finite.

    The same index as ``np.argmax(abs(two_epoch(f[:, 1:], e[:, 1:], f[:, :-1], e[:, :-1])[0]), axis=1)``
    (first one on ties), at about a third of the cost: ``np.hypot`` on every
    pair dominated the statistics. Pairs are ranked by ``Vs^2 = d^2 / (s_a^2 + s_b^2)``
    in float64 (no hypot, no square root); that agrees with abs(Vs) to a few
    1e-16, so only rows where another pair comes within ``rtol`` of the best
    (ties, in practice) are re-ranked with the exact Vs, and so are rows where
    the squares overflow or lose precision (errors below ~1e-150).
    """
    d = np.subtract(f[:, 1:], f[:, :-1], dtype=np.float64)
    vs2 = np.multiply(d, d, out=d)
    den = np.square(e[:, 1:], dtype=np.float64)
    den += np.square(e[:, :-1], dtype=np.float64)
    vs2 /= den
    j = np.argmax(vs2, axis=1)
    top = vs2[np.arange(f.shape[0]), j]
    close = np.count_nonzero(vs2 >= (top * (1.0 - rtol))[:, None], axis=1) > 1
    close |= ~np.isfinite(top) | (den.min(axis=1) < 1e-300)
    if close.any():
        fr, er = f[close], e[close]
        vs, _ = two_epoch(fr[:, 1:], er[:, 1:], fr[:, :-1], er[:, :-1])
        j[close] = np.argmax(np.abs(vs), axis=1)
    return j


def _max_consecutive_two_epoch(f, e, valid) -> tuple[np.ndarray, np.ndarray]:
    """Vs and m of the consecutive valid pair with the largest |Vs|, per row."""
    n_src, n_ep = f.shape
    fc, ec, _ = compress_valid(f, e, valid)
    vs, m = two_epoch(fc[:, 1:], ec[:, 1:], fc[:, :-1], ec[:, :-1])
    absvs = np.where(np.isfinite(vs), np.abs(vs), -1.0)
    if n_ep < 2:
        return np.full(n_src, np.nan), np.full(n_src, np.nan)
    j = np.argmax(absvs, axis=1)
    rows = np.arange(n_src)
    best_vs, best_m = vs[rows, j], m[rows, j]
    none = absvs[rows, j] < 0
    best_vs[none] = np.nan
    best_m[none] = np.nan
    # Report the later-minus-earlier difference so a dimming is negative.
    return best_vs, best_m


def compress_valid(f: np.ndarray, e: np.ndarray, valid: np.ndarray):
    """Move each row's valid epochs to the front, keeping their order.

    Returns
    -------
    f, e : ndarray
        Reordered copies (NaN after the valid epochs).
    order : ndarray of int or None
        ``order[i, k]`` is the original epoch index of compressed epoch k of row
        i; None when every epoch is valid (no reordering was needed).
    """
    if valid.all():
        return f, e, None
    order = np.argsort(~valid, axis=1, kind="stable")
    return np.take_along_axis(f, order, 1), np.take_along_axis(e, order, 1), order


def relative_calibration(flux, reference) -> np.ndarray:
    """Per-epoch gain factors from steady reference sources (relative photometry).

    Each epoch's factor is the median over the reference sources of the ratio
    of their flux to their own median flux; dividing every source's flux (and
    error) by it removes gain errors common to all sources.

    Parameters
    ----------
    flux : array_like, shape (n_sources, n_epochs)
        Fluxes; NaN marks a missing epoch.
    reference : array_like of bool or int, shape (n_sources,) or (n_ref,)
        Mask or indices of bright, steady reference sources.

    Returns
    -------
    gain : ndarray, shape (n_epochs,)
        Divide fluxes and errors by it (1.0 where no reference is valid).
    """
    f = np.atleast_2d(np.ma.filled(np.ma.asarray(flux, dtype=float), np.nan))
    ref = f[np.asarray(reference)]
    if ref.size == 0:
        raise ValueError("relative_calibration: no reference sources given; pass bright steady sources")
    ratio = ref / np.nanmedian(ref, axis=1, keepdims=True)
    gain = np.nanmedian(ratio, axis=0)
    return np.where(np.isfinite(gain), gain, 1.0)
