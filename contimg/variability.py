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

from dataclasses import dataclass

import numpy as np
from scipy import stats as _stats

# Thresholds commonly used for the two-epoch statistics (e.g. Mooley et al. 2016).
VS_THRESHOLD = 4.3
M_THRESHOLD = 0.26


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


def variability_stats(flux, flux_err, *, chunk: int = 1024) -> VariabilityStats:
    """eta, V, chi-square and the largest consecutive two-epoch Vs / m of every source.

    Parameters
    ----------
    flux, flux_err : array_like, shape (n_sources, n_epochs)
        Flux densities and 1-sigma errors, epochs in time order; NaN or masked
        marks a missing epoch (each source uses its own valid epochs).
    chunk : int
        Sources per block (bounds memory and keeps blocks in cache).

    Returns
    -------
    VariabilityStats
    """
    f = np.atleast_2d(np.ma.filled(np.ma.asarray(flux), np.nan))
    e = np.atleast_2d(np.ma.filled(np.ma.asarray(flux_err), np.nan))
    if f.shape != e.shape:
        raise ValueError(f"flux {f.shape} and flux_err {e.shape} differ in shape; give one error per flux")
    parts = [_stats_block(f[i:i + chunk], e[i:i + chunk]) for i in range(0, f.shape[0], chunk)]
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
    w = 1.0 / (e * e)
    sw = w.sum(axis=1, dtype=np.float64)
    wmean = (w * f).sum(axis=1, dtype=np.float64) / sw
    dev = f - wmean[:, None].astype(f.dtype)
    chi2 = (w * dev * dev).sum(axis=1, dtype=np.float64)
    mean = f.mean(axis=1, dtype=np.float64)
    dev = f - mean[:, None].astype(f.dtype)
    v = np.sqrt((dev * dev).sum(axis=1, dtype=np.float64) / (n - 1)) / mean
    eta = chi2 / (n - 1)
    chi2_p = _stats.chi2.sf(chi2, max(n - 1, 1))
    vs, m = two_epoch(f[:, 1:], e[:, 1:], f[:, :-1], e[:, :-1])
    j = np.argmax(np.abs(vs), axis=1)
    rows = np.arange(n_src)
    nn = np.full(n_src, n)
    if n < 2:
        nan = np.full(n_src, np.nan)
        return nn, nan, nan, nan, nan, nan, nan, nan
    return nn, wmean, eta, chi2, chi2_p, v, vs[rows, j].astype(float), m[rows, j].astype(float)


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
