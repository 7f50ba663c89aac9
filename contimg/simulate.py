"""Simulated DSA-110 raw data: a night of drift-scan blocks as subband files.

The scenario, the presets and the sky model live in :mod:`contimg.sky` (and
are re-exported here); this module turns them into files and their truth.
What is simulated (docs/simulation.md has the user's view):

- Every block is 24 integrations of 12.884902 s, written as 16 UVH5 files
  (``{YYYY-MM-DDTHH:MM:SS}_sb{NN}.hdf5``, ``sb00`` the highest frequency), each
  file starting up to ``start_jitter_s`` away from the block's nominal start.
- Each integration is fringe-stopped at hour angle 0 at the pointing
  declination ``dec0``: the ITRS direction ``s0`` (``sky.phase_centre_itrs``).
  A baseline ``b = x(ant2) - x(ant1)`` (ITRS metres, pyuvdata's convention)
  sees a source of apparent flux ``A`` in direction ``s(t)`` as
  ``V = A exp(+2 pi i b.(s - s0) nu / c)`` (FIELD-NOTES §1), evaluated at the
  channel centre and the integration centre (no smearing). The file declares
  this as a pyuvdata ``driftscan`` phase centre in the ``altaz`` frame.
- ``A`` is the source's power-law flux times the Airy power beam of the fixed
  dish, pointed at ``s0``. Stokes I only: XX = YY = I, XY = YX = 0.
- Thermal noise from the SEFD; per-antenna, per-feed complex gains with a
  bandpass ripple and a residual delay: ``V_ab,pq = g_ap conj(g_bq) V``.

Sky visibilities are computed per integration and channel as ``W^H W`` with
``W[s, a] = sqrt(A_s) exp(2 pi i x_a.(s - s0) nu / c)`` (one matrix product
for all baselines and sources), so no Python loop runs over baselines or
channels.
"""

from __future__ import annotations

import json
import logging
import os
import time as wallclock
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from contimg import products, sky, telescope as tel
from contimg.sky import PRESETS, Calibrator, Fault, Preset, Scenario, Source  # noqa: F401 (public API)

log = logging.getLogger(__name__)

# A source whose apparent flux never exceeds this in a file is left out of it:
# far below the thermal noise of even a full-array block image (~0.1 mJy).
MIN_APPARENT_FLUX_JY = 1e-5
# Bound on the per-antenna phasor array W (elements) built at once.
MAX_PHASOR_ELEMENTS = 8_000_000
# Independent random streams, so that e.g. dropping a file never shifts the noise of another.
_STREAMS = {"sky": 1, "jitter": 2, "gains": 3, "noise": 4, "rfi": 5}
# RFI model (Scenario.rfi): per file, a few persistent narrow-band channels on every
# baseline and a few bursts (1-3 integrations, a run of channels) on the baselines of
# a few antennas; amplitudes in units of the thermal sigma of one visibility.
RFI_CHANNEL_FRACTION = 0.1
RFI_CHANNEL_SIGMA = 30.0
RFI_N_BURSTS = 3
RFI_BURST_SIGMA = 60.0
RFI_BURST_ANTENNAS = 3
TRUTH_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- planning


def _rng(seed: int, stream: str, *ids: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], *ids])


@dataclass(frozen=True)
class SubbandFile:
    """One planned subband file of a block.

    Attributes
    ----------
    block, subband : int
    start : astropy.time.Time
        Start of the first integration (the block's nominal start plus this
        file's jitter).
    fault : Fault or None
    """

    block: int
    subband: int
    start: Any
    fault: Fault | None = None

    @property
    def filename(self) -> str:
        """File name; its timestamp is ``start`` rounded down to the second."""
        return products.subband_filename(self.start.to_datetime().replace(microsecond=0), self.subband)

    @property
    def times_jd(self) -> np.ndarray:
        """Integration centres, JD (UTC)."""
        offsets = (np.arange(tel.N_INTEGRATIONS) + 0.5) * tel.INTEGRATION_S / 86400.0
        return self.start.jd1 + (self.start.jd2 + offsets)

    @property
    def status(self) -> str:
        """``written``, ``dropped`` or ``truncated``."""
        if self.fault is None:
            return "written"
        return "dropped" if self.fault.kind == "drop" else "truncated"


@dataclass(frozen=True)
class NightPlan:
    """Everything drawn from the scenario before any visibility is computed.

    Attributes
    ----------
    scenario : Scenario
    preset : Preset
    sources : tuple of sky.Source
        Calibrator first, then explicit sources, then random ones.
    files : tuple of tuple of SubbandFile
        ``files[block][subband]``.
    gains : ndarray of complex64, shape (n_blocks, n_antennas, 2, n_subbands, n_channels)
        ``g[block, antenna, feed (0 = X, 1 = Y), subband, channel]``; antennas
        in ``preset.stations`` order.
    """

    scenario: Scenario
    preset: Preset
    sources: tuple[Source, ...]
    files: tuple[tuple[SubbandFile, ...], ...]
    gains: np.ndarray


def plan_night(scenario: Scenario) -> NightPlan:
    """Draw the sky, file start times and gains of a scenario (no visibilities)."""
    preset = PRESETS[scenario.preset]
    faults = {(f.block, f.subband): f for f in scenario.faults}
    files = []
    for block in range(scenario.n_blocks):
        jitter = _rng(scenario.seed, "jitter", block).uniform(-1.0, 1.0, tel.N_SUBBANDS) * scenario.start_jitter_s
        nominal = scenario.block_start(block)
        files.append(
            tuple(
                SubbandFile(block, sb, _add_seconds(nominal, round(float(jitter[sb]), 6)), faults.get((block, sb)))
                for sb in range(tel.N_SUBBANDS)
            )
        )
    freqs = band_frequencies(preset)
    if scenario.gains:
        rng = _rng(scenario.seed, "gains")
        gains = draw_gains(rng, scenario.n_blocks, preset.n_antennas, freqs, scenario.gain_drift)
    else:
        gains = np.ones((scenario.n_blocks, preset.n_antennas, 2) + freqs.shape, dtype=np.complex64)
    return NightPlan(scenario, preset, _night_sources(scenario), tuple(files), gains)


def band_frequencies(preset: Preset) -> np.ndarray:
    """Channel frequencies (Hz) of every subband, shape (n_subbands, n_channels); row 0 is sb00."""
    return np.stack([tel.subband_frequencies(sb, preset.n_channels) for sb in range(tel.N_SUBBANDS)])


def _iso(t) -> str:
    """UTC ``YYYY-MM-DDTHH:MM:SS.ffffff`` of an astropy Time."""
    return t.to_datetime().isoformat(timespec="microseconds")


def _add_seconds(t, seconds: float):
    from astropy import units as u

    return t + seconds * u.s


def _night_sources(sc: Scenario) -> tuple[Source, ...]:
    out: list[Source] = []
    if sc.calibrator is not None:
        out.append(_calibrator_source(sc))
    out.extend(sc.sources)
    end = _add_seconds(sc.block_start(sc.n_blocks - 1), tel.BLOCK_DURATION_S)
    lon = tel.site_location().lon
    lst = [t.sidereal_time("apparent", longitude=lon).deg for t in (sc.block_start(0), end)]
    ra_range, dec_range = sky.strip_box(sc.dec_deg, lst[0], lst[1])
    if sc.catalogue_calibrators:
        out.extend(_catalogue_calibrators_in_strip(ra_range, dec_range, {s.name for s in out}))
    if sc.n_random_sources:
        rng = _rng(sc.seed, "sky")
        out.extend(sky.random_sky(sc.n_random_sources, rng, ra_range_deg=ra_range, dec_range_deg=dec_range))
    return tuple(out)


def _catalogue_calibrators_in_strip(ra_range, dec_range, present: set[str]) -> list[Source]:
    """Every catalogued calibrator inside the strip the night sweeps.

    The pipeline takes any block whose beam holds a catalogued calibrator for a
    calibrator block and solves against the catalogue's model, so the
    simulated sky must hold those sources, as the real sky does.
    """
    from contimg import calibrators

    ra0, ra1 = ra_range  # ra1 may exceed 360
    out = []
    for c in calibrators.catalogue():
        in_ra = (ra1 - ra0) >= 360.0 or (c.ra_deg - ra0) % 360.0 <= (ra1 - ra0)
        if c.name not in present and in_ra and dec_range[0] <= c.dec_deg <= dec_range[1]:
            flux_14 = c.flux_jy * (sky.REFERENCE_FREQ_HZ / c.reference_hz) ** c.spectral_index
            out.append(Source(c.name, c.ra_deg, c.dec_deg, flux_14, c.spectral_index))
    return out


def _calibrator_source(sc: Scenario) -> Source:
    cal = sc.calibrator.resolved()
    dec = sc.dec_deg if cal.dec_deg is None else cal.dec_deg
    if cal.ra_deg is not None:
        ra = cal.ra_deg
    else:
        ra = sky.transit_ra_deg(dec, _add_seconds(sc.block_start(cal.block), 0.5 * tel.BLOCK_DURATION_S))
    return Source(cal.name, ra, dec, cal.flux_jy, cal.spectral_index)


def draw_gains(
    rng: np.random.Generator, n_blocks: int, n_antennas: int, freqs_hz: np.ndarray, drift: float = 0.0
) -> np.ndarray:
    """Per-antenna, per-feed complex gains with a bandpass.

    Amplitude uniform in 0.9..1.1, phase uniform, a residual delay within
    +-1 ns, and a smooth ripple (three sinusoids of 10-60 MHz period, up to 2 %
    in amplitude and 0.03 rad in phase each). With ``drift`` > 0 the gains
    random-walk from block to block (block 0 is the base).

    Parameters
    ----------
    freqs_hz : ndarray, shape (n_subbands, n_channels)

    Returns
    -------
    ndarray of complex64, shape (n_blocks, n_antennas, 2, n_subbands, n_channels)
    """
    shape = (n_antennas, 2)
    nu = freqs_hz[None, None, None]  # (1, 1, 1, n_sb, n_ch)
    nu_mid = 0.5 * (tel.BAND_TOP_HZ + tel.BAND_BOTTOM_HZ)
    amp = rng.uniform(0.9, 1.1, shape)
    phase = rng.uniform(-np.pi, np.pi, shape)
    delay = rng.uniform(-1e-9, 1e-9, shape)

    def ripple(size: float) -> np.ndarray:
        a = rng.uniform(0.0, size, shape + (3,))[..., None, None]
        period = rng.uniform(10e6, 60e6, shape + (3,))[..., None, None]
        offset = rng.uniform(0.0, 2 * np.pi, shape + (3,))[..., None, None]
        return np.sum(a * np.sin(2 * np.pi * nu / period + offset), axis=2)

    log_amp = np.log(amp)[..., None, None] + np.log1p(ripple(0.02))
    arg = phase[..., None, None] + 2 * np.pi * delay[..., None, None] * (freqs_hz - nu_mid) + ripple(0.03)
    base = np.exp(log_amp + 1j * arg)
    steps = rng.normal(0.0, drift, (n_blocks,) + shape + (2,))  # (log-amplitude, phase) per block
    steps[0] = 0.0
    walk = np.cumsum(steps, axis=0)
    factor = np.exp(walk[..., 0] + 1j * walk[..., 1])[..., None, None]
    return (base[None] * factor).astype(np.complex64)


# --------------------------------------------------------------------------- visibilities


def thermal_sigma_jy(channel_width_hz: float, integration_s: float = tel.INTEGRATION_S) -> float:
    """Noise per real or imaginary part of one cross-correlation: SEFD / sqrt(2 dnu dt)."""
    return tel.SEFD_JY / np.sqrt(2.0 * channel_width_hz * integration_s)


def baseline_indices(n_antennas: int) -> tuple[np.ndarray, np.ndarray]:
    """Antenna indices (i <= j) of every baseline, autocorrelations included."""
    return np.triu_indices(n_antennas)


def apparent_flux(
    sources: Sequence[Source], directions: np.ndarray, pointing: np.ndarray, freqs_hz: np.ndarray, block: int
) -> np.ndarray:
    """Flux densities seen through the Airy power beam pointed at ``pointing``.

    Parameters
    ----------
    directions : ndarray, shape (n_sources, n_times, 3)
        ITRS unit vectors.
    pointing : ndarray, shape (3,)

    Returns
    -------
    ndarray, shape (n_sources, n_times, n_freqs), Jy
    """
    if not len(sources):
        return np.zeros(directions.shape[:2] + (len(freqs_hz),))
    theta = sky.angle_between(directions, pointing)
    beam = tel.airy_power_beam(theta[..., None], freqs_hz)
    return sky.spectral_fluxes(sources, freqs_hz, block)[:, None, :] * beam


def sky_visibilities(
    positions_m: np.ndarray, offsets: np.ndarray, flux_jy: np.ndarray, freqs_hz: np.ndarray
) -> np.ndarray:
    """Point-source visibilities of every antenna pair, fringe-stopped.

    ``V[t, k, a, b] = sum_s F[s, t, k] exp(2 pi i (x_b - x_a).d[s, t] nu_k / c)``,
    computed as ``W^H W`` with ``W[s, a] = sqrt(F) exp(2 pi i x_a.d nu / c)``.

    Parameters
    ----------
    positions_m : ndarray, shape (n_antennas, 3)
        ITRS positions relative to the array centre (the centre cancels in
        ``x_b - x_a``; keeping it small keeps the phases precise).
    offsets : ndarray, shape (n_sources, n_times, 3)
        Source direction minus phase-centre direction (ITRS).
    flux_jy : ndarray, shape (n_sources, n_times, n_freqs)
        Apparent flux densities (>= 0).
    freqs_hz : ndarray, shape (n_freqs,)

    Returns
    -------
    ndarray of complex64, shape (n_times, n_freqs, n_antennas, n_antennas)
    """
    n_src, n_t = offsets.shape[:2]
    n_ant, n_f = len(positions_m), len(freqs_hz)
    out = np.zeros((n_t, n_f, n_ant, n_ant), dtype=np.complex64)
    if n_src == 0:
        return out
    delay = np.einsum("sti,ai->tsa", offsets, positions_m) / tel.C_M_S  # seconds, (t, s, a)
    amp = np.sqrt(flux_jy).transpose(1, 2, 0)[..., None].astype(np.float32)  # (t, k, s, 1)
    dnu = freqs_hz[1] - freqs_hz[0] if n_f > 1 else 0.0  # channels are evenly spaced
    step = max(1, MAX_PHASOR_ELEMENTS // (n_f * n_src * n_ant))
    for t0 in range(0, n_t, step):  # chunks of integrations bound the memory
        sl = slice(t0, t0 + step)
        # exp(2 pi i tau nu_k) = exp(2 pi i tau nu_0) * exp(2 pi i tau dnu)**k: one
        # cumulative product instead of an exp per channel (complex64 error ~1e-4 deg).
        w = np.empty((delay[sl].shape[0], n_f, n_src, n_ant), dtype=np.complex64)
        w[:, 0] = np.exp(2j * np.pi * freqs_hz[0] * delay[sl])
        w[:, 1:] = np.exp(2j * np.pi * dnu * delay[sl])[:, None]
        np.cumprod(w, axis=1, out=w)
        w *= amp[sl]
        out[sl] = np.conj(w).swapaxes(-1, -2) @ w
    return out


def subband_visibilities(plan: NightPlan, sbfile: SubbandFile, directions: np.ndarray) -> np.ndarray:
    """Data of one subband file: sky, noise and gains.

    Parameters
    ----------
    directions : ndarray, shape (n_sources, n_times, 3)
        ITRS directions of ``plan.sources`` at the file's integration centres.

    Returns
    -------
    ndarray of complex64, shape (n_times, n_baselines, n_channels, 4)
        Polarizations XX, XY, YX, YY.
    """
    sc, preset = plan.scenario, plan.preset
    freqs = tel.subband_frequencies(sbfile.subband, preset.n_channels)
    pointing = sky.phase_centre_itrs(sc.dec_deg)
    flux = apparent_flux(plan.sources, directions, pointing, freqs, sbfile.block)
    keep = flux.max(axis=(1, 2), initial=0.0) > MIN_APPARENT_FLUX_JY
    log.debug("%s: %d of %d sources above %g Jy", sbfile.filename, keep.sum(), len(keep), MIN_APPARENT_FLUX_JY)
    positions = antenna_positions(preset)
    vis = sky_visibilities(positions, directions[keep] - pointing, flux[keep], freqs)
    i1, i2 = baseline_indices(preset.n_antennas)
    stokes_i = vis[:, :, i1, i2].transpose(0, 2, 1)  # (t, bl, k)
    autos = np.flatnonzero(i1 == i2)

    n_t, n_bl, n_f = stokes_i.shape
    data = np.zeros((n_t, n_bl, n_f, 4), dtype=np.complex64)
    if sc.noise:
        rng = _rng(sc.seed, "noise", sbfile.block, sbfile.subband)
        _add_noise(data, autos, stokes_i[:, autos].real, preset.channel_width_hz, rng)
    for pol in (0, 3):
        view = data[..., pol]
        view += stokes_i
        # Autocorrelations are real by definition; the matrix product can leave rounding in imag.
        view[:, autos] = view[:, autos].real + tel.SEFD_JY
    if sc.rfi:
        rng = _rng(sc.seed, "rfi", sbfile.block, sbfile.subband, 1)  # the signals; stream 0 draws the plan
        _add_rfi(data, rfi_plan(plan, sbfile.block, sbfile.subband), i1, i2, autos, preset, rng)
    if sc.gains:
        _apply_gains(data, plan.gains[sbfile.block, :, :, sbfile.subband], i1, i2, autos)
    return data


def rfi_plan(plan: NightPlan, block: int, subband: int) -> dict:
    """The seeded RFI of one subband file (JSON-ready; also written to truth.json).

    Returns
    -------
    dict
        ``channels``: indices (ascending-frequency order, as in the file) of the
        persistent narrow-band channels, on every baseline and integration;
        ``bursts``: list of ``{"times": [integration indices], "channels": [...],
        "antennas": [station numbers]}``, each hitting every baseline with at
        least one of those antennas; ``channel_sigma``, ``burst_sigma``:
        amplitudes in units of the thermal sigma of one visibility.
    """
    preset = plan.preset
    rng = _rng(plan.scenario.seed, "rfi", block, subband, 0)
    n_ch = preset.n_channels
    n_persist = max(1, int(round(RFI_CHANNEL_FRACTION * n_ch)))
    channels = sorted(int(c) for c in rng.choice(n_ch, n_persist, replace=False))
    numbers = [s.number for s in preset.stations]
    bursts = []
    for _ in range(RFI_N_BURSTS):
        length = int(rng.integers(1, 4))
        t0 = int(rng.integers(0, tel.N_INTEGRATIONS - length + 1))
        width = int(rng.integers(1, max(2, n_ch // 4) + 1))
        c0 = int(rng.integers(0, n_ch - width + 1))
        ants = sorted(int(a) for a in rng.choice(numbers, min(RFI_BURST_ANTENNAS, len(numbers)), replace=False))
        bursts.append({"times": list(range(t0, t0 + length)), "channels": list(range(c0, c0 + width)), "antennas": ants})
    return {"channels": channels, "bursts": bursts, "channel_sigma": RFI_CHANNEL_SIGMA, "burst_sigma": RFI_BURST_SIGMA}


def _add_rfi(
    data: np.ndarray, rfi: dict, i1: np.ndarray, i2: np.ndarray, autos: np.ndarray, preset: Preset,
    rng: np.random.Generator,
) -> None:
    """Add the RFI of :func:`rfi_plan` in place (parallel hands; autos get the power).

    The persistent signal has a slowly wandering phase per baseline (a
    terrestrial transmitter does not fringe-stop) and an amplitude that varies
    by +-30 % between integrations; a burst is a random complex signal.
    """
    sigma = thermal_sigma_jy(preset.channel_width_hz)
    n_t, n_bl = data.shape[:2]
    cross = i1 != i2
    for ch in rfi["channels"]:
        amp = RFI_CHANNEL_SIGMA * sigma * rng.uniform(0.7, 1.3, (n_t, 1))
        phase = np.cumsum(rng.normal(0.0, 0.3, (n_t, n_bl)), axis=0) + rng.uniform(-np.pi, np.pi, (1, n_bl))
        sig = np.where(cross[None], amp * np.exp(1j * phase), 0.0)
        sig[:, autos] = amp  # the auto sees the interferer's power
        for pol in (0, 3):
            data[:, :, ch, pol] += sig.astype(np.complex64)
    numbers = np.array([s.number for s in preset.stations])
    for burst in rfi["bursts"]:
        hit = np.isin(numbers[i1], burst["antennas"]) | np.isin(numbers[i2], burst["antennas"])
        t_idx, c_idx = np.array(burst["times"]), np.array(burst["channels"])
        shape = (len(t_idx), int(hit.sum()), len(c_idx))
        sig = RFI_BURST_SIGMA * sigma * np.exp(1j * rng.uniform(-np.pi, np.pi, shape)) * rng.uniform(0.7, 1.3, shape)
        hit_autos = np.isin(np.flatnonzero(hit), autos)
        sig[:, hit_autos] = np.abs(sig[:, hit_autos])
        for pol in (0, 3):
            block = data[:, :, :, pol]
            sub = block[np.ix_(t_idx, np.flatnonzero(hit), c_idx)]
            block[np.ix_(t_idx, np.flatnonzero(hit), c_idx)] = sub + sig.astype(np.complex64)


def _add_noise(
    data: np.ndarray, autos: np.ndarray, auto_flux: np.ndarray, channel_width_hz: float, rng: np.random.Generator
) -> None:
    """Add thermal noise in place.

    Complex, ``SEFD / sqrt(2 dnu dt)`` per part, everywhere except the XX and
    YY autocorrelations, which are real with ``(SEFD + flux) / sqrt(dnu dt)``.
    """
    sigma = thermal_sigma_jy(channel_width_hz)
    rng.standard_normal(out=data.view(np.float32), dtype=np.float32)
    data *= np.float32(sigma)
    auto_scale = (np.sqrt(2.0) * (tel.SEFD_JY + auto_flux) / tel.SEFD_JY).astype(np.float32)
    for pol in (0, 3):
        view = data[..., pol]
        view[:, autos] = view[:, autos].real * auto_scale


def _apply_gains(data: np.ndarray, g: np.ndarray, i1: np.ndarray, i2: np.ndarray, autos: np.ndarray) -> None:
    """``V_ab,pq *= g_ap conj(g_bq)`` in place; ``g`` has shape (n_antennas, 2, n_channels)."""
    for pol, (p, q) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        gg = g[i1, p] * np.conj(g[i2, q])  # (bl, k)
        if p == q:
            gg[autos] = np.abs(g[i1[autos], p]) ** 2  # keep the autos exactly real
        data[..., pol] *= gg[None]


def antenna_positions(preset: Preset) -> np.ndarray:
    """ITRS positions (metres) of the preset's stations relative to the site."""
    site = tel.site_location()
    centre = np.array([site.x.value, site.y.value, site.z.value])
    return tel.station_ecef(preset.stations) - centre


# --------------------------------------------------------------------------- files


def phase_centre_catalog(dec_deg: float) -> dict:
    """pyuvdata phase-centre catalog: a driftscan at hour angle 0, ``dec_deg``."""
    az, alt = sky.meridian_altaz_deg(dec_deg)
    return {
        0: {
            "cat_name": f"meridian_dec{dec_deg:+.2f}",
            "cat_type": "driftscan",
            "cat_lon": np.radians(az),
            "cat_lat": np.radians(alt),
            "cat_frame": "altaz",
        }
    }


def _telescope(preset: Preset):
    from pyuvdata import Telescope

    return Telescope.new(
        name=tel.TELESCOPE_NAME,
        instrument=tel.TELESCOPE_NAME,
        location=tel.site_location(),
        antenna_positions=antenna_positions(preset),
        antenna_names=[s.name for s in preset.stations],
        antenna_numbers=[s.number for s in preset.stations],
        antenna_diameters=np.full(preset.n_antennas, tel.DISH_DIAMETER_M),
        # Linear feeds, X taken east-west (pyuvdata's angle pi/2), Y north-south.
        feed_array=np.array(["x", "y"]),
        feed_angle=np.array([np.pi / 2, 0.0]),
        mount_type="fixed",
        update_from_known=False,
    )


def subband_uvdata(plan: NightPlan, sbfile: SubbandFile, directions: np.ndarray):
    """A pyuvdata UVData of one subband file (checked by pyuvdata).

    Parameters
    ----------
    directions : ndarray, shape (n_sources, n_times, 3)
        As for :func:`subband_visibilities`: ``block_directions(plan, block)[:, subband]``.
    """
    from pyuvdata import UVData

    sc, preset = plan.scenario, plan.preset
    data = subband_visibilities(plan, sbfile, directions)
    i1, i2 = baseline_indices(preset.n_antennas)
    numbers = np.array([s.number for s in preset.stations])
    shape = preset.data_shape
    with warnings.catch_warnings():
        # UVData.new always computes UVWs from the antennas and says so; here that is the intent.
        warnings.filterwarnings("ignore", message="Recalculating uvw_array without adjusting")
        uvd = UVData.new(
            freq_array=tel.subband_frequencies(sbfile.subband, preset.n_channels),
            channel_width=preset.channel_width_hz,
            polarization_array=np.array(tel.POLARIZATION_NUMBERS),
            times=sbfile.times_jd,
            telescope=_telescope(preset),
            antpairs=np.stack([numbers[i1], numbers[i2]], axis=1),
            do_blt_outer=True,
            time_axis_faster_than_bls=False,
            integration_time=tel.INTEGRATION_S,
            data_array=data.reshape(shape),
            flag_array=np.zeros(shape, dtype=bool),
            nsample_array=np.ones(shape, dtype=np.float32),
            phase_center_catalog=phase_centre_catalog(sc.dec_deg),
            vis_units="uncalib",
            update_telescope_from_known=False,
        )
    uvd.extra_keywords = {"phase_center_dec": float(np.radians(sc.dec_deg))}
    # A fixed history (no wall-clock time) keeps re-runs byte-identical.
    uvd.history = (
        f"Simulated by contimg.simulate: preset {preset.name}, seed {sc.seed}, block {sbfile.block}, "
        f"subband {sbfile.subband}, gains {'on' if sc.gains else 'off'}, noise {'on' if sc.noise else 'off'}."
    )
    return uvd


def write_subband_file(uvd, path: str | os.PathLike, fault: Fault | None = None) -> int:
    """Write a UVData as a DSA-110 raw subband file, atomically; returns its size in bytes.

    pyuvdata writes float64 UVWs; the real files carry float32, so the
    ``Header/uvw_array`` dataset is rewritten. A ``truncate`` fault cuts the
    file to ``keep_fraction`` of its bytes before it gets its final name.
    """
    import h5py

    path = Path(path)
    tmp = products.temporary_name(path)
    tmp.unlink(missing_ok=True)  # a partial file of an interrupted run
    uvd.write_uvh5(str(tmp), run_check=False, chunks=None, flags_compression=None, nsample_compression=None)
    with h5py.File(tmp, "r+") as f:
        uvw = f["Header/uvw_array"][()]
        del f["Header/uvw_array"]
        f["Header"].create_dataset("uvw_array", data=uvw.astype(np.float32))
    if fault is not None and fault.kind == "truncate":
        os.truncate(tmp, int(tmp.stat().st_size * fault.keep_fraction))
    os.replace(tmp, path)
    return path.stat().st_size


def block_directions(plan: NightPlan, block: int) -> np.ndarray:
    """ITRS directions of every source at every integration of a block's files.

    Returns
    -------
    ndarray, shape (n_sources, n_subbands, n_times, 3)
    """
    from astropy.time import Time

    jd = np.stack([f.times_jd for f in plan.files[block]])
    ra = [s.ra_deg for s in plan.sources]
    dec = [s.dec_deg for s in plan.sources]
    dirs = sky.itrs_directions(ra, dec, Time(jd.ravel(), format="jd", scale="utc"))
    return dirs.reshape(len(plan.sources), *jd.shape, 3)


# --------------------------------------------------------------------------- truth and the night


def truth_document(plan: NightPlan) -> dict:
    """What ``truth.json`` holds: the scenario, the sky and every planned file."""
    sc, preset = plan.scenario, plan.preset
    az, alt = sky.meridian_altaz_deg(sc.dec_deg)
    from contimg import calibrators

    catalogued = {c.name for c in calibrators.catalogue()}
    kinds = ["calibrator"] * (sc.calibrator is not None) + ["explicit"] * len(sc.sources)
    kinds += ["catalogue" if s.name in catalogued else "random" for s in plan.sources[len(kinds):]]
    sources = [dict(src.to_dict(sc.n_blocks), kind=kind) for src, kind in zip(plan.sources, kinds)]
    blocks = []
    for block_files in plan.files:
        nominal = sc.block_start(block_files[0].block)
        blocks.append(
            {
                "index": block_files[0].block,
                "nominal_start": _iso(nominal),
                "subbands": [
                    {"subband": f.subband, "start": _iso(f.start), "file": f.filename, "status": f.status}
                    for f in block_files
                ],
            }
        )
    return {
        "format_version": TRUTH_FORMAT_VERSION,
        "scenario": sc.to_dict(),
        "preset": {
            "name": preset.name,
            "station_numbers": [s.number for s in preset.stations],
            "n_channels": preset.n_channels,
            "channel_width_hz": preset.channel_width_hz,
        },
        "pointing_dec_deg": sc.dec_deg,
        "pointing_dec_rad": float(np.radians(sc.dec_deg)),
        "phase_centre": {"cat_type": "driftscan", "frame": "altaz", "az_deg": az, "alt_deg": alt},
        "reference_frequency_hz": sky.REFERENCE_FREQ_HZ,
        "noise_sigma_jy": thermal_sigma_jy(preset.channel_width_hz) if sc.noise else 0.0,
        "gains_file": products.TRUTH_GAINS,
        "blocks": blocks,
        "sources": sources,
        "faults": [asdict(f) for f in sc.faults],
        "rfi": {
            "enabled": bool(sc.rfi),
            "files": [
                dict(block=f.block, subband=f.subband, **rfi_plan(plan, f.block, f.subband))
                for block_files in plan.files
                for f in block_files
            ]
            if sc.rfi
            else [],
        },
    }


def write_truth(plan: NightPlan, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``truth.json`` and ``truth_gains.npz`` atomically; returns their paths.

    ``truth_gains.npz`` holds ``gains`` (complex64, axes block, antenna, feed,
    subband, channel), ``antenna_numbers``, ``feeds`` (``["X", "Y"]``),
    ``freq_hz`` (subband, channel) and ``axes`` (the axis names).
    """
    out_dir = Path(out_dir)
    json_path, npz_path = out_dir / products.TRUTH_JSON, out_dir / products.TRUTH_GAINS
    tmp = products.temporary_name(json_path)
    tmp.write_text(json.dumps(truth_document(plan), indent=1) + "\n")
    os.replace(tmp, json_path)
    tmp = products.temporary_name(npz_path)
    with tmp.open("wb") as f:  # a file object stops numpy appending ".npz" to the temporary name
        np.savez(
            f,
            gains=plan.gains,
            axes=np.array(["block", "antenna", "feed", "subband", "channel"]),
            antenna_numbers=np.array([s.number for s in plan.preset.stations]),
            feeds=np.array(["X", "Y"]),
            freq_hz=band_frequencies(plan.preset),
        )
    os.replace(tmp, npz_path)
    return json_path, npz_path


def simulate_night(
    scenario: Scenario, out_dir: str | os.PathLike, progress: Callable[[str], None] | None = None
) -> dict:
    """Write every block of a scenario as subband files, plus the truth.

    Parameters
    ----------
    scenario : Scenario
    out_dir : path
        Created if missing. Files of the same names are replaced; nothing
        else in it is touched.
    progress : callable(str), optional
        Called with one line per subband file (written, truncated or dropped).

    Returns
    -------
    dict
        ``n_files`` (files written, truncated ones included), ``n_dropped``,
        ``n_blocks``, ``bytes``, ``seconds``, ``out_dir``.
    """
    started = wallclock.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_night(scenario)
    written = dropped = total_bytes = 0
    for block_files in plan.files:
        directions = block_directions(plan, block_files[0].block)
        for f in block_files:
            t0 = wallclock.perf_counter()
            label = f"block {f.block + 1}/{scenario.n_blocks} sb{f.subband:02d} {f.filename}"
            if f.status == "dropped":
                dropped += 1
                if progress:
                    progress(f"{label}: dropped (fault)")
                continue
            uvd = subband_uvdata(plan, f, directions[:, f.subband])
            size = write_subband_file(uvd, out_dir / f.filename, f.fault)
            del uvd
            written += 1
            total_bytes += size
            if progress:
                progress(f"{label}: {f.status}, {size / 1e6:.1f} MB in {wallclock.perf_counter() - t0:.1f} s")
    write_truth(plan, out_dir)
    return {
        "n_files": written,
        "n_dropped": dropped,
        "n_blocks": scenario.n_blocks,
        "bytes": total_bytes,
        "seconds": round(wallclock.perf_counter() - started, 3),
        "out_dir": str(out_dir),
    }
