"""contimg.config: defaults, file, environment, provenance, rejection naming the key."""

from pathlib import Path

import pytest

from contimg import config
from contimg.errors import ConfigError, PermanentError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.load(env={})
    assert cfg.local
    assert cfg.paths.data_root == tmp_path / "contimg-work" / "data"
    assert set(cfg.nodes) == {"node1", "node2"}
    assert [n.name for n in cfg.imaging_nodes()] == ["node1"]
    assert cfg.node_for_subband(9).name == "node2"
    assert cfg.database_url.startswith("sqlite:///") and cfg.database_url.endswith("contimg.sqlite")
    assert cfg.source["pipeline.min_subbands"] == "default"


def test_file_then_env_precedence_and_sources(tmp_path):
    f = write(tmp_path, """
[paths]
data_root = "raw"
[pipeline]
min_subbands = 10
[broker]
url = "redis://localhost:6379/0"
[nodes.a]
subbands = "0-11"
imaging = true
[nodes.b]
subbands = [12, 13, 14, 15]
scratch_root = "/nvme/b"
""")
    cfg = config.load(f, env={"CONTIMG_PIPELINE__MIN_SUBBANDS": "14", "CONTIMG_NODES__B__IMAGING": "true"})
    assert cfg.paths.data_root == tmp_path / "raw"  # relative to the file
    assert cfg.pipeline.min_subbands == 14
    assert cfg.source["pipeline.min_subbands"] == "env:CONTIMG_PIPELINE__MIN_SUBBANDS"
    assert cfg.source["paths.data_root"] == f"file:{f}"
    assert cfg.nodes["b"].imaging and cfg.scratch_root("b") == Path("/nvme/b")
    assert cfg.scratch_root("a") == cfg.paths.scratch_root / "a"
    assert not cfg.local


@pytest.mark.parametrize(
    "text, key",
    [
        ("[pipline]\nx = 1\n", "pipline"),
        ("[pipeline]\nmin_subband = 3\n", "pipeline.min_subband"),
        ("[pipeline]\nmin_subbands = 'twelve'\n", "pipeline.min_subbands"),
        ("[pipeline]\nmin_subbands = 17\n", "pipeline.min_subbands"),
        ("[broker]\nurl = 'amqp://x'\n", "broker.url"),
        ("[broker]\nvisibility_timeout_s = 10\ntask_time_limit_s = 20\n", "broker.visibility_timeout_s"),
        ("[imaging]\nweighting = 'robust'\n", "imaging.weighting"),
        ("[imaging]\nniter = 0\n", "imaging.niter"),
        ("[imaging]\nwgridder_accuracy = 0.5\n", "imaging.wgridder_accuracy"),
        ("[nodes.a]\nsubbands = '0-15'\n[nodes.b]\nsubbands = [3]\n", "nodes.b.subbands"),
        ("[nodes.a]\nsubbands = '0-14'\nimaging = true\n", "nodes"),
        ("[nodes.a]\nsubbands = '0-15'\n", "nodes"),
        ("[nodes.a]\nsubbands = '0-15'\nimaging = true\ncolour = 'red'\n", "nodes.a.colour"),
        ("[nodes.a]\nsubbands = 'x-y'\nimaging = true\n", "nodes.a.subbands"),
        ("[database]\nurl = 'not a url'\n", "database.url"),
        ("[dispatch]\nlease_s = 600\n", "dispatch.lease_s"),
        ("[dispatch]\nmax_inflight_per_node = 0\n", "dispatch.max_inflight_per_node"),
        ("[calibration]\nmax_offset_deg = 0\n", "calibration.max_offset_deg"),
        ("this is = not toml [", "not valid TOML"),
    ],
)
def test_malformed_config_is_rejected_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text), env={})
    assert key in str(e.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml does not exist"):
        config.load(tmp_path / "nope.toml", env={})


def test_bad_env_override_is_named(tmp_path):
    with pytest.raises(ConfigError, match="CONTIMG_PIPELINE"):
        config.load(env={"CONTIMG_PIPELINE__MIN__SUBBANDS": "3"})


def test_toml_round_trip(tmp_path):
    cfg = config.load(env={"CONTIMG_BROKER__URL": "redis://:pw@127.0.0.1:1234/0",
                           "CONTIMG_PATHS__DATA_ROOT": str(tmp_path / "d")})
    p = config.write(cfg, tmp_path / "eff.toml")
    again = config.load(p, env={})
    assert config.flatten(again) == config.flatten(cfg)


def test_paths_outside_roots_are_refused(tmp_path):
    cfg = config.load(env={"CONTIMG_PATHS__DATA_ROOT": str(tmp_path / "data")})
    ok = config.check_path_in_roots(cfg, tmp_path / "data" / "x_sb00.hdf5")
    assert ok == (tmp_path / "data" / "x_sb00.hdf5").resolve()
    with pytest.raises(PermanentError, match="outside the configured roots"):
        config.check_path_in_roots(cfg, "/etc/passwd")
    with pytest.raises(PermanentError):
        config.check_path_in_roots(cfg, tmp_path / "data" / ".." / "elsewhere")


def test_survey_section_defaults_and_rejections():
    import pytest

    from contimg import config
    from contimg.errors import ConfigError

    cfg = config.load(env={"CONTIMG_SURVEY__MATCH_RADIUS_BEAMS": "0.3"})
    assert cfg.survey.match_radius_beams == 0.3 and cfg.survey.ese_fpr == 1e-4
    assert config.source_of(cfg, "survey.match_radius_beams") == "env:CONTIMG_SURVEY__MATCH_RADIUS_BEAMS"
    for key, value, words in (("MIN_PB", "1.5", "survey.min_pb"), ("ESE_FPR", "2", "survey.ese_fpr"),
                              ("MATCH_RADIUS_BEAMS", "5", "survey.match_radius_beams"),
                              ("REFERENCE_MIN_SNR", "5", "survey.catalogue_min_snr"),
                              ("MIN_REFERENCES", "0", "survey.min_references")):
        with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
            config.load(env={f"CONTIMG_SURVEY__{key}": value})
