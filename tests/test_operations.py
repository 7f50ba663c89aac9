"""Operator workflows on a real local cluster: submit a night and an LST range, dry runs,
double and racing submissions, remap, runs, resubmission of failed blocks (CLI and Python API).

What these check
----------------
- `submit night --dry-run` lists the blocks and submits nothing;
- a night submitted as a run completes; every block is recorded with the run id;
- the same night submitted again does nothing to done blocks; two submissions racing
  queue each block once and leave one row per block;
- `--remap sb12=node1` sends subband 12 to node1's queue and scratch;
- `resubmit --failed --run ID` queues only the failed blocks, as a new run;
- `submit lst` selects blocks by the LST of their mid-time.

The cluster runs the no-op stage set (``pipeline.stage_set = "noop"``): these are
orchestration semantics, and everything but the science (routing, remap, scratch paths,
leases, the database, the minimum of subbands) is the same; tests/test_night.py runs
the science of whole nights on a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from contimg import api
from contimg import database as db
from contimg.simulate import Fault, Scenario, simulate_night
from contimg.submission import block_lst_hours, select_lst, select_night, submit_selection

from conftest import make_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Three tiny blocks; block 1 has only 10 subbands (below the minimum of 12)."""
    base = tmp_path_factory.mktemp("ops")
    data = base / "data" / "2025-10-05"
    faults = tuple(Fault(block=1, subband=sb, kind="drop") for sb in (0, 2, 4, 6, 8, 10))
    simulate_night(Scenario(preset="tiny", n_blocks=3, gains=False, n_random_sources=8, seed=21, faults=faults), data)
    return base


@pytest.fixture(scope="module")
def cluster(night):
    from contimg.cluster import LocalCluster

    cfg = make_config(night, night / "data", stage_set="noop", noop_seconds=0.05)
    with LocalCluster(cfg, night / "cluster") as cl:
        yield cl


def cli(cl, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
    env["CONTIMG_CONFIG"] = str(cl.config_path)
    return subprocess.run([sys.executable, "-m", "contimg.cli", *args], capture_output=True, text=True, env=env,
                          timeout=900)


def test_night_dry_run_then_run_then_again(cluster):
    r = cli(cluster, "submit", "night", "2025-10-05", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    dry = json.loads(r.stdout)
    assert dry["run_id"] is None and [b["outcome"] for b in dry["blocks"]] == ["would queue"] * 3
    assert db.blocks(cluster.config.database_url) == []  # nothing submitted

    r = cli(cluster, "submit", "night", "2025-10-05", "--wait", "--json", "--remap", "sb12=node1")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    assert [b["outcome"] for b in run["blocks"]] == ["queued"] * 3
    assert run["summary"]["n_done"] == 2 and run["summary"]["n_failed"] == 1
    recs = api.status(cluster.config, run_id=run["run_id"])
    assert [r["run_id"] for r in recs] == [run["run_id"]] * 3
    sb12 = [sb for sb in recs[0]["subbands"] if sb["subband"] == 12][0]
    assert sb12["node"] == "node1" and "/node1/" in sb12["ms_path"]
    sb13 = [sb for sb in recs[0]["subbands"] if sb["subband"] == 13][0]
    assert sb13["node"] == "node2"

    # the same night again: done blocks are left alone, the failed one is queued again
    again = json.loads(cli(cluster, "submit", "night", "2025-10-05", "--json", "--wait").stdout)
    outcomes = {b["block_id"]: b["outcome"] for b in again["blocks"]}
    failed_id = recs[1]["block_id"]
    assert [o for b, o in outcomes.items() if b != failed_id] == ["skipped", "skipped"]
    assert outcomes[failed_id] == "queued" and again["summary"]["n_failed"] == 1
    run = again

    # the failed block of that run, resubmitted as a new run, from the CLI and the Python API
    r = cli(cluster, "resubmit", "--failed", "--run", run["run_id"], "--dry-run", "--json")
    assert [b["block_id"] for b in json.loads(r.stdout)["blocks"]] == [failed_id]
    res = api.resubmit_failed(cluster.config, run_id=run["run_id"])
    assert res["run_id"] and [b["block_id"] for b in res["blocks"]] == [failed_id]
    assert res["run_id"] in {r["run_id"] for r in api.runs(cluster.config)}
    from contimg.pipeline import wait

    (rec,) = wait(cluster.config, [failed_id], timeout_s=600)
    assert rec["state"] == "failed" and rec["run_id"] == res["run_id"] and rec["attempts"] == 1


def test_racing_submissions_queue_each_block_once(cluster):
    cfg = cluster.config
    sel = select_night(cfg, "2025-10-05")
    results = []

    def go():
        results.append(submit_selection(cfg, sel, force=True))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queued = [s.block_id for r in results for s in r.submitted if s.outcome == "queued"]
    assert sorted(queued) == sorted(b.block_id for b in sel.blocks)  # each block queued exactly once
    from contimg.pipeline import wait

    wait(cfg, queued, timeout_s=900)
    with db.session(cfg.database_url) as s:
        assert s.query(db.BlockRow).count() == 3
        assert s.query(db.SubbandRow).count() == 3 * 16


def test_lst_selection(cluster):
    cfg = cluster.config
    blocks = select_night(cfg, "2025-10-05").blocks
    lsts = [block_lst_hours(b) for b in blocks]
    lo, hi = lsts[1] - 0.01, lsts[1] + 0.01
    sel = select_lst(cfg, f"{lo:.4f}", f"{hi:.4f}", "2025-10-05")
    assert [b.block_id for b in sel.blocks] == [blocks[1].block_id]
    r = cli(cluster, "submit", "lst", "25h", "2h")
    assert r.returncode == 1 and "outside 0h..24h" in r.stderr
    r = cli(cluster, "submit", "night", "2025-10-05", "--remap", "sb03=node9", "--dry-run")
    assert r.returncode == 1 and "node9" in r.stderr
