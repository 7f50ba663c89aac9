"""`contimg rerun BLOCK [--flags template] [--config changes.toml]`.

What these check
----------------
- flag templates in CASA flagdata list syntax are read line by line; a malformed line,
  an unknown parameter, an unknown mode or a selection-less manual flag is refused with
  the line named; comments and '#' inside quotes are handled;
- a settings file is laid over the site configuration: science keys change for the run,
  site keys (roots, broker, node map) are refused with the key named;
- end to end on a real cluster with real CASA (tiny block): a block is processed, then
  rerun with a template flagging one antenna and a changed cell size; the rerun is a new
  run with its own directory holding flags.txt and the changed config.toml; its image has
  the changed cell; the antenna is flagged in its MS; the first run's products are
  untouched; bad inputs (unknown block, malformed template) exit non-zero with one line
  and queue nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contimg import config as _config
from contimg import database as db
from contimg.errors import ConfigError
from contimg.flagtemplate import FlagTemplateError, parse

from conftest import make_config


def test_template_lines():
    cmds = parse("# bad LNA\nmode='manual' antenna='DSA-017'  # since 03:00\n"
                 "mode='clip' clipminmax=[0.0, 50.0] reason='spike#2'\n\n")
    assert [c.line for c in cmds] == [2, 3]
    assert cmds[1].params["reason"] == "'spike#2'"
    for text, msg in [("mode='manual' antenna='DSA-017'\nmode='manual antenna=x", "line 2: expected key='value'"),
                      ("mode='manual' antena='DSA-017'", "line 1: 'antena' is not a flagdata parameter"),
                      ("mode='banana' antenna='DSA-017'", "line 1: mode 'banana'"),
                      ("mode='manual' reason='x'", "line 1: a manual flag with no selection"),
                      ("# only a comment\n", "no flag command")]:
        with pytest.raises(FlagTemplateError, match=msg):
            parse(text)


def test_settings_overlay(tmp_path):
    cfg = make_config(tmp_path, tmp_path / "data")
    good = tmp_path / "good.toml"
    good.write_text("[imaging]\nrobust = 0.5\ncell_arcsec = 30.0\n[flagging]\nstrategy = \"none\"\n")
    new, changed = _config.run_overlay(cfg, good)
    assert changed == {"imaging.robust": 0.5, "imaging.cell_arcsec": 30.0, "flagging.strategy": "none"}
    assert new.imaging.robust == 0.5 and cfg.imaging.robust == 0.0  # the site's config is not touched
    again = _config.with_overrides(cfg, changed)
    assert again.imaging.cell_arcsec == 30.0 and again.flagging.strategy == "none"
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[paths]\nproducts_root = \"{tmp_path / 'elsewhere'}\"\n")
    with pytest.raises(ConfigError, match="paths.products_root: cannot change for one run"):
        _config.run_overlay(cfg, bad)
    same = tmp_path / "same.toml"
    same.write_text(f"[paths]\nproducts_root = \"{cfg.paths.products_root}\"\n[imaging]\nniter = 10\n")
    assert _config.run_overlay(cfg, same)[1] == {"imaging.niter": 10}  # an unchanged site key is fine
    typo = tmp_path / "typo.toml"
    typo.write_text("[imaging]\nrobustness = 0.5\n")
    with pytest.raises(ConfigError, match="imaging.robustness"):
        _config.run_overlay(cfg, typo)
    with pytest.raises(ConfigError, match="nope.toml does not exist"):
        _config.run_overlay(cfg, tmp_path / "nope.toml")


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_rerun_with_flags_and_settings(tmp_path):
    from contimg.cluster import LocalCluster
    from contimg.pipeline import wait
    from contimg.simulate import Scenario, simulate_night
    from contimg.submission import select_night, submit_selection

    data = tmp_path / "data" / "2025-10-05"
    simulate_night(Scenario(preset="tiny", n_blocks=1, gains=False, n_random_sources=6, seed=8), data)
    cfg = make_config(tmp_path, tmp_path / "data", flagging__strategy="none")
    flags = tmp_path / "flags.txt"
    flags.write_text("# DSA-008 had a bad LNA\nmode='manual' antenna='DSA-008' reason='bad LNA'\n")
    changes = tmp_path / "changes.toml"
    changes.write_text("[imaging]\ncell_arcsec = 33.0\n")
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        c = cl.config
        first = submit_selection(c, select_night(c, "2025-10-05"))
        (block_id,) = [s.block_id for s in first.submitted]
        (rec1,) = wait(c, [block_id], timeout_s=600)
        assert rec1["state"] == "done", rec1["reason"]
        first_image = rec1["products"]["image_fits"]
        assert f"/runs/{first.run_id}/blocks/" in first_image
        sha_before = _sha(first_image)

        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
        env["CONTIMG_CONFIG"] = str(cl.config_path)

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "contimg.cli", *args], capture_output=True, text=True,
                                  env=env, timeout=900, check=False)

        n_runs = len(db.runs(c.database_url))
        r = cli("rerun", "2025-10-05T09:09:09", "--flags", str(flags))
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "unknown block id 2025-10-05T09:09:09" in r.stderr
        broken = tmp_path / "broken.txt"
        broken.write_text("mode='manual' antenna='DSA-008'\nmode='manual' antenna=\n")
        r = cli("rerun", block_id, "--flags", str(broken))
        assert r.returncode == 1 and "broken.txt line 2" in r.stderr
        assert len(db.runs(c.database_url)) == n_runs  # nothing recorded or queued

        r = cli("rerun", block_id, "--flags", str(flags), "--config", str(changes), "--wait", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        run2 = out["run_id"]
        assert run2 != first.run_id and out["summary"]["n_done"] == 1
    run_dir = Path(c.paths.products_root) / "runs" / run2
    assert (run_dir / "flags.txt").read_text() == flags.read_text()
    assert "cell_arcsec = 33.0" in (run_dir / "config.toml").read_text()
    sel = db.runs(c.database_url, run2)[0]["selection"]
    assert sel["overrides"] == {"imaging.cell_arcsec": 33.0} and sel["n_flag_commands"] == 1
    rec2 = db.block(c.database_url, block_id)
    image2 = rec2["products"]["image_fits"]
    assert f"/runs/{run2}/blocks/" in image2
    from astropy.io import fits

    assert abs(abs(fits.getheader(image2)["CDELT2"]) * 3600 - 33.0) < 1e-6
    assert _sha(first_image) == sha_before  # the first run's products are untouched
    details = db.subband_details(c.database_url, [block_id])[block_id]
    assert all(d["flag_template"]["n_commands"] == 1 for d in details.values())
    from casacore.tables import table

    ms = rec2["products"]["concat_ms"]
    with table(f"{ms}/ANTENNA", ack=False) as t:
        ant = list(t.getcol("NAME")).index("DSA-008")
    with table(ms, ack=False) as t:
        a1, a2, flag = t.getcol("ANTENNA1"), t.getcol("ANTENNA2"), t.getcol("FLAG")
    rows = ((a1 == ant) | (a2 == ant)) & (a1 != a2)  # its baselines (a manual antenna flag leaves autos)
    others = (a1 != ant) & (a2 != ant) & (a1 != a2)
    assert rows.any() and flag[rows].all()
    assert np.mean(flag[others]) < 0.5
