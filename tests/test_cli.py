"""The command line: --help everywhere, one-line errors with non-zero exits."""

import subprocess
import sys

import pytest

from contimg.cli import build_parser

COMMANDS = [[], ["config"], ["config", "show"], ["simulate"], ["convert"], ["blocks"], ["run"], ["demo"],
            ["status"], ["worker"]]


def contimg(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "contimg.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "contimg")
def test_help_everywhere(cmd):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0


def test_status_unknown_block_and_bad_id(tmp_path):
    env = {"CONTIMG_PATHS__PRODUCTS_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = contimg("status", "--block", "2025-10-05T03:00:00", env=env)
    assert r.returncode == 1 and "unknown block id(s) 2025-10-05T03:00:00" in r.stderr
    r = contimg("status", "--block", "yesterday", env=env)
    assert r.returncode == 1 and "'yesterday' is not of the form" in r.stderr
    r = contimg("status", "--json", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "[]"


def test_malformed_config_exits_nonzero_naming_key(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[pipeline]\nmin_subbands = 0\n")
    r = contimg("--config", str(bad), "config", "show")
    assert r.returncode == 1
    assert r.stderr.strip() == "contimg: pipeline.min_subbands: 0 is outside 1..16"


def test_config_show_json_sources(tmp_path):
    import json

    env = {"CONTIMG_PIPELINE__MIN_SUBBANDS": "9", "PATH": "/usr/bin:/bin"}
    r = contimg("config", "show", "--json", cwd=tmp_path, env=env)
    vals = json.loads(r.stdout)["values"]
    assert vals["pipeline.min_subbands"] == {"value": 9, "source": "env:CONTIMG_PIPELINE__MIN_SUBBANDS"}
    assert vals["imaging.niter"]["source"] == "default"


def test_run_on_empty_or_missing_directory(tmp_path):
    r = contimg("run", str(tmp_path))
    assert r.returncode == 1 and "no subband files" in r.stderr
    r = contimg("run", str(tmp_path / "nope"))
    assert r.returncode == 1 and "nope does not exist" in r.stderr


def test_worker_needs_known_node_and_broker(tmp_path):
    r = contimg("worker", "--node", "node9", cwd=tmp_path)
    assert r.returncode == 1 and "node 'node9' is not in the node map" in r.stderr
    r = contimg("worker", "--node", "node1", cwd=tmp_path)
    assert r.returncode == 1 and "broker.url" in r.stderr


def test_simulate_then_convert_from_the_command_line(tmp_path):
    import json

    r = contimg("simulate", str(tmp_path / "night"), "--preset", "tiny", "--blocks", "1", "--no-gains", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["n_files"] == 16 and summary["n_blocks"] == 1
    files = sorted((tmp_path / "night").glob("*_sb*.hdf5"))
    assert len(files) == 16 and (tmp_path / "night" / "truth.json").is_file()
    r = contimg("convert", str(files[0]), str(tmp_path / "sb.ms"), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["uvw_check_max_m"] < 1e-3 and (tmp_path / "sb.ms").is_dir()
    r = contimg("convert", str(tmp_path / "missing_sb00.hdf5"), str(tmp_path / "x.ms"))
    assert r.returncode == 1 and "missing_sb00.hdf5" in r.stderr and not (tmp_path / "x.ms").exists()


def test_simulate_rejects_a_bad_scenario(tmp_path):
    bad = tmp_path / "night.toml"
    bad.write_text("n_blocks = 'six'\n")
    r = contimg("simulate", str(tmp_path / "out"), "--scenario", str(bad))
    assert r.returncode == 1 and "n_blocks" in r.stderr


def test_ese_detect_on_a_table(tmp_path):
    """`contimg ese detect` finds an injected 40 % dip in a CSV and plots it; a bad table is one clear line."""
    import json

    import numpy as np

    rng = np.random.default_rng(3)
    rows = ["source,time,flux,flux_err"]
    t = np.arange(60.0)
    for k in range(50):
        f = np.full(60, 1.0)
        if k == 7:
            f[20:35] *= 0.6
        f = f + rng.normal(0, 0.01, 60)
        rows += [f"src{k:02d},{ti},{fi:.5f},0.01" for ti, fi in zip(t, f)]
    table = tmp_path / "lc.csv"
    table.write_text("\n".join(rows) + "\n")
    r = contimg("ese", "detect", str(table), "--json", "--plots", str(tmp_path / "plots"))
    assert r.returncode == 0, r.stderr
    cands = json.loads(r.stdout)
    assert [c["source"] for c in cands] == ["src07"]
    assert abs(cands[0]["depth"] - 0.4) < 0.05 and 20 <= cands[0]["start_time"] <= 21
    assert (tmp_path / "plots" / "ese_src07.png").stat().st_size > 1000
    bad = tmp_path / "bad.csv"
    bad.write_text("source,time,flux\nA,1,2\n")
    r = contimg("ese", "detect", str(bad))
    assert r.returncode == 1 and "flux_err" in r.stderr and len(r.stderr.strip().splitlines()) == 1
