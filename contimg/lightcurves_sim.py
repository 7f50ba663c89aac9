"""Simulated light curves of steady sources and Extreme Scattering Events.

Used to measure the ESE detector (:mod:`contimg.ese`): its recall on injected
dips and its false-positive rate on steady sources. What a light curve gets:

- a source flux (1 Jy; every quantity is relative) and a per-source SNR,
  log-uniform between ``snr_min`` and ``snr_max``; each epoch's SNR scatters
  about it (lognormal, ``snr_epoch_spread``) as beam position and flagging
  change, and the quoted error is ``flux / SNR_epoch`` (thermal only);
- a gain error per epoch common to all sources (``common_sys``, ~1 %), removed
  by relative calibration on the bright steady sources as the pipeline does
  (:func:`contimg.variability.relative_calibration`), which leaves a small
  residual; plus a per-source, per-epoch residual systematic
  (``residual_sys``) that is NOT in the quoted error, as real photometry has;
- missing epochs at random (``missing_fraction``; NaN flux and error);
- for ESE sources, a dip of fractional depth ``depth`` lasting ``duration``
  epochs, of one of three shapes: ``"caustic"`` (U shape with brief
  brightenings just before and after), ``"u"`` (U shape, no spikes),
  ``"box"`` (flat-bottomed plain dip with sharp edges).

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contimg.variability import relative_calibration

SHAPES = ("caustic", "u", "box")


@dataclass(frozen=True)
class SimulatedLightCurves:
    """A simulated set of light curves and its truth.

    Arrays have shape (n_sources, n_epochs) or (n_sources,); ESE truth fields
    are NaN / "" for steady sources.
    """

    time: np.ndarray
    """Epoch times (days), shape (n_epochs,)."""
    flux: np.ndarray
    """Calibrated fluxes (Jy; true mean 1 Jy); NaN for a missing epoch."""
    flux_err: np.ndarray
    """Quoted 1-sigma errors (Jy); NaN for a missing epoch."""
    source: np.ndarray
    """Source names (str)."""
    snr: np.ndarray
    """Per-source nominal SNR."""
    is_ese: np.ndarray
    """True for sources with an injected dip."""
    depth: np.ndarray
    """Fractional dip depth (0.1 = 10 %)."""
    duration: np.ndarray
    """Dip duration (epochs)."""
    start: np.ndarray
    """First epoch index of the dip (int; -1 for steady sources)."""
    shape: np.ndarray
    """Dip shape, one of SHAPES, or "" for steady sources."""


def dip_profile(n_epochs: int, start: float, duration: float, depth: float, shape: str,
                spike: float = 0.0) -> np.ndarray:
    """Multiplicative flux profile of one dip (1.0 outside it).

    Parameters
    ----------
    n_epochs : int
        Length of the light curve (epochs).
    start, duration : float
        First epoch of the dip and its length (epochs).
    depth : float
        Fractional depth at the bottom (0.3 = 30 % dimmer).
    shape : {"caustic", "u", "box"}
        U shape (steep walls, rounded flat bottom) with or without caustic
        spikes, or a flat box.
    spike : float
        Fractional height of each caustic spike (``"caustic"`` only).
    """
    t = np.arange(n_epochs, dtype=float)
    centre = start + (duration - 1) / 2.0
    half = duration / 2.0
    u = (t - centre) / half
    if shape == "box":
        prof = np.where(np.abs(u) < 1.0, 1.0, 0.0)
    elif shape in ("u", "caustic"):
        # |u|^4 gives steep walls and a flat-ish bottom: the classic U.
        prof = np.clip(1.0 - np.abs(u) ** 4, 0.0, None)
    else:
        raise ValueError(f"unknown dip shape {shape!r}; use one of {SHAPES}")
    out = 1.0 - depth * prof
    if shape == "caustic" and spike:
        # Brief brightenings just outside the two walls, about one epoch wide.
        for edge in (start - 1.0, start + duration):
            out += spike * np.exp(-0.5 * ((t - edge) / 0.7) ** 2)
    return out


def simulate_lightcurves(
    n_steady: int = 2000,
    n_ese: int = 500,
    n_epochs: int = 60,
    *,
    seed: int = 20251005,
    cadence_days: float = 1.0,
    snr_min: float = 10.0,
    snr_max: float = 1000.0,
    snr_epoch_spread: float = 0.2,
    common_sys: float = 0.01,
    residual_sys: float = 0.003,
    missing_fraction: float = 0.03,
    depth_range: tuple[float, float] = (0.10, 0.50),
    duration_range: tuple[int, int] = (5, 40),
    spike_range: tuple[float, float] = (0.05, 0.20),
    reference_snr: float = 100.0,
) -> SimulatedLightCurves:
    """Simulate steady and ESE light curves (see the module docstring).

    Parameters
    ----------
    n_steady, n_ese : int
        Numbers of steady sources and of sources with one injected dip.
    n_epochs : int
        Epochs per light curve, ``cadence_days`` apart.
    seed : int
        Seed of the random generator (the same seed gives the same light curves).
    snr_min, snr_max : float
        Range of the per-source SNR (log-uniform).
    snr_epoch_spread : float
        Lognormal sigma of each epoch's SNR about the source's.
    common_sys : float
        Fractional gain error per epoch common to all sources, before relative calibration.
    residual_sys : float
        Fractional per-source, per-epoch error not included in ``flux_err``.
    missing_fraction : float
        Fraction of epochs dropped at random (NaN).
    depth_range, duration_range, spike_range : tuple
        Uniform ranges of dip depth (fraction), duration (epochs, inclusive
        integers) and caustic-spike height (fraction).
    reference_snr : float
        Sources above this SNR serve as relative-calibration references.

    Returns
    -------
    SimulatedLightCurves
    """
    rng = np.random.default_rng(seed)
    n = n_steady + n_ese
    time = np.arange(n_epochs) * cadence_days
    snr = np.exp(rng.uniform(np.log(snr_min), np.log(snr_max), n))
    is_ese = np.zeros(n, bool)
    is_ese[rng.permutation(n)[:n_ese]] = True

    truth_depth = np.full(n, np.nan)
    truth_dur = np.full(n, np.nan)
    truth_start = np.full(n, -1, int)
    truth_shape = np.full(n, "", dtype="<U7")
    model = np.ones((n, n_epochs))
    for i in np.flatnonzero(is_ese):
        dur = int(rng.integers(duration_range[0], duration_range[1] + 1))
        # Keep a few epochs of baseline on at least one side of the dip.
        start = int(rng.integers(1, max(2, n_epochs - dur)))
        depth = rng.uniform(*depth_range)
        shape = SHAPES[rng.integers(len(SHAPES))]
        spike = rng.uniform(*spike_range)
        model[i] = dip_profile(n_epochs, start, dur, depth, shape, spike)
        truth_depth[i], truth_dur[i], truth_start[i], truth_shape[i] = depth, dur, start, shape

    snr_ep = snr[:, None] * np.exp(rng.normal(0.0, snr_epoch_spread, (n, n_epochs)))
    gain = 1.0 + rng.normal(0.0, common_sys, n_epochs)
    resid = 1.0 + rng.normal(0.0, residual_sys, (n, n_epochs))
    true = model * resid
    # Thermal noise: constant in Jy, so it does not shrink inside a dip.
    err_true = 1.0 / snr_ep
    raw = (true + rng.normal(0.0, 1.0, (n, n_epochs)) * err_true) * gain
    raw_err = err_true * gain
    missing = rng.random((n, n_epochs)) < missing_fraction
    raw[missing] = np.nan
    raw_err[missing] = np.nan

    ref = snr > reference_snr
    g = relative_calibration(raw, ref)
    flux, flux_err = raw / g, raw_err / g
    names = np.array([f"SIM{i:05d}" for i in range(n)])
    return SimulatedLightCurves(time, flux, flux_err, names, snr, is_ese, truth_depth, truth_dur,
                                truth_start, truth_shape)
