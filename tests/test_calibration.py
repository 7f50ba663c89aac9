"""Tests of contimg.calibration: caltable selection, and solve + apply against the simulator's truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from contimg import calibration, calibrators, casa_env, convert, flagging, simulate as sim, telescope as tel
from contimg.calibration import CaltableSet, select_caltables
from contimg.config import CalibrationConfig, FlaggingConfig

DAY_S = 86400.0


def _set(t_s, name="A"):
    return CaltableSet(name, 0, f"{name}.bcal", f"{name}.gcal", 2460000.0 + t_s / DAY_S)


# ---------------------------------------------------------------------------
# select_caltables (pure)
# ---------------------------------------------------------------------------


def test_select_before_only():
    sel = select_caltables([_set(-3000, "a"), _set(-500, "b")], 2460000.0, 3600)
    assert [s.block_id for s in sel.sets] == ["b"] and sel.weights == (1.0,)


def test_select_after_only():
    sel = select_caltables([_set(900, "a"), _set(2000, "b")], 2460000.0, 3600)
    assert [s.block_id for s in sel.sets] == ["a"] and sel.weights == (1.0,)


def test_select_both_sides_interpolates():
    sel = select_caltables([_set(-3000, "far"), _set(-600, "b"), _set(1800, "a"), _set(3000, "later")], 2460000.0, 3600)
    assert [s.block_id for s in sel.sets] == ["b", "a"]
    assert sel.weights == pytest.approx((0.75, 0.25))  # the nearer (600 s before) weighs more


def test_select_outside_window_gives_none():
    sel = select_caltables([_set(-4000), _set(5000)], 2460000.0, 3600)
    assert not sel and sel.sets == () and sel.as_dict() == {"sets": [], "weights": []}
    assert not select_caltables([], 2460000.0, 3600)
    # One side inside the window, the other outside: the valid one only.
    sel = select_caltables([_set(-4000, "old"), _set(100, "new")], 2460000.0, 3600)
    assert [s.block_id for s in sel.sets] == ["new"]


def test_select_exact_time():
    sel = select_caltables([_set(0, "same"), _set(600, "a")], 2460000.0, 3600)
    assert [s.block_id for s in sel.sets] == ["same"] and sel.weights == (1.0,)


# ---------------------------------------------------------------------------
# solve and apply on simulated data
# ---------------------------------------------------------------------------

# Block 0 holds the transit of the catalogued SIMCAL54 (it transits at 03:18:02, the
# block runs 03:15:28-03:20:37); block 1 is the target. One subband keeps it fast.
SUBBAND = 0


def _scenario(**kw):
    return sim.Scenario(
        preset="tiny", date="2025-10-05", start="03:15:28", n_blocks=2, n_random_sources=0,
        calibrator=sim.Calibrator(name="SIMCAL54"), **kw,
    )


def _convert(out, name, scenario):
    data = out / name
    sim.simulate_night(scenario, data)
    truth = json.loads((data / "truth.json").read_text())
    ms = []
    for b in truth["blocks"]:
        from astropy.time import Time

        mid = Time(b["nominal_start"], scale="utc").jd + 0.5 * tel.BLOCK_DURATION_S / DAY_S
        f = b["subbands"][SUBBAND]["file"]
        ms.append(out / f"{name}_b{b['index']}.ms")
        convert.convert_subband(data / f, ms[-1], block_mid_jd=mid)
    return data, ms, truth


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal")
    data, (cal_ms, target_ms), truth = _convert(out, "gains", _scenario())
    _, (_, truth_target_ms), _ = _convert(out, "nogains", _scenario(gains=False))
    cal = calibrators.get("SIMCAL54")
    found = calibrators.calibrators_in_block(
        _mid(truth, 0), math.radians(truth["pointing_dec_deg"]), CalibrationConfig().min_apparent_jy
    )
    assert [f.calibrator.name for f in found] == ["SIMCAL54"]
    fl = flagging.flag_subband(cal_ms, FlaggingConfig(strategy="none"))
    assert fl.fraction_after == 0.0
    block_id = truth["blocks"][0]["subbands"][0]["file"][:19]
    solved = calibration.solve_subband(cal_ms, cal, CalibrationConfig(), out / "products", block_id=block_id,
                                       subband=SUBBAND)
    sel = select_caltables([solved.caltables], _mid(truth, 1), CalibrationConfig().validity_window_s)
    applied = calibration.apply_subband(target_ms, sel)
    print("timings: flag", fl.seconds, "solve", solved.seconds, "apply", applied.seconds)
    return dict(data=data, truth=truth, solved=solved, target=target_ms, truth_target=truth_target_ms, out=out)


def _mid(truth, block):
    from astropy.time import Time

    return Time(truth["blocks"][block]["nominal_start"], scale="utc").jd + 0.5 * tel.BLOCK_DURATION_S / DAY_S


def _read(ms, column):
    tb = casa_env.casatools().table()
    tb.open(str(ms))
    try:
        return tb.getcol(column), tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2"), tb.getcol("FLAG")
    finally:
        tb.close()


@pytest.mark.slow
def test_solved_gains_match_truth(calibrated):
    solved = calibrated["solved"]
    ct = casa_env.casatools()
    tables = {}
    for kind, path in (("B", solved.caltables.bandpass), ("G", solved.caltables.gain)):
        tb = ct.table()
        tb.open(path)
        tables[kind] = (tb.getcol("CPARAM"), tb.getcol("ANTENNA1"), tb.getcol("FLAG"))
        tb.close()
    bp, ants, bflag = tables["B"]
    g = tables["G"][0]
    npz = np.load(calibrated["data"] / "truth_gains.npz")
    numbers = list(npz["antenna_numbers"])
    truth = npz["gains"][0, :, :, SUBBAND, :]  # antenna, feed, channel (ascending frequency)
    # pyuvdata's MS ANTENNA table is indexed by station number.
    rows = [int(np.flatnonzero(ants == n)[0]) for n in numbers]
    assert not bflag[:, :, rows].any()
    solution = (bp[:, :, rows] * g[:, :, rows]).transpose(2, 0, 1)  # antenna, feed, channel
    # CASA's gain convention is the complex conjugate of the simulator's (docs/calibration.md).
    solution = np.conj(solution)
    ref = numbers.index(int(solved.refant.split("-")[1]))
    truth_ref = truth / (truth[ref] / np.abs(truth[ref]))[None]
    ratio = solution / truth_ref
    amp_err, phase_err = np.abs(np.abs(ratio) - 1), np.degrees(np.abs(np.angle(ratio)))
    print(f"gain errors: amplitude max {100 * amp_err.max():.2f} %, phase max {phase_err.max():.2f} deg")
    assert amp_err.max() < 0.03
    assert phase_err.max() < 3.0
    assert solved.flagged_solutions == {"bandpass": 0.0, "gain": 0.0}
    assert 0.9 < solved.model["beam_min"] <= solved.model["beam_max"] <= 1.0


@pytest.mark.slow
def test_calibrated_target_matches_gain_free_truth(calibrated):
    corrected, a1, a2, flag = _read(calibrated["target"], "CORRECTED_DATA")
    raw = _read(calibrated["target"], "DATA")[0]
    clean = _read(calibrated["truth_target"], "DATA")[0]
    cross = a1 != a2
    par = [0, 3]
    err = np.abs(corrected[par][:, :, cross] - clean[par][:, :, cross])
    scale = np.abs(clean[par][:, :, cross])
    before = np.median(np.abs(raw[par][:, :, cross] - clean[par][:, :, cross]) / scale)
    after = np.median(err / scale)
    print(f"target |V_cal - V_true| / |V_true|: median {after:.4f} (uncalibrated {before:.3f})")
    # Same noise realisation in both simulations, so only the gain errors remain.
    assert after < 0.02 and before > 0.5
    assert not flag.any()


@pytest.mark.slow
def test_two_sets_interpolate(calibrated, tmp_path):
    """Two identical sets on both sides give the same correction as one."""
    import shutil

    s = calibrated["solved"].caltables
    later = CaltableSet(s.block_id, s.subband, s.bandpass, s.gain, s.time_jd + 600 / DAY_S, s.calibrator)
    target_mid = s.time_jd + 300 / DAY_S
    sel = select_caltables([s, later], target_mid, 3600)
    assert len(sel.sets) == 2 and sel.weights == pytest.approx((0.5, 0.5))
    ms = tmp_path / "t.ms"
    shutil.copytree(calibrated["target"], ms)
    calibration.apply_subband(ms, sel)
    two = _read(ms, "CORRECTED_DATA")[0]
    one = _read(calibrated["target"], "CORRECTED_DATA")[0]
    assert np.allclose(two, one, rtol=1e-4, atol=1e-4)
    assert not (ms.parent / ".t.ms.caltables").exists()


def test_apply_without_caltables_is_permanent(tmp_path):
    from contimg.errors import PermanentError

    with pytest.raises(PermanentError, match="no valid caltables"):
        calibration.apply_subband(tmp_path / "x.ms", select_caltables([], 2460000.0, 10))
