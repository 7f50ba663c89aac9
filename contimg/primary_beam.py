"""The effective primary beam of a block image.

A DSA-110 dish is fixed at the meridian, so during a 309 s block the sky
drifts through the beam (about 45 arcmin at dec 54.6). The block image is
phased to the meridian point at the mid-time, so a source at image position
``s`` was seen at every integration ``t`` with the power response
``B(angle(s, p(t)), nu)``, where ``p(t)`` is the ICRS position of the fixed
pointing at time ``t``. The mfs image of a point source is the weighted mean
of its visibilities, so the beam of the image is the same weighted mean of
``B`` over integrations and frequencies (:func:`drift_averaged_beam`).

The pointing track ``p(t)`` is found from the phase centre: the observed
hour angle and declination of the phase centre at the block's mid-time are the
fixed pointing (hour angle 0 for a block phased by the contimg rule), turned
back into ICRS at each integration time with :func:`phasing.hadec_to_icrs`.

The beam is smooth on the scale of pixels (FWHM 2.7 deg, pixels of a few
arcsec), so it is evaluated on a grid of at most ``COARSE_GRID`` points per
side and interpolated (cubic) to the image pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import casa_env, mstables, phasing, telescope

COARSE_GRID = 129
"""Points per side at which the beam is evaluated before interpolation."""


@dataclass(frozen=True)
class BeamInputs:
    """What the drift-averaged beam needs from a block MS.

    Attributes
    ----------
    times_jd : array, shape (n_times,)
        UTC Julian dates of the integrations.
    freqs_hz : array, shape (n_freqs,)
        Centre frequency of each spectral window.
    weights : array, shape (n_times, n_freqs)
        Sum of the data weights of the unflagged cross-correlation rows per
        integration and spectral window.
    phase_center : (float, float)
        ICRS (RA, Dec) of the field, radians.
    """

    times_jd: np.ndarray
    freqs_hz: np.ndarray
    weights: np.ndarray
    phase_center: tuple[float, float]


def read_beam_inputs(ms: str | Path) -> BeamInputs:
    """Integration times, spectral-window frequencies and data weights of an MS."""
    tb = casa_env.casatools().table()
    tb.open(str(ms))
    try:
        time_s = tb.getcol("TIME")
        ddid = tb.getcol("DATA_DESC_ID")
        use = (tb.getcol("ANTENNA1") != tb.getcol("ANTENNA2")) & ~tb.getcol("FLAG_ROW")
        weight = tb.getcol("WEIGHT").mean(axis=0)  # per row, mean over polarizations
    finally:
        tb.close()
    spws = mstables.spectral_windows(ms)
    spw_of_ddid, spw_freq = spws.spw_of_ddid, spws.mean_freq()
    tb.open(str(Path(ms) / "FIELD"))
    try:
        ra, dec = np.asarray(tb.getcol("PHASE_DIR"))[:, 0, 0]
    finally:
        tb.close()

    times, t_index = np.unique(np.round(time_s, 3), return_inverse=True)
    spws, f_index = np.unique(spw_of_ddid[ddid], return_inverse=True)
    weights = np.zeros((len(times), len(spws)))
    np.add.at(weights, (t_index[use], f_index[use]), weight[use])
    return BeamInputs(
        times_jd=times / 86400.0 + 2400000.5,  # MS TIME is MJD seconds (UTC)
        freqs_hz=spw_freq[spws],
        weights=weights,
        phase_center=(float(ra), float(dec)),
    )


def read_block_beam_inputs(ms_paths: list[str | Path]) -> BeamInputs:
    """:func:`read_beam_inputs` of a block given as its subband MSs (one spectral window each, or more).

    The same as reading their concatenation: the integrations are the union of
    every MS's (the subband files of a block start up to a minute apart), each
    window keeps its weights at its own integrations and none at the others.
    The MSs must share one phase centre (checked by the imager).
    """
    parts = [read_beam_inputs(p) for p in ms_paths]
    if not parts:
        raise ValueError("no MS to read the beam inputs from")
    times_jd = np.unique(np.round(np.concatenate([p.times_jd for p in parts]) * 86400.0, 3)) / 86400.0
    freqs = np.concatenate([p.freqs_hz for p in parts])
    weights = np.zeros((len(times_jd), len(freqs)))
    col = 0
    for p in parts:
        rows = np.searchsorted(times_jd, np.round(p.times_jd * 86400.0, 3) / 86400.0)
        weights[rows, col:col + len(p.freqs_hz)] = p.weights
        col += len(p.freqs_hz)
    order = np.argsort(freqs, kind="stable")
    return BeamInputs(times_jd=times_jd, freqs_hz=freqs[order], weights=weights[:, order],
                      phase_center=parts[0].phase_center)


def pointing_track(times_jd: np.ndarray, phase_center: tuple[float, float], mid_jd: float) -> np.ndarray:
    """ICRS positions (radians, shape (n_times, 2)) of the fixed pointing at each time.

    The pointing is the observed hour angle and declination of
    ``phase_center`` at ``mid_jd``, held fixed on the Earth.
    """
    from astropy import units as u
    from astropy.coordinates import HADec, SkyCoord
    from astropy.time import Time

    frame = HADec(obstime=Time(mid_jd, format="jd", scale="utc"), location=telescope.site_location(),
                  pressure=0 * u.hPa)
    hadec = SkyCoord(ra=phase_center[0] * u.rad, dec=phase_center[1] * u.rad, frame="icrs").transform_to(frame)
    ha, dec = float(hadec.ha.rad), float(hadec.dec.rad)
    return np.array([phasing.hadec_to_icrs(float(t), ha, dec) for t in np.atleast_1d(times_jd)])


def drift_averaged_beam(
    ra_rad: np.ndarray, dec_rad: np.ndarray, pointings: np.ndarray, freqs_hz: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Weighted mean of the Airy power beam over pointings and frequencies.

    Parameters
    ----------
    ra_rad, dec_rad : array
        ICRS positions at which to evaluate, radians (any matching shape).
    pointings : array, shape (n_times, 2)
        ICRS (RA, Dec) of the pointing at each integration, radians.
    freqs_hz : array, shape (n_freqs,)
    weights : array, shape (n_times, n_freqs)
        Data weight of each integration and frequency; need not be normalised.

    Returns
    -------
    array
        The beam (1 at the pointing), shape of ``ra_rad``.
    """
    weights = np.asarray(weights, dtype=float)
    total = weights.sum()
    if not total > 0:
        raise ValueError("the beam needs positive data weights (is every row flagged?)")
    out = np.zeros(np.shape(ra_rad))
    for (p_ra, p_dec), w_t in zip(pointings, weights):
        if not w_t.any():
            continue
        theta = _separation(ra_rad, dec_rad, p_ra, p_dec)
        for nu, w in zip(freqs_hz, w_t):
            if w > 0:
                out += w * telescope.airy_power_beam(theta, nu)
    return out / total


def beam_on_image(wcs, shape: tuple[int, int], inputs: BeamInputs, *, drift: bool = True) -> np.ndarray:
    """The block's primary beam on the pixels of an image.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS of the image (2 axes).
    shape : (ny, nx)
    inputs : BeamInputs
    drift : bool
        Average over the drift (transit dishes); False centres the beam on the
        phase centre for every integration (a tracking dish).

    Returns
    -------
    array, shape ``shape``, float32
    """
    from scipy.interpolate import RectBivariateSpline

    ny, nx = shape
    mid_jd = float(np.average(inputs.times_jd, weights=inputs.weights.sum(axis=1)))
    if drift:
        pointings = pointing_track(inputs.times_jd, inputs.phase_center, mid_jd)
    else:
        pointings = np.tile(np.asarray(inputs.phase_center, dtype=float), (len(inputs.times_jd), 1))
    ys = np.linspace(0, ny - 1, min(ny, COARSE_GRID))
    xs = np.linspace(0, nx - 1, min(nx, COARSE_GRID))
    gx, gy = np.meshgrid(xs, ys)
    ra, dec = wcs.pixel_to_world_values(gx, gy)
    coarse = drift_averaged_beam(np.radians(ra), np.radians(dec), pointings, inputs.freqs_hz, inputs.weights)
    if len(ys) == ny and len(xs) == nx:
        return coarse.astype(np.float32)
    spline = RectBivariateSpline(ys, xs, coarse, kx=3, ky=3)
    return spline(np.arange(ny), np.arange(nx)).astype(np.float32)


def _separation(ra, dec, ra0, dec0):
    # Haversine: accurate at small angles, where the beam matters most.
    s = np.sin((dec - dec0) / 2) ** 2 + np.cos(dec) * np.cos(dec0) * np.sin((ra - ra0) / 2) ** 2
    return 2 * np.arcsin(np.sqrt(np.clip(s, 0.0, 1.0)))


def drift_arcmin(duration_s: float, dec_rad: float) -> float:
    """Arc the sky moves through a transit beam in ``duration_s`` at ``dec_rad``."""
    return math.degrees(duration_s * 2 * math.pi / 86164.0905 * math.cos(dec_rad)) * 60
