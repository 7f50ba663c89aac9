"""docs/notebooks/resubmit_failed.ipynb, executed against a real local cluster.

What this checks
----------------
A night of three blocks runs with the no-op stage set and block 1 fails (six of its
subband files are empty, leaving 10 of 16, below pipeline.min_subbands). The files are
then repaired, a `contimg dispatch` service runs in its own process, and the notebook,
executed cell by cell in a real Jupyter kernel, finds the run, prints the reasons,
does a dry run, resubmits the failed block as a new run and waits for it: the block ends
done, the new run is recorded, and the notebook says nothing is still failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contimg import api
from contimg import database as db

from conftest import make_config

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "resubmit_failed.ipynb"
DATE = "2025-10-05"
EMPTY = {(1, sb) for sb in (0, 2, 4, 9, 11, 13)}


def test_resubmit_notebook(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a test dependency (pip install -e '.[test]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is a test dependency (pip install -e '.[test]')")
    from contimg.cluster import LocalCluster
    from contimg.noop import write_night
    from contimg.pipeline import wait
    from contimg.submission import select_night, submit_selection

    data = tmp_path / "data" / DATE
    ids = write_night(data, DATE, 3, empty=EMPTY)
    cfg = make_config(tmp_path, tmp_path / "data", stage_set="noop", dispatch__node_check_s=0)
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        first = submit_selection(cl.config, select_night(cl.config, DATE))
        recs = wait(cl.config, ids, timeout_s=120)
        assert [r["state"] for r in recs] == ["done", "failed", "done"], [r["reason"] for r in recs]

        write_night(data, DATE, 3)  # the operator re-copies the files
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
        env["CONTIMG_CONFIG"] = str(cl.config_path)
        dispatcher = subprocess.Popen([sys.executable, "-m", "contimg.cli", "dispatch"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            monkeypatch.setenv("CONTIMG_CONFIG", str(cl.config_path))
            for key in [k for k in os.environ if k.startswith("CONTIMG_") and k != "CONTIMG_CONFIG"]:
                monkeypatch.delenv(key)
            nb = nbformat.read(NOTEBOOK, as_version=4)
            nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                    resources={"metadata": {"path": str(tmp_path)}}).execute()
        finally:
            dispatcher.terminate()
            dispatcher.wait(20)
        runs = api.runs(cl.config)
    out = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"run to repair: {first.run_id}" in out
    assert "10 of 16 subbands" in out and "is empty" in out
    assert f"{ids[1]} would queue" in out
    assert "still failed: none" in out
    assert db.block(cfg.database_url, ids[1])["state"] == "done"
    assert runs[0]["kind"] == "resubmit" and runs[0]["block_ids"] == [ids[1]]
