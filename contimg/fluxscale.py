"""Relative flux calibration of a block from many steady, bright reference sources.

Each block's gain error (calibration transfer, elevation, a drifting system
temperature) multiplies every source in it alike. With the forced fluxes
``m_i`` of the reference sources in the block and their catalogue fluxes
``c_i``, the block's scale is a robust weighted mean of the ratios
``r_i = m_i / c_i``; dividing every flux of the block by it removes the
common error (FIELD-NOTES §2: peers reach 1-2 % relative precision).

The estimator (:func:`robust_scale`):

1. errors ``s_i = r_i sqrt((e_i/m_i)^2 + (ec_i/c_i)^2)``;
2. a Huber M-estimate of the location (tuning constant 1.345: 95 %
   efficiency for Gaussian ratios) by iteratively reweighted least squares,
   starting from the median, with the residuals standardised by
   ``k s_i``, ``k`` the robust (1.4826 MAD) dispersion of ``(r_i - mu)/s_i``
   floored at 1 (ratios cannot scatter less than their errors): a variable
   source, a blend or a bad pixel among the references pulls it only by a
   bounded amount;
3. references beyond ``clip_sigma`` standardised residuals are rejected
   (counted and named, so the scale can be audited), and the scale is the
   inverse-variance weighted mean of the rest;
4. its error is ``k_final / sqrt(sum 1/s_i^2)`` over the kept references,
   ``k_final = max(1, sqrt(reduced chi-square))``: excess scatter among the
   references (e.g. a pb model error that varies across the field) widens it.

Pure numpy; no database.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

HUBER_C = 1.345
MAD_TO_SIGMA = 1.4826
METHOD = "huber-irls+clip"


@dataclass(frozen=True)
class FluxScale:
    """The flux scale of one block and how it was obtained."""

    scale: float
    """Measured / catalogue flux of the references: divide the block's fluxes by it (1.0 when not determined)."""
    scale_err: float
    """1-sigma error of ``scale`` (NaN when not determined)."""
    n_references: int
    """References offered (finite, positive fluxes and errors)."""
    n_used: int
    """References kept after the outlier rejection."""
    n_rejected: int
    rejected: list[int] = field(default_factory=list)
    """Indices (into the inputs) of rejected references."""
    dispersion: float = math.nan
    """Robust dispersion k of the standardised ratios (1 = as the errors predict)."""
    determined: bool = False
    """False when fewer than ``min_refs`` references were usable."""
    method: str = METHOD

    def as_dict(self) -> dict:
        return asdict(self)


def robust_scale(measured, measured_err, catalogue, catalogue_err=None, *, clip_sigma: float = 3.0,
                 min_refs: int = 5, max_iter: int = 50) -> FluxScale:
    """Robust relative flux scale from reference sources (see the module docstring).

    Parameters
    ----------
    measured, measured_err : array_like
        Forced fluxes of the references in this block and their errors (Jy).
    catalogue, catalogue_err : array_like
        Their catalogue fluxes and errors (Jy); errors default to 0.
    clip_sigma : float
        Rejection threshold in robust standardised residuals.
    min_refs : int
        Fewer usable references than this: scale 1, ``determined`` False.

    Returns
    -------
    FluxScale
    """
    m = np.asarray(measured, float)
    em = np.asarray(measured_err, float)
    c = np.asarray(catalogue, float)
    ec = np.zeros_like(c) if catalogue_err is None else np.nan_to_num(np.asarray(catalogue_err, float), nan=0.0)
    ok = np.isfinite(m) & np.isfinite(em) & (em > 0) & np.isfinite(c) & (c > 0) & (m > 0)
    idx = np.flatnonzero(ok)
    n = idx.size
    if n < max(min_refs, 1):
        return FluxScale(1.0, math.nan, n, 0, 0, [], math.nan, False)
    r = m[idx] / c[idx]
    s = r * np.sqrt((em[idx] / m[idx]) ** 2 + (ec[idx] / c[idx]) ** 2)

    mu = float(np.median(r))
    k = 1.0
    for _ in range(max_iter):
        u = (r - mu) / s
        k = max(1.0, MAD_TO_SIGMA * float(np.median(np.abs(u - np.median(u)))))
        z = np.abs(u) / k
        w = np.where(z <= HUBER_C, 1.0, HUBER_C / np.maximum(z, 1e-300)) / s**2
        new = float(np.sum(w * r) / np.sum(w))
        if abs(new - mu) <= 1e-10 * abs(mu):
            mu = new
            break
        mu = new
    keep = np.abs(r - mu) / (k * s) <= clip_sigma
    if keep.sum() < max(min_refs, 1):
        return FluxScale(1.0, math.nan, n, int(keep.sum()), int((~keep).sum()), idx[~keep].tolist(), k, False)
    w = 1.0 / s[keep] ** 2
    scale = float(np.sum(w * r[keep]) / np.sum(w))
    dof = max(int(keep.sum()) - 1, 1)
    chi2 = float(np.sum(w * (r[keep] - scale) ** 2))
    k_final = max(1.0, math.sqrt(chi2 / dof))
    scale_err = k_final / math.sqrt(float(np.sum(w)))
    return FluxScale(scale, scale_err, n, int(keep.sum()), int((~keep).sum()), idx[~keep].tolist(), k, True)


def apply_scale(flux, flux_err, scale: FluxScale) -> tuple[np.ndarray, np.ndarray]:
    """Fluxes divided by the scale; errors with the scale's error in quadrature.

    ``err' = sqrt((err/g)^2 + (flux/g * err_g/g)^2)``: the scale's error is a
    per-block error common to every source of the block, independent between
    blocks, so in a light curve it adds to each epoch's error.
    """
    f = np.asarray(flux, float)
    e = np.asarray(flux_err, float)
    if not scale.determined:
        return f.copy(), e.copy()
    g, eg = scale.scale, scale.scale_err
    return f / g, np.sqrt((e / g) ** 2 + (f / g * eg / g) ** 2)
