"""Tests of contimg.simulate and contimg.sky (tiny preset: each night takes seconds)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from contimg import products, sky, telescope as tel
from contimg import simulate as sim

DOCS = Path(__file__).resolve().parents[1] / "docs" / "simulation.md"
CAL = sim.Calibrator(flux_jy=10.0, block=0, dec_deg=55.0, spectral_index=-0.7)


def _night(tmp_path_factory, name: str, **changes):
    """Simulate one tiny block; returns (out_dir, summary, truth)."""
    out = tmp_path_factory.mktemp(name)
    scenario = sim.Scenario(**{"preset": "tiny", "n_blocks": 1, "catalogue_calibrators": False, **changes})
    summary = sim.simulate_night(scenario, out)
    truth = json.loads((out / products.TRUTH_JSON).read_text())
    return out, summary, truth


def _file(out: Path, truth: dict, subband: int) -> Path:
    return out / truth["blocks"][0]["subbands"][subband]["file"]


def _read(path: Path):
    """Read a simulated file as the pipeline must read a real one.

    pyuvdata's check insists on float64 UVWs, and the raw files (like the real
    DSA-110 ones) hold float32: read unchecked, widen, then check.
    """
    from pyuvdata import UVData

    uvd = UVData.from_file(str(path), file_type="uvh5", run_check=False)
    uvd.uvw_array = uvd.uvw_array.astype(np.float64)
    uvd.check(strict_uvw_antpos_check=True)
    return uvd


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Gains and noise on, a few random sources, one dropped and one truncated subband."""
    faults = (sim.Fault(block=0, subband=5, kind="truncate"), sim.Fault(block=0, subband=6, kind="drop"))
    return _night(tmp_path_factory, "night", n_random_sources=5, calibrator=CAL, faults=faults)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """One calibrator, no gains, no noise, no random sources."""
    return _night(tmp_path_factory, "clean", n_random_sources=0, gains=False, noise=False, calibrator=CAL)


# --------------------------------------------------------------------------- format


def test_files_follow_the_raw_format(night):
    out, summary, truth = night
    files = sorted(out.glob("*.hdf5"))
    assert summary["n_files"] == len(files) == 15  # 16 minus the dropped one
    assert summary["n_dropped"] == 1 and summary["n_blocks"] == 1
    assert summary["bytes"] == sum(f.stat().st_size for f in files)
    names = [products.parse_subband_filename(f) for f in files]
    assert all(n is not None for n in names)
    assert sorted(n.subband for n in names) == [sb for sb in range(16) if sb != 6]

    centres = {}
    for f, n in zip(files, names):
        if n.subband == 5:  # truncated
            continue
        with h5py.File(f, "r") as h5:
            hdr = h5["Header"]
            freqs = hdr["freq_array"][()].ravel()
            assert np.all(np.diff(freqs) > 0)
            centres[n.subband] = freqs.mean()
            assert hdr["Ntimes"][()] == 24
            assert np.allclose(hdr["integration_time"][()], 12.884902)
            assert list(hdr["polarization_array"][()]) == [-5, -7, -8, -6]
            assert np.allclose(hdr["channel_width"][()], tel.SUBBAND_WIDTH_HZ / 4)
            assert hdr["uvw_array"].dtype == np.float32
            assert hdr["extra_keywords/phase_center_dec"][()] == pytest.approx(np.radians(54.6))
            assert hdr["telescope_name"][()].decode() == "DSA-110"
            assert h5["Data/visdata"].shape == sim.PRESETS["tiny"].data_shape
    ordered = [centres[sb] for sb in sorted(centres)]
    assert np.all(np.diff(ordered) < 0)  # sb00 is the highest subband
    assert centres[0] == pytest.approx(tel.subband_frequencies(0, 4).mean())


def test_pyuvdata_reads_a_file_and_its_check_passes(night):
    out, _, truth = night
    uvd = _read(_file(out, truth, 0))
    assert uvd.telescope.name == "DSA-110"
    assert list(uvd.telescope.antenna_numbers) == list(sim.PRESETS["tiny"].station_numbers)
    assert list(uvd.telescope.antenna_names[:2]) == ["DSA-001", "DSA-008"]
    assert uvd.Ntimes == 24 and uvd.Npols == 4 and uvd.Nfreqs == 4
    assert uvd.Nbls == 12 * 13 // 2  # autocorrelations included
    (cat,) = uvd.phase_center_catalog.values()
    assert cat["cat_type"] == "driftscan" and cat["cat_frame"] == "altaz"
    assert np.degrees(cat["cat_lon"]) == pytest.approx(0.0)
    assert np.degrees(cat["cat_lat"]) == pytest.approx(90.0 - abs(tel.SITE_LAT_DEG - 54.6))
    assert uvd.phase_center_app_dec == pytest.approx(np.radians(54.6), abs=1e-9)
    loc = tel.site_location()
    assert np.allclose(uvd.telescope._location.xyz(), [loc.x.value, loc.y.value, loc.z.value])


def test_same_seed_gives_identical_files(night, tmp_path):
    out, _, truth = night
    scenario = sim.Scenario.from_dict(truth["scenario"])
    sim.simulate_night(scenario, tmp_path)
    for f in out.iterdir():
        assert f.read_bytes() == (tmp_path / f.name).read_bytes(), f.name


def test_start_jitter_is_within_60_s_and_names_round_down(night):
    _, _, truth = night
    from astropy.time import Time

    block = truth["blocks"][0]
    nominal = Time(block["nominal_start"])
    offsets = []
    for entry in block["subbands"]:
        start = Time(entry["start"])
        offsets.append((start - nominal).sec)
        stamp = products.parse_subband_filename(entry["file"]).timestamp
        assert stamp.replace(tzinfo=None) == start.to_datetime().replace(microsecond=0)
    assert np.all(np.abs(offsets) <= 60.0)
    assert np.std(offsets) > 10.0  # the files really do not share one start


def test_faults_drop_and_truncate(night):
    out, _, truth = night
    status = {e["subband"]: e["status"] for e in truth["blocks"][0]["subbands"]}
    assert status[6] == "dropped" and status[5] == "truncated" and status[0] == "written"
    assert not _file(out, truth, 6).exists()
    truncated, whole = _file(out, truth, 5), _file(out, truth, 4)
    assert truncated.stat().st_size == pytest.approx(0.4 * whole.stat().st_size, rel=0.01)
    with pytest.raises(OSError):
        h5py.File(truncated, "r")
    from pyuvdata import UVData

    with pytest.raises(OSError):
        UVData.from_file(str(truncated), file_type="uvh5")
    assert truth["faults"] == [
        {"block": 0, "subband": 5, "kind": "truncate", "keep_fraction": 0.4},
        {"block": 0, "subband": 6, "kind": "drop", "keep_fraction": 0.4},
    ]
    assert not list(out.glob(".*.partial"))


def test_truth_lists_sources_and_gains(night):
    out, _, truth = night
    assert truth["pointing_dec_deg"] == 54.6
    assert truth["preset"]["name"] == "tiny" and truth["preset"]["n_channels"] == 4
    kinds = [s["kind"] for s in truth["sources"]]
    assert kinds == ["calibrator"] + ["random"] * 5
    cal = truth["sources"][0]
    assert cal["name"] == "CAL1" and cal["dec_deg"] == 55.0 and cal["flux_jy_per_block"] == [10.0]
    with np.load(out / products.TRUTH_GAINS) as g:
        assert list(g["axes"]) == ["block", "antenna", "feed", "subband", "channel"]
        assert g["gains"].shape == (1, 12, 2, 16, 4)
        assert list(g["antenna_numbers"]) == list(sim.PRESETS["tiny"].station_numbers)
        amp = np.abs(g["gains"])
        assert 0.8 < amp.min() and amp.max() < 1.2
        assert np.allclose(g["freq_hz"][7], tel.subband_frequencies(7, 4))


# --------------------------------------------------------------------------- physics


@pytest.fixture(scope="module")
def clean_wide(tmp_path_factory):
    """As ``clean`` on the preset with outriggers (2.3-2.7 km baselines)."""
    return _night(tmp_path_factory, "clean-wide", preset="tiny-wide", n_random_sources=0, gains=False,
                  noise=False, calibrator=CAL)


def test_point_source_phases_to_zero_and_has_the_beam_flux(clean_wide):
    """Rephasing with pyuvdata to the source must leave the source flux, real.

    This checks the sign convention, that the declared driftscan phase centre
    is the one the data are fringe-stopped at, and the beam, against an
    independent astropy AltAz geometry.
    """
    from astropy import units as u
    from astropy.coordinates import AltAz, SkyCoord
    from astropy.time import Time

    out, _, truth = clean_wide
    src = truth["sources"][0]
    for sb in (0, 15):
        uvd = _read(_file(out, truth, sb))
        uvd.phase(lon=np.radians(src["ra_deg"]), lat=np.radians(src["dec_deg"]), cat_name="src", phase_frame="icrs")
        cross = uvd.ant_1_array != uvd.ant_2_array
        xx = uvd.data_array[cross][:, :, 0].reshape(uvd.Ntimes, -1, uvd.Nfreqs)
        assert np.max(np.abs(np.degrees(np.angle(xx)))) < 1.0  # outrigger baselines are ~2.3 km

        times = Time(np.unique(uvd.time_array), format="jd")
        frame = AltAz(obstime=times, location=tel.site_location())
        seen = SkyCoord(src["ra_deg"] * u.deg, src["dec_deg"] * u.deg).transform_to(frame)
        az0, alt0 = sky.meridian_altaz_deg(54.6)
        offset = seen.separation(SkyCoord(az=az0 * u.deg, alt=alt0 * u.deg, frame=frame)).rad
        freqs = uvd.freq_array
        flux = src["flux_jy"] * (freqs / 1.4e9) ** src["spectral_index"]
        expected = flux[None, :] * tel.airy_power_beam(offset[:, None], freqs[None, :])
        assert np.allclose(np.abs(xx), expected[:, None, :], rtol=0.01)
        assert np.argmax(expected[:, 0]) in range(9, 16)  # transits near mid-block

        assert np.all(uvd.data_array[:, :, 1:3] == 0)  # no noise: XY = YX = 0
        autos = uvd.data_array[~cross][:, :, 0].reshape(uvd.Ntimes, -1, uvd.Nfreqs)
        assert np.all(autos.imag == 0)
        assert np.allclose(autos.real, tel.SEFD_JY + expected[:, None, :], rtol=1e-6)


def test_noise_sigma_matches_the_sefd(tmp_path_factory):
    out, _, truth = _night(tmp_path_factory, "noise", n_random_sources=0, gains=False)
    uvd = _read(_file(out, truth, 3))
    sigma = tel.SEFD_JY / np.sqrt(2 * tel.SUBBAND_WIDTH_HZ / 4 * tel.INTEGRATION_S)
    assert truth["noise_sigma_jy"] == pytest.approx(sigma)
    cross = uvd.ant_1_array != uvd.ant_2_array
    vis = uvd.data_array[cross]
    assert np.std(np.concatenate([vis.real.ravel(), vis.imag.ravel()])) == pytest.approx(sigma, rel=0.03)
    autos = uvd.data_array[~cross][:, :, [0, 3]]
    assert np.all(autos.imag == 0)
    assert np.mean(autos.real) == pytest.approx(tel.SEFD_JY, rel=1e-3)
    assert np.std(autos.real) == pytest.approx(np.sqrt(2) * sigma, rel=0.05)


def test_gains_multiply_the_data_as_recorded(clean, tmp_path_factory):
    out_off, _, truth_off = clean
    out_on, _, truth_on = _night(tmp_path_factory, "gains", n_random_sources=0, noise=False, calibrator=CAL)
    sb = 3
    on, off = _read(_file(out_on, truth_on, sb)), _read(_file(out_off, truth_off, sb))
    assert not np.allclose(on.data_array, off.data_array)
    with np.load(out_on / products.TRUTH_GAINS) as f:
        g = f["gains"][0, :, :, sb]  # (antenna, feed, channel)
    index = {n: i for i, n in enumerate(sim.PRESETS["tiny"].station_numbers)}
    a, b = [np.array([index[n] for n in ants]) for ants in (on.ant_1_array, on.ant_2_array)]
    for pol, (p, q) in ((0, (0, 0)), (3, (1, 1))):
        expected = off.data_array[:, :, pol] * g[a, p] * np.conj(g[b, q])
        assert np.allclose(on.data_array[:, :, pol], expected, rtol=1e-4, atol=1e-5)


def test_sky_visibilities_match_the_direct_sum(monkeypatch):
    rng = np.random.default_rng(1)
    positions = rng.uniform(-1500, 1500, (5, 3))
    offsets = rng.normal(0, 0.02, (3, 4, 3))
    flux = rng.uniform(0.1, 5.0, (3, 4, 6))
    freqs = 1.4e9 + np.arange(6) * 2e6
    monkeypatch.setattr(sim, "MAX_PHASOR_ELEMENTS", 100)  # several chunks of integrations
    vis = sim.sky_visibilities(positions, offsets, flux, freqs)
    b = positions[None, :, :] - positions[:, None, :]  # b[a1, a2] = x(a2) - x(a1)
    delay = np.einsum("abi,sti->stab", b, offsets)[:, :, None] / tel.C_M_S  # (s, t, 1, a1, a2)
    phase = 2 * np.pi * delay * freqs[None, None, :, None, None]
    direct = np.sum(flux[..., None, None] * np.exp(1j * phase), axis=0)  # (t, k, a1, a2)
    assert np.allclose(vis, direct, rtol=1e-5, atol=1e-5)


def test_flux_per_block_scales_a_source():
    src = sky.Source("ESE1", 10.0, 55.0, 2.0, -0.5, flux_per_block=(1.0, 0.5))
    freqs = np.array([1.4e9, 2.8e9])
    assert np.allclose(sky.spectral_fluxes([src], freqs, 0), [[2.0, 2.0 * 2**-0.5]])
    assert np.allclose(sky.spectral_fluxes([src], freqs, 1), [[1.0, 2**-0.5]])
    assert src.to_dict(2)["flux_jy_per_block"] == [2.0, 1.0]


def test_calibrator_ra_makes_it_transit_mid_block():
    from astropy import units as u

    scenario = sim.Scenario(preset="tiny", n_blocks=3, n_random_sources=0, calibrator=dataclasses.replace(CAL, block=2))
    cal = sim.plan_night(scenario).sources[0]
    mid = scenario.block_start(2) + 0.5 * tel.BLOCK_DURATION_S * u.s
    direction = sky.itrs_directions([cal.ra_deg], [cal.dec_deg], mid.reshape(1))[0, 0]
    assert abs(np.degrees(sky.hour_angle_rad(direction))) * 3600 < 0.01  # arcsec


# --------------------------------------------------------------------------- scenario


def test_default_scenario_and_random_sky_are_deterministic():
    scenario = sim.Scenario()
    assert (scenario.date, scenario.start, scenario.n_blocks, scenario.dec_deg) == ("2025-10-05", "03:00:00", 6, 54.6)
    assert (scenario.preset, scenario.seed, scenario.gains, scenario.noise) == ("small", 42, True, True)
    a, b = sim.plan_night(scenario), sim.plan_night(scenario)
    # the default night sweeps the synthetic calibrator SIMCAL54, which the catalogue puts on the sky
    assert a.sources == b.sources and [s.name for s in a.sources[:1]] == ["SIMCAL54"]
    assert len(a.sources) == scenario.n_random_sources + 1
    fluxes = np.array([s.flux_jy for s in a.sources[1:]])
    assert fluxes.min() >= sky.RANDOM_FLUX_MIN_JY and fluxes.max() <= sky.RANDOM_FLUX_MAX_JY
    assert np.all(np.abs(np.array([s.dec_deg for s in a.sources]) - 54.6) < 6.0)
    assert len(sim.plan_night(dataclasses.replace(scenario, catalogue_calibrators=False)).sources) == 150
    assert np.array_equal(a.gains, b.gains)


def test_docs_example_scenario_parses(tmp_path):
    text = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.S).group(1)
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    scenario = sim.Scenario.from_toml(path)
    assert scenario.calibrator.block == 3 and scenario.faults[1].kind == "truncate"
    assert scenario.sources[0].flux_per_block == (1.0, 1.0, 0.8, 0.7, 0.8, 1.0)
    assert sim.Scenario.from_dict(scenario.to_dict()) == scenario


@pytest.mark.parametrize(
    "toml, key",
    [
        ("n_blocks = 0", "n_blocks"),
        ("n_blocks = 'six'", "n_blocks"),
        ("dec_deg = -60.0", "dec_deg"),
        ("preset = 'huge'", "preset"),
        ("date = '2025-13-05'", "date"),
        ("start = '3 am'", "start"),
        ("gains = 1", "gains"),
        ("colour = 'blue'", "colour"),
        ("[[faults]]\nblock = 0\nsubband = 16\nkind = 'drop'", "faults[0].subband"),
        ("[[faults]]\nblock = 0\nsubband = 1\nkind = 'delete'", "faults[0].kind"),
        ("[[faults]]\nblock = 9\nsubband = 1\nkind = 'drop'", "faults[0].block"),
        ("[[faults]]\nblock = 0\nsubband = 1\nkind = 'drop'\n" * 2, "faults[1]"),
        ("[[sources]]\nname = 'A'\nra_deg = 10.0\ndec_deg = 50.0", "sources[0].flux_jy"),
        ("[[sources]]\nname = 'A'\nra_deg = 400.0\ndec_deg = 50.0\nflux_jy = 1.0", "sources[0].ra_deg"),
        (
            "[[sources]]\nname = 'A'\nra_deg = 1.0\ndec_deg = 50.0\nflux_jy = 1.0\nflux_per_block = [1.0]",
            "sources[0].flux_per_block",
        ),
        ("[calibrator]\nflux_jy = 5.0", "calibrator.block"),
        (
            "[calibrator]\nflux_jy = 5.0\nblock = 0\n[[sources]]\nname = 'CAL1'\nra_deg = 1.0\ndec_deg = 5.0\nflux_jy = 1.0",
            "sources[0].name",
        ),
        ("[[sources]]\nname = 'SIM0003'\nra_deg = 1.0\ndec_deg = 5.0\nflux_jy = 1.0", "sources[0].name"),
        ("[calibrator]\nflux_jy = 5.0\nblock = 1\nra = 3.0", "calibrator.ra"),
    ],
)
def test_malformed_scenario_names_the_key(tmp_path, toml, key):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ValueError, match=re.escape(repr(key))) as err:
        sim.Scenario.from_toml(path)
    assert str(path) in str(err.value)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("n_blocks = \n")
    with pytest.raises(ValueError, match="broken.toml"):
        sim.Scenario.from_toml(path)


def test_full_preset_sizes():
    full = sim.PRESETS["full"]
    assert full.n_antennas == 117 and full.n_baselines == 6903
    assert full.data_shape == (24 * 6903, 48, 4)
    assert full.channel_width_hz == tel.CHANNEL_WIDTH_HZ
    assert 400e6 < full.file_bytes < 450e6
    small = sim.PRESETS["small"]
    assert small.n_antennas == 24 and small.n_channels == 12
    numbers = {s.number for s in small.stations}
    assert numbers & set(range(1, 52)) and numbers & set(range(52, 103))  # both arms of the T
    assert not numbers & set(range(103, 118))  # core only: small images
    wide = {s.number for s in sim.PRESETS["tiny-wide"].stations}
    assert 117 in wide and len(wide & set(range(103, 118))) == 3
