"""Tests of contimg.calibrators: the catalogue and which calibrators a block's beam sees."""

from __future__ import annotations

import math

import pytest

from contimg import calibrators, products, simulate as sim, telescope as tel


def _block_mid_jd(scenario, block):
    from astropy import units as u

    return (scenario.block_start(block) + 0.5 * tel.BLOCK_DURATION_S * u.s).jd


def test_catalogue_has_the_real_and_the_simulated_calibrators():
    names = {c.name for c in calibrators.catalogue()}
    assert {"3C48", "3C138", "3C147", "3C196", "3C286", "3C295", "J1459+7140", "SIMCAL54", "SIMCAL16"} <= names
    c = calibrators.get("3c295")  # case-insensitive
    assert c.dec_deg == pytest.approx(52.2025) and c.kind == "real"
    assert c.flux_at(1.4e9) == pytest.approx(c.flux_jy)
    assert calibrators.lookup("NOPE") is None
    with pytest.raises(KeyError, match="SIMCAL54"):
        calibrators.get("NOPE")


def test_simulated_calibrator_transits_in_block_3_of_the_default_night():
    sc = sim.Scenario(n_blocks=6, n_random_sources=0)
    found = calibrators.calibrators_in_block(_block_mid_jd(sc, 3), math.radians(sc.dec_deg), 5.0)
    assert [f.calibrator.name for f in found] == ["SIMCAL54"]
    f = found[0]
    # Near transit: only the ~0.2 deg between the ICRS and the of-date declination attenuates it.
    assert f.min_offset_deg < 0.3
    expected = 25.0 * (calibrators.BAND_CENTRE_HZ / 1.4e9) ** -0.5
    assert 0.9 * expected < f.apparent_jy <= expected
    # Two blocks later (10 minutes, ~1.5 deg of drift at transit) the beam has moved on.
    later = calibrators.calibrators_in_block(_block_mid_jd(sc, 5), math.radians(sc.dec_deg), 0.0)
    assert later and later[0].apparent_jy < 0.7 * f.apparent_jy and later[0].min_offset_deg > 1.0
    # A much higher threshold: not a calibrator block.
    assert calibrators.calibrators_in_block(_block_mid_jd(sc, 3), math.radians(sc.dec_deg), 100.0) == []
    # Another pointing declination does not see it.
    assert calibrators.calibrators_in_block(_block_mid_jd(sc, 3), math.radians(16.3), 5.0)[0].calibrator.name == (
        "SIMCAL16"
    )


def test_scenario_calibrator_by_catalogue_name():
    sc = sim.Scenario(preset="tiny", n_blocks=1, n_random_sources=0, calibrator=sim.Calibrator(name="SIMCAL54"))
    src = sim.plan_night(sc).sources[0]
    entry = calibrators.get("SIMCAL54")
    assert (src.name, src.ra_deg, src.dec_deg, src.flux_jy, src.spectral_index) == (
        "SIMCAL54", entry.ra_deg, entry.dec_deg, entry.flux_jy, entry.spectral_index,
    )
    # A name that is not catalogued still needs a flux and a block.
    with pytest.raises(ValueError, match="calibrator.flux_jy"):
        sim.Scenario(calibrator=sim.Calibrator(name="CALX", block=0))


def test_caltable_names_round_trip(tmp_path):
    p = products.caltable(tmp_path, "2025-10-05T03:15:02", 7, "bandpass")
    assert p == tmp_path / "2025-10-05" / "2025-10-05T03:15:02" / "caltables" / "2025-10-05T03:15:02_sb07.bcal"
    assert products.parse_caltable(p) == ("2025-10-05T03:15:02", 7, "bandpass")
    assert products.parse_caltable(products.caltable(tmp_path, "2025-10-05T03:15:02", 7, "gain"))[2] == "gain"
    assert products.parse_caltable("x.ms") is None
    with pytest.raises(ValueError):
        products.caltable(tmp_path, "2025-10-05T03:15:02", 7, "delay")


def test_synthetic_calibrators_can_be_left_out(tmp_path, monkeypatch):
    """``calibration.include_synthetic_calibrators = false``: SIMCAL54's transit is no calibrator block."""
    from contimg import config

    sc = sim.Scenario(n_blocks=6, n_random_sources=0)
    mid, dec = _block_mid_jd(sc, 3), math.radians(sc.dec_deg)
    assert [f.calibrator.name for f in calibrators.calibrators_in_block(mid, dec, 5.0)] == ["SIMCAL54"]
    assert calibrators.calibrators_in_block(mid, dec, 5.0, include_synthetic=False) == []
    assert calibrators.calibrator_for_block(mid, dec, 5.0, 0.3).calibrator.name == "SIMCAL54"
    assert calibrators.calibrator_for_block(mid, dec, 5.0, 0.3, include_synthetic=False) is None
    # The configuration switch: on by default (the simulated demo and tests need SIMCAL*), off from the env.
    monkeypatch.chdir(tmp_path)
    assert config.load(env={}).calibration.include_synthetic_calibrators is True
    off = config.load(env={"CONTIMG_CALIBRATION__INCLUDE_SYNTHETIC_CALIBRATORS": "false"})
    assert off.calibration.include_synthetic_calibrators is False
