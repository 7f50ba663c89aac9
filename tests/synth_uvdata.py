"""Tiny DSA-110-like data sets for the conversion and imaging tests.

Not a simulator of the instrument (that is ``contimg.simulate``): a handful of
real DSA-110 stations, a few channels and times, noise-free point sources, so
that tests run in seconds and know the true answer.
"""

from __future__ import annotations

import math

import numpy as np

from contimg import telescope

C = telescope.C_M_S

# Core stations out to ~470 m on both arms (synthesized beam ~1.5 arcmin at
# 1.4 GHz, so images stay small).
CORE_STATIONS = (1, 4, 9, 16, 25, 36, 44, 51, 53, 58, 63, 70, 79, 88, 97, 102)


def dsa_telescope(numbers=CORE_STATIONS):
    """A pyuvdata Telescope with the chosen DSA-110 stations."""
    from pyuvdata import Telescope

    chosen = tuple(s for s in telescope.stations() if s.number in numbers)
    site = telescope.site_location()
    xyz = telescope.station_ecef(chosen) - np.array([site.x.value, site.y.value, site.z.value])
    return Telescope.new(
        name=telescope.TELESCOPE_NAME,
        instrument=telescope.TELESCOPE_NAME,
        location=site,
        antenna_positions=xyz,
        antenna_names=[s.name for s in chosen],
        antenna_numbers=[s.number - 1 for s in chosen],
        antenna_diameters=np.full(len(chosen), telescope.DISH_DIAMETER_M),
        x_orientation="east",
        mount_type="fixed",
        feeds=["x", "y"],
        update_from_known=False,
    )


def phased_uvdata(
    *,
    center: tuple[float, float],
    sources: list[tuple[float, float, float]],
    freqs_hz: np.ndarray,
    times_jd: np.ndarray,
    integration_s: float = telescope.INTEGRATION_S,
    apply_beam: bool = True,
    numbers=CORE_STATIONS,
):
    """A UVData phased (sidereal) at ``center`` holding point sources.

    Parameters
    ----------
    center : (ra, dec)
        ICRS phase centre, radians.
    sources : list of (ra, dec, flux_jy)
        ICRS positions (radians) and Stokes I fluxes.
    freqs_hz, times_jd : array
        Channel frequencies and integration mid-times.
    apply_beam : bool
        Attenuate each source by the Airy power beam pointed at ``center``.

    Notes
    -----
    V = S * exp(+2 pi i (u l + v m + w (n - 1)) nu / c) with pyuvdata's
    uvw_array (FIELD-NOTES §1); XX = YY = S for an unpolarized source, as CASA
    forms Stokes I = (XX + YY) / 2.
    """
    from pyuvdata import UVData

    tel = dsa_telescope(numbers)
    nums = tel.antenna_numbers
    pairs = [(int(a), int(b)) for i, a in enumerate(nums) for b in nums[i:]]
    uvd = UVData.new(
        freq_array=np.asarray(freqs_hz, dtype=float),
        polarization_array=list(telescope.POLARIZATION_NUMBERS),
        times=np.asarray(times_jd, dtype=float),
        telescope=tel,
        antpairs=pairs,
        do_blt_outer=True,
        integration_time=integration_s,
        channel_width=float(np.median(np.diff(freqs_hz))) if len(freqs_hz) > 1 else 1e6,
        vis_units="Jy",
        empty=True,
    )
    uvd.phase(lon=center[0], lat=center[1], cat_name="synthetic", cat_type="sidereal")
    nu = uvd.freq_array.ravel()
    uvw = uvd.uvw_array
    vis = np.zeros((uvd.Nblts, uvd.Nfreqs), dtype=complex)
    for ra, dec, flux in sources:
        l, m, n = lmn(ra, dec, *center)
        gain = flux
        if apply_beam:
            theta = math.acos(max(-1.0, min(1.0, n)))
            gain = flux * telescope.airy_power_beam(np.array([theta]), nu)[0]
        phase = 2 * np.pi * (uvw[:, 0:1] * l + uvw[:, 1:2] * m + uvw[:, 2:3] * (n - 1)) * nu[None, :] / C
        vis += gain * np.exp(1j * phase)
    pol = list(uvd.polarization_array)
    uvd.data_array[:, :, pol.index(-5)] = vis
    uvd.data_array[:, :, pol.index(-6)] = vis
    uvd.nsample_array[:] = 1.0
    return uvd


def lmn(ra, dec, ra0, dec0):
    """Direction cosines of (ra, dec) about (ra0, dec0)."""
    dra = ra - ra0
    l = math.cos(dec) * math.sin(dra)
    m = math.sin(dec) * math.cos(dec0) - math.cos(dec) * math.sin(dec0) * math.cos(dra)
    n = math.sin(dec) * math.sin(dec0) + math.cos(dec) * math.cos(dec0) * math.cos(dra)
    return l, m, n


def offset_position(ra0, dec0, east_rad, north_rad):
    """The position at offsets (l, m) = (east, north) from (ra0, dec0), radians."""
    l, m = east_rad, north_rad
    n = math.sqrt(1 - l * l - m * m)
    dec = math.asin(m * math.cos(dec0) + n * math.sin(dec0))
    ra = ra0 + math.atan2(l, n * math.cos(dec0) - m * math.sin(dec0))
    return ra % (2 * math.pi), dec


def to_dsa_driftscan(uvd, dec_rad: float, *, uvw_error_m: float = 0.01, seed: int = 1):
    """Rephase a data set the way DSA-110 raw files are: meridian driftscan.

    The phase centre becomes a pyuvdata "driftscan" centre in "altaz" at the
    meridian and ``dec_rad``, ``extra_keywords['phase_center_dec']`` is set,
    and the stored UVWs get random errors of ``uvw_error_m`` and become
    float32, so that a converter that trusts them fails the uvw check. Write
    the result with :func:`write_raw`.
    """
    lat = telescope.site_location().lat.rad
    az, alt = (0.0, math.pi / 2 - (dec_rad - lat)) if dec_rad > lat else (math.pi, math.pi / 2 - (lat - dec_rad))
    uvd.phase(lon=az, lat=alt, phase_frame="altaz", cat_type="driftscan", cat_name="meridian")
    uvd.extra_keywords["phase_center_dec"] = float(dec_rad)
    rng = np.random.default_rng(seed)
    cross = uvd.ant_1_array != uvd.ant_2_array  # autocorrelations keep uvw = 0
    noisy = uvd.uvw_array + rng.normal(0, uvw_error_m, uvd.uvw_array.shape) * cross[:, None]
    uvd.uvw_array = noisy.astype(np.float32)  # as in real files; pyuvdata's check wants float64
    return uvd


def write_raw(uvd, path) -> None:
    """Write a drift-scan data set as a raw UVH5 file (float32 UVWs kept, no check)."""
    uvd.write_uvh5(str(path), clobber=True, run_check=False)


def subband_freqs(subband: int, n_channels: int = 4) -> np.ndarray:
    """Channel frequencies of a DSA-110 subband, descending like the raw files."""
    return telescope.subband_frequencies(subband, n_channels)[::-1].copy()
