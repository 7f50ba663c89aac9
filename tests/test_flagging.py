"""Tests of contimg.flagging: bad values, bad antennas (known and found) and injected RFI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contimg import casa_env, convert, flagging, simulate as sim
from contimg.config import FlaggingConfig
from conftest import make_config

SUBBAND = 0
DEAD, NOISY, KNOWN = 3, 19, 44  # station numbers in the small preset


def test_bad_antennas_for_date():
    entries = ["DSA-003", "2025-10-05:DSA-019", "2025-10-06:DSA-044"]
    assert flagging.bad_antennas_for_date(entries, "2025-10-05") == ["DSA-003", "DSA-019"]
    assert flagging.bad_antennas_for_date(entries, None) == ["DSA-003"]


def test_rfi_commands_follow_the_strategy():
    assert flagging.rfi_commands(FlaggingConfig(strategy="none")) == []
    cmds = flagging.rfi_commands(FlaggingConfig(strategy="tfcrop+rflag", tfcrop_timecutoff=3.5))
    assert [c["mode"] for c in cmds] == ["tfcrop", "rflag"]
    assert cmds[0]["timecutoff"] == 3.5 and all(c["datacolumn"] == "data" and not c["flagbackup"] for c in cmds)


def test_aoflagger_command_is_an_argument_list_with_contimgs_strategy(tmp_path):
    settings = FlaggingConfig(strategy="aoflagger", threads=3)
    cmd = flagging.aoflagger_command(tmp_path / "sb.ms", settings)
    assert cmd[0] == "aoflagger" and cmd[-1] == str(tmp_path / "sb.ms")
    assert cmd[cmd.index("-column") + 1] == "DATA" and cmd[cmd.index("-j") + 1] == "3"
    strategy = Path(cmd[cmd.index("-strategy") + 1])
    assert strategy.name == "aoflagger-dsa110.lua" and strategy.is_file()  # shipped as package data
    assert flagging.rfi_commands(settings) == [] and flagging.rfi_flagdata_call(settings) is None
    own = tmp_path / "site.lua"
    own.write_text("function execute(input) end\n")
    cmd = flagging.aoflagger_command(tmp_path / "sb.ms", FlaggingConfig(strategy="aoflagger", aoflagger_strategy=str(own)))
    assert cmd[cmd.index("-strategy") + 1] == str(own)


def test_aoflagger_strategy_is_the_sites_and_must_exist(tmp_path):
    from contimg.config import ConfigError, validate, with_overrides

    cfg = make_config(tmp_path, tmp_path / "data")
    cfg.flagging.aoflagger_strategy = str(tmp_path / "missing.lua")
    with pytest.raises(ConfigError, match="aoflagger_strategy.*not a file"):
        validate(cfg)
    cfg.flagging.aoflagger_strategy = ""
    own = tmp_path / "run.lua"
    own.write_text("function execute(input) end\n")
    with pytest.raises(ConfigError, match="a run may not change it"):  # a run's message never names a program
        with_overrides(cfg, {"flagging.aoflagger_strategy": str(own)})


@pytest.mark.slow
def test_a_failing_aoflagger_is_a_permanent_error_naming_the_ms(tmp_path, rfi_night):
    from contimg.errors import PermanentError

    truth = json.loads((rfi_night / "data" / "truth.json").read_text())
    ms = tmp_path / "sb.ms"
    convert.convert_subband(rfi_night / "data" / truth["blocks"][0]["subbands"][SUBBAND]["file"], ms)
    broken = tmp_path / "broken.lua"
    broken.write_text("function execute(input)\n  aoflagger.no_such_function(input)\nend\n")
    with pytest.raises(PermanentError, match=r"aoflagger on .*sb\.ms failed"):
        flagging.flag_subband(ms, FlaggingConfig(strategy="aoflagger", aoflagger_strategy=str(broken)))


def test_sumthreshold_finds_injected_rfi_and_spares_noise():
    from contimg import sumthreshold

    rng = np.random.default_rng(7)
    shape = (400, 24, 48)  # planes (baselines), integrations, channels
    amp = np.abs(rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.float32)
    amp += np.linspace(0, 3, 48, dtype=np.float32)[None, None, :]  # a smooth bandpass-like slope
    truth = np.zeros(shape, dtype=bool)
    amp[:, :, 17] += 4.0  # a persistent narrow-band line, ~6 sigma of the amplitude noise
    truth[:, :, 17] = True
    amp[:40, 9:12, 30:34] += 30.0  # a burst on 40 baselines
    truth[:40, 9:12, 30:34] = True
    dead = np.zeros(shape, dtype=bool)
    dead[300:310] = True  # planes already flagged (a dead antenna): kept, not counted
    amp[300:310] = 0.0
    out = sumthreshold.detect(amp, dead, threads=2)
    assert out[dead].all()
    live = ~dead
    recall = out[truth & live].mean()
    false = out[~truth & live].mean()
    print(f"sumthreshold: recall {recall:.4f}, noise flagged {false:.4f}")
    assert recall > 0.99 and false < 0.01
    assert np.array_equal(sumthreshold.detect(amp, dead, threads=1), out)  # threads do not change the answer


def test_sir_operator_closes_gaps_by_the_rule():
    from contimg import sumthreshold

    # eta = 0.2: a sample is flagged when some interval through it is at most 20 % unflagged.
    flags = np.zeros((1, 1, 10), dtype=bool)
    flags[0, 0, [1, 2, 3, 4, 6, 7, 8, 9]] = True  # 2 of 10 unflagged (20 %): the whole line is closed
    amp = np.zeros(flags.shape, dtype=np.float32)
    settings = sumthreshold.SumThresholdSettings(iterations=0, sir_eta=0.2)
    assert sumthreshold.detect(amp, flags, settings)[0, 0].tolist() == [True] * 10  # and the edge sample 0
    flags = np.zeros((1, 1, 10), dtype=bool)
    flags[0, 0, [0, 1, 5, 6]] = True  # gaps of 3: an interval around them is > 20 % unflagged
    assert sumthreshold.detect(amp, flags, settings)[0, 0].tolist() == flags[0, 0].tolist()
    assert sumthreshold.box_half_width(4.7) == 5 and sumthreshold.box_half_width(0.0) == 0


def test_rfi_is_off_by_default_and_recorded(tmp_path):
    assert sim.Scenario().rfi is False
    plan = sim.plan_night(sim.Scenario(preset="small", n_blocks=1, rfi=True, n_random_sources=0))
    a, b = sim.rfi_plan(plan, 0, SUBBAND), sim.rfi_plan(plan, 0, SUBBAND)
    assert a == b and a["channels"] and len(a["bursts"]) == sim.RFI_N_BURSTS  # seeded
    doc = sim.truth_document(plan)
    assert doc["rfi"]["enabled"] and len(doc["rfi"]["files"]) == 16
    assert sim.truth_document(sim.plan_night(sim.Scenario(preset="tiny", n_blocks=1)))["rfi"] == {
        "enabled": False, "files": []
    }


@pytest.fixture(scope="module")
def rfi_night(tmp_path_factory):
    out = tmp_path_factory.mktemp("flag")
    sc = sim.Scenario(preset="small", n_blocks=1, rfi=True, n_random_sources=20)
    sim.simulate_night(sc, out / "data")
    return out


@pytest.fixture(scope="module", params=["sumthreshold", "aoflagger", "tfcrop+rflag"])
def flagged(request, rfi_night):
    """One subband with injected RFI, a dead, a noisy and a known-bad antenna, flagged with each RFI strategy."""
    out = rfi_night
    truth = json.loads((out / "data" / "truth.json").read_text())
    ms = out / f"sb-{request.param.replace('+', '-')}.ms"
    convert.convert_subband(out / "data" / truth["blocks"][0]["subbands"][SUBBAND]["file"], ms)
    # A dead antenna (zeros) and a noisy one (5x the autocorrelation power and noisy crosses).
    tb = casa_env.casatools().table()
    tb.open(str(ms), nomodify=False)
    data, a1, a2 = tb.getcol("DATA"), tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2")
    data[:, :, (a1 == DEAD) | (a2 == DEAD)] = 0
    rng = np.random.default_rng(1)
    noisy = ((a1 == NOISY) | (a2 == NOISY)) & (a1 != a2)
    data[:, :, noisy] += 5 * (rng.standard_normal(data[:, :, noisy].shape) + 1j * rng.standard_normal(data[:, :, noisy].shape))
    data[:, :, (a1 == NOISY) & (a2 == NOISY)] *= 5
    tb.putcol("DATA", data)
    tb.close()
    settings = FlaggingConfig(strategy=request.param, bad_antennas=[f"DSA-{KNOWN:03d}"])
    result = flagging.flag_subband(ms, settings)
    print(request.param, "flag timings", result.seconds)
    rfi = next(f for f in truth["rfi"]["files"] if f["block"] == 0 and f["subband"] == SUBBAND)
    return dict(ms=ms, result=result, rfi=rfi)


@pytest.mark.slow
def test_bad_antennas_are_found(flagged):
    r = flagged["result"]
    assert set(r.bad_antennas) == {f"DSA-{DEAD:03d}", f"DSA-{NOISY:03d}", f"DSA-{KNOWN:03d}"}
    assert "zero" in r.bad_antennas[f"DSA-{DEAD:03d}"]
    assert "autocorrelation" in r.bad_antennas[f"DSA-{NOISY:03d}"]
    assert "known bad" in r.bad_antennas[f"DSA-{KNOWN:03d}"]
    for n in (DEAD, NOISY, KNOWN):
        assert r.per_antenna_after[f"DSA-{n:03d}"] == 1.0
    assert r.fraction_before == 0.0 and r.fraction_after > r.fraction_after_step["autocorrelations"]
    json.dumps(r.as_dict())  # JSON-friendly


@pytest.mark.slow
def test_rfi_is_flagged_and_clean_data_mostly_kept(flagged):
    tb = casa_env.casatools().table()
    tb.open(str(flagged["ms"]))
    flag, a1, a2, t = tb.getcol("FLAG"), tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2"), tb.getcol("TIME")
    tb.close()
    good = ~np.isin(a1, [DEAD, NOISY, KNOWN]) & ~np.isin(a2, [DEAD, NOISY, KNOWN]) & (a1 != a2)
    tidx = np.unique(t, return_inverse=True)[1]
    rfi = flagged["rfi"]
    truth = np.zeros(flag.shape[1:], dtype=bool)  # (channel, row)
    truth[rfi["channels"]] = True
    for burst in rfi["bursts"]:
        rows = np.isin(tidx, burst["times"]) & (np.isin(a1, burst["antennas"]) | np.isin(a2, burst["antennas"]))
        truth[np.ix_(burst["channels"], np.flatnonzero(rows))] = True
    f = flag[0][:, good]
    tr = truth[:, good]
    recall = f[tr].mean()
    false_positive = f[~tr].mean()
    print(f"{flagged['result'].strategy}: RFI recall {recall:.4f}, clean data flagged {false_positive:.4f}")
    assert recall > 0.95  # measured: sumthreshold 1.000, aoflagger 1.000, tfcrop+rflag 0.980
    assert false_positive < 0.05  # measured: sumthreshold 0.014, aoflagger 0.013, tfcrop+rflag 0.015
    # every flag covers all four correlations (RFI in one hand spoils them all)
    assert (flag == flag[:1]).all()
