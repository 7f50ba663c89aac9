"""Tests of contimg.phasing: the per-time geometry is pyuvdata's per-row geometry, bit for bit.

(The phase-centre rule and its frames are tested in test_convert.py.)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from contimg import phasing, telescope

sys.path.insert(0, str(Path(__file__).parent))
import synth_uvdata as synth  # noqa: E402

T0_JD = 2460953.6338541666  # 2025-10-05T03:12:45 UTC
DEC = math.radians(54.6)
OTHER_CENTER = (math.radians(300.5), math.radians(54.2))


def _times(n: int) -> np.ndarray:
    return T0_JD + np.arange(n) * telescope.INTEGRATION_S / 86400


def _drift_scan():
    """Metadata of a DSA-110-like drift-scan file: 16 antennas, 5 times, autos included."""
    times = _times(5)
    uvd = synth.phased_uvdata(center=phasing.block_phase_center(float(times.mean()), DEC), sources=[],
                              freqs_hz=synth.subband_freqs(3), times_jd=times, apply_beam=False)
    synth.to_dsa_driftscan(uvd, DEC)
    uvd.uvw_array = uvd.uvw_array.astype(np.float64)
    return uvd


def _two_centres():
    """A sidereal data set whose later times are phased to a second centre, both kept in the catalogue."""
    times = _times(4)
    uvd = synth.phased_uvdata(center=phasing.block_phase_center(float(times.mean()), DEC), sources=[],
                              freqs_hz=synth.subband_freqs(3), times_jd=times, apply_beam=False)
    later = uvd.time_array > times[1]
    uvd.phase(lon=OTHER_CENTER[0], lat=OTHER_CENTER[1], cat_name="other", select_mask=later,
              cleanup_old_sources=False)
    uvd.conjugate_bls(convention=np.nonzero(uvd.ant_1_array != uvd.ant_2_array)[0][::3])  # some ant1 > ant2
    assert len(uvd.phase_center_catalog) == 2
    return uvd


def _assert_same_metadata(a, b):
    """Every UVParameter (and telescope parameter) of ``a`` and ``b`` equal, bit for bit."""
    for obj_a, obj_b, prefix in ((a, b, ""), (a.telescope, b.telescope, "telescope.")):
        for name in obj_a:
            va, vb = getattr(obj_a, name).value, getattr(obj_b, name).value
            if name == "_telescope":
                continue  # compared parameter by parameter
            if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
                assert np.array_equal(np.asarray(va), np.asarray(vb)), prefix + name
            else:
                assert repr(va) == repr(vb), prefix + name


def _phase(uvd, center):
    ra, dec = center
    uvd.phase(lon=ra, lat=dec, epoch="J2000", phase_frame="icrs", cat_type="sidereal",
              cat_name=phasing.phase_center_name(ra, dec), use_ant_pos=True, cleanup_old_sources=True)


@pytest.mark.parametrize("make", [_drift_scan, _two_centres])
@pytest.mark.parametrize("center", [None, OTHER_CENTER], ids=["kept", "rephased"])
def test_per_time_geometry_is_pyuvdatas(make, center):
    uvd = make()
    ref, new = uvd.copy(metadata_only=True), uvd.copy(metadata_only=True)
    phasing.recompute_geometry(ref)
    if center is not None:
        _phase(ref, center)

    small, index = phasing.rows_per_time(new)
    assert small.Nblts == len(np.unique(np.stack([new.time_array, new.phase_center_id_array]), axis=1).T)
    phasing.recompute_geometry(small)
    if center is not None:
        _phase(small, center)
    phasing.spread_geometry(new, small, index)

    _assert_same_metadata(new, ref)  # the UVWs included, bit for bit


def test_antenna_uvws_of_unprojected_rows_are_enu():
    from pyuvdata.utils.phasing import calc_uvw

    uvd = _drift_scan()
    uvd.unproject_phase()
    small, index = phasing.rows_per_time(uvd)
    phasing.recompute_geometry(small)
    enu = calc_uvw(lst_array=uvd.lst_array, use_ant_pos=True, to_enu=True,
                   antenna_positions=uvd.telescope.antenna_positions, antenna_numbers=uvd.telescope.antenna_numbers,
                   ant_1_array=uvd.ant_1_array, ant_2_array=uvd.ant_2_array,
                   telescope_lat=uvd.telescope.location.lat.rad, telescope_lon=uvd.telescope.location.lon.rad)
    np.testing.assert_array_equal(phasing.antenna_uvws(small, index, uvd.ant_1_array, uvd.ant_2_array), enu)


def test_select_rows_is_pyuvdatas_select():
    uvd = _two_centres().copy(metadata_only=True)
    rows = np.array([0, 3, 4, 40, uvd.Nblts - 1])
    ours = phasing.select_rows(uvd, rows)
    theirs = uvd.select(blt_inds=rows, inplace=False, run_check=False)
    _assert_same_metadata(ours, theirs)
    assert ours.Nblts == 5 and ours.Ntimes == len(np.unique(uvd.time_array[rows]))
    assert uvd.Nblts == 4 * uvd.Nbls  # not modified


def test_uvw_check_of_some_rows():
    uvd = _drift_scan()
    phasing.recompute_geometry(uvd)
    rows = np.flatnonzero(uvd.time_array == uvd.time_array.max())
    assert phasing.uvw_check(uvd, rows=rows) == {"max_m": 0.0, "rms_m": 0.0}
    uvd.uvw_array[rows[5]] += [0.003, 0.0, -0.004]  # 5 mm off in one row of the sample
    check = phasing.uvw_check(uvd, rows=rows)
    assert check["max_m"] == pytest.approx(0.005) and check["rms_m"] == pytest.approx(0.005 / math.sqrt(rows.size))
    uvd.uvw_array[0] += 1.0  # outside the sample: not seen
    assert phasing.uvw_check(uvd, rows=rows)["max_m"] == pytest.approx(0.005)
