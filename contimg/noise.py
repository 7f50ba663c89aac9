"""The thermal noise a block image should reach (radiometer equation).

For Stokes I = (XX + YY) / 2 from linear feeds, each visibility of one
polarization has noise ``SEFD / sqrt(2 dnu dt)`` per real and imaginary part
(FIELD-NOTES §1). A naturally weighted image of N unflagged (baseline, time,
channel) samples then has

    sigma_nat = SEFD / sqrt(n_pol * 2 * N * dnu * dt),   n_pol = 2,

i.e. the familiar ``SEFD / sqrt(n_pol N_ant (N_ant - 1) Delta_nu t)`` for a
fully unflagged block (N_bl = N_ant (N_ant - 1) / 2 baselines, total
bandwidth Delta_nu, block length t). Any other weighting multiplies it by

    f_w = sqrt(sum(w_i^2 / n_i) * sum(n_i)) / sum(w_i)

with ``n_i`` the natural (data) weights and ``w_i`` the imaging weights
(:func:`weighting_noise_factor`, which recomputes Briggs weights the way
tclean does: gridded natural-weight density ``W_k`` on the image's uv cells,
``f^2 = (5 10^-R)^2 / (sum_k W_k^2 / sum_i n_i)``, ``w_i = n_i / (1 + W_k f^2)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import casa_env, mstables, telescope

N_POL_STOKES_I = 2
MAX_CHANNELS_PER_SPW = 4
"""Channels per spectral window used for the weighting factor (it changes slowly with frequency)."""


def radiometer_rms_jy(sefd_jy: float, n_samples: float, channel_width_hz: float, integration_s: float) -> float:
    """Natural-weighting Stokes I image noise of ``n_samples`` unflagged visibilities (Jy/beam)."""
    if n_samples <= 0:
        raise ValueError("no unflagged visibility: the image has no thermal noise estimate")
    return sefd_jy / math.sqrt(N_POL_STOKES_I * 2 * n_samples * channel_width_hz * integration_s)


def weighting_noise_factor(
    u_lambda: np.ndarray, v_lambda: np.ndarray, natural: np.ndarray, *, uv_cell: float, weighting: str,
    robust: float = 0.0,
) -> float:
    """Noise of the weighted image relative to natural weighting (>= 1).

    Parameters
    ----------
    u_lambda, v_lambda : array
        Sample coordinates in wavelengths.
    natural : array
        Data weights of the samples.
    uv_cell : float
        uv cell in wavelengths: 1 / (image side in radians).
    weighting : str
        natural, uniform or briggs (tclean's meaning).
    robust : float
        Briggs robust parameter.
    """
    natural = np.asarray(natural, dtype=float)
    if weighting == "natural":
        return 1.0
    # Both the sample and its Hermitian mirror fall on the grid.
    iu = np.round(np.concatenate([u_lambda, -u_lambda]) / uv_cell).astype(np.int64)
    iv = np.round(np.concatenate([v_lambda, -v_lambda]) / uv_cell).astype(np.int64)
    n2 = np.concatenate([natural, natural])
    _, cell_index = np.unique(np.stack([iu, iv]), axis=1, return_inverse=True)
    cell_index = cell_index.ravel()
    density = np.bincount(cell_index, weights=n2)[cell_index]
    if weighting == "uniform":
        w = n2 / density
    elif weighting == "briggs":
        f2 = (5 * 10 ** (-robust)) ** 2 / (np.sum(density * n2) / np.sum(n2))
        w = n2 / (1 + density * f2)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    return float(math.sqrt(np.sum(w**2 / n2) * np.sum(n2)) / np.sum(w))


@dataclass(frozen=True)
class NoiseExpectation:
    """The radiometer expectation of a block image and what it is made of."""

    rms_jy: float
    natural_rms_jy: float
    weighting_factor: float
    n_samples: int
    n_baselines: int
    channel_width_hz: float
    integration_s: float
    sefd_jy: float

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def expected_image_rms(
    ms: str | Path | list[str | Path], *, cell_arcsec: float, imsize: int, weighting: str, robust: float,
    sefd_jy: float = telescope.SEFD_JY,
) -> NoiseExpectation:
    """Radiometer noise of the Stokes I image of an MS (or of several imaged together) with the given settings.

    Counts the unflagged (XX and YY) cross-correlation samples, takes the
    channel width and integration time from the MS, and computes the
    weighting factor on a few channels per spectral window. A list of MSs (the
    subband MSs of a block, as WSClean images them) counts as their
    concatenation.
    """
    paths = [ms] if isinstance(ms, (str, Path)) else list(ms)
    parts = [_noise_samples(Path(p)) for p in paths]
    n_samples = sum(p["n_samples"] for p in parts)
    n_bl = len(set().union(*(p["baselines"] for p in parts)))
    chan_width = float(np.median([p["chan_width"] for p in parts]))
    dt = float(np.median([p["dt"] for p in parts]))
    natural_rms = radiometer_rms_jy(sefd_jy, n_samples, chan_width, dt)
    uv_cell = 1.0 / (imsize * math.radians(cell_arcsec / 3600))
    factor = weighting_noise_factor(
        np.concatenate([u for p in parts for u in p["u"]]), np.concatenate([v for p in parts for v in p["v"]]),
        np.concatenate([w for p in parts for w in p["w"]]), uv_cell=uv_cell, weighting=weighting, robust=robust,
    )
    return NoiseExpectation(
        rms_jy=natural_rms * factor, natural_rms_jy=natural_rms, weighting_factor=factor, n_samples=n_samples,
        n_baselines=n_bl, channel_width_hz=chan_width, integration_s=dt, sefd_jy=sefd_jy,
    )


def _noise_samples(ms: Path) -> dict:
    """Unflagged Stokes I samples of one MS and the (u, v, weight) of a few channels per window."""
    tb = casa_env.casatools().table()
    tb.open(str(ms))
    try:
        cross = tb.getcol("ANTENNA1") != tb.getcol("ANTENNA2")
        ok_row = cross & ~tb.getcol("FLAG_ROW")
        ddid = tb.getcol("DATA_DESC_ID")
        uvw = tb.getcol("UVW")
        weight = tb.getcol("WEIGHT").mean(axis=0)
        dt = float(np.median(tb.getcol("EXPOSURE")))
        flag = tb.getcol("FLAG")  # (pol, chan, row)
        a1, a2 = tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2")
    finally:
        tb.close()
    spws = mstables.spectral_windows(ms)
    spw_of_ddid, chan_freq = spws.spw_of_ddid, spws.chan_freq
    chan_width = float(np.median(np.abs(np.concatenate(spws.chan_width))))

    good = ~flag[0] & ~flag[-1] & ok_row[None, :]  # XX and YY: both make Stokes I
    us, vs, ws = [], [], []
    for d in np.unique(ddid):
        freqs = chan_freq[spw_of_ddid[d]]
        pick = np.unique(np.linspace(0, len(freqs) - 1, min(len(freqs), MAX_CHANNELS_PER_SPW)).round().astype(int))
        rows = ddid == d
        for c in pick:
            sel = rows & good[c]
            lam = telescope.C_M_S / freqs[c]
            us.append(uvw[0, sel] / lam)
            vs.append(uvw[1, sel] / lam)
            ws.append(weight[sel])
    return dict(
        n_samples=int(good.sum()), baselines={(int(x), int(y)) for x, y, ok in zip(a1, a2, ok_row) if ok},
        chan_width=chan_width, dt=dt, u=us, v=vs, w=ws,
    )
