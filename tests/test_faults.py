"""Faults a real cluster has, rehearsed with real processes: a real redis-server, real Celery
workers in separate processes, the real dispatcher.

The six faults of the operations issue and where each is checked
---------------------------------------------------------------
1. SIGKILL of the worker process that converts a subband (real conversion, CASA):
   ``test_sigkill_worker_mid_convert`` -- the night completes, every block is done, one
   product row per product and block, no partial file left anywhere.
2. redis-server stopped and restarted (append-only file on) in the middle of a night:
   ``test_redis_restart_mid_night`` -- every block completes, each subband ran once per block.
3. A truncated and a missing subband: ``test_truncated_and_missing_subbands`` here (the
   block completes from the rest, the failed subband carries its reason, the other blocks
   are unaffected) and, with real files and CASA, ``test_night.py::test_faulty_night``.
4. The same night submitted twice and two racing submissions:
   ``test_operations.py::test_night_dry_run_then_run_then_again`` and
   ``test_operations.py::test_racing_submissions_queue_each_block_once``.
5. A node whose worker is down: ``test_node_down_blocks_wait_then_complete`` -- the block
   waits with the node named in its reason (status shows it), keeps its lease (it is not
   handed out again although the lease is short), and completes when the worker returns.
6. A worker that hangs: ``test_hung_task_ends_at_time_limit`` -- the soft time limit
   ends the task, the subband is failed with the limit in its reason, the block fails
   with the reason, and the worker goes on to the next block.

Tests other than 1 use the no-op stage set (``pipeline.stage_set = "noop"``): the whole
orchestration (chords, routing, leases, database) with the science replaced by a check
of the input file and a sleep, so that they take seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import make_config

from contimg import database as db

pytestmark = pytest.mark.slow

DATE = "2025-10-05"


def noop_night(data: Path, n_blocks: int, *, skip=(), empty=()) -> list[str]:
    """Subband files for the no-op stage set; ``skip``/``empty``: (block index, subband) pairs."""
    from contimg.noop import write_night

    return write_night(data, DATE, n_blocks, skip=skip, empty=empty)


def submit_night(cfg):
    from contimg.submission import select_night, submit_selection

    res = submit_selection(cfg, select_night(cfg, DATE))
    return res.run_id, [s.block_id for s in res.submitted if s.outcome == "queued"]


def partial_files(*roots: Path) -> list[Path]:
    """Anything left under a temporary (``.NAME.partial``) or set-aside (``.NAME.old``) name."""
    return [p for r in roots if r.exists() for p in r.rglob(".*") if p.name.endswith((".partial", ".old"))]


def cli_json(cluster, *args) -> dict | list:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
    env["CONTIMG_CONFIG"] = str(cluster.config_path)
    r = subprocess.run([sys.executable, "-m", "contimg.cli", *args, "--json"], capture_output=True, text=True,
                       env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# -- 1 ---------------------------------------------------------------------------------


def test_sigkill_worker_mid_convert(tmp_path):
    """SIGKILL the pool process of node2's worker while it writes a subband MS: the message is
    requeued (late ack, reject on worker lost), the subband is converted again, the night completes."""
    from contimg.cluster import LocalCluster
    from contimg.pipeline import wait
    from contimg.simulate import Scenario, simulate_night

    data = tmp_path / "data" / DATE
    simulate_night(Scenario(preset="tiny", n_blocks=2, gains=False, n_random_sources=6, seed=5), data)
    cfg = make_config(tmp_path, tmp_path / "data", flagging__strategy="none")
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        cfg = cl.config
        _, ids = submit_night(cfg)
        assert len(ids) == 2
        killed = []

        def kill_when_converting():
            scratch = cfg.scratch_root("node2")
            t0 = time.monotonic()
            while time.monotonic() - t0 < 300:
                if any(p.name.endswith(".ms.partial") for p in scratch.rglob("*.partial")):
                    for pid in cl.worker_children("node2"):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_converting)
        killer.start()
        recs = wait(cfg, ids, timeout_s=900)
        killer.join()
        assert killed, "no conversion on node2 was caught in progress; the fault was not injected"
        assert cl.workers["node2"].poll() is None, "the worker's main process must survive its pool process"
        assert [r["state"] for r in recs] == ["done", "done"], [r["reason"] for r in recs]
        assert cl.wait_idle(60)
        with db.session(cfg.database_url) as s:
            assert s.query(db.SubbandRow).count() == 2 * 16
            kinds = [(p.block_id, p.kind) for p in s.query(db.ProductRow)]
        assert len(kinds) == len(set(kinds)), "a product is registered twice"
        for r in recs:
            assert r["products"]["image_fits"] and Path(r["products"]["image_fits"]).is_file()
        assert partial_files(cfg.paths.products_root, cfg.paths.scratch_root) == []
        log = (tmp_path / "cluster" / "logs" / "worker-node2.log").read_text()
        assert "WorkerLostError" in log or "signal 9" in log or "SIGKILL" in log


# -- 2 ---------------------------------------------------------------------------------


def test_redis_restart_mid_night(tmp_path):
    """Stop redis-server once the first blocks are done and start it again 3 s later: the
    queued blocks, the messages in the node queues and the chord counters were in the
    append-only file; the night completes and no subband runs twice."""
    from contimg.cluster import LocalCluster
    from contimg.pipeline import wait

    ids = noop_night(tmp_path / "data" / DATE, 8)
    cfg = make_config(tmp_path, tmp_path / "data", stage_set="noop", noop_seconds=0.3,
                      dispatch__max_inflight_per_node=2, dispatch__node_check_s=0)
    with LocalCluster(cfg, tmp_path / "cluster", appendonly=True) as cl:
        cfg = cl.config
        _, queued = submit_night(cfg)
        assert queued == ids
        outage, result = {}, {}

        def wait_for_night():  # in a thread: the restart below must come from the main thread,
            # which outlives the new redis-server (its parent-death signal follows the starting thread)
            result["recs"] = wait(cfg, ids, timeout_s=300)

        waiter = threading.Thread(target=wait_for_night)
        waiter.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and waiter.is_alive():
            states = db.states(cfg.database_url, ids)
            if sum(s == "done" for s in states.values()) >= 2:
                outage["done_before"] = sum(s == "done" for s in states.values())
                cl.restart_redis(down_s=3.0)
                outage["restarted"] = True
                break
            time.sleep(0.1)
        waiter.join()
        recs = result["recs"]
        assert outage.get("restarted"), "redis was never restarted; the fault was not injected"
        assert outage["done_before"] < len(ids), "the night ended before the outage"
        assert [r["state"] for r in recs] == ["done"] * len(ids), [r["reason"] for r in recs]
        with db.session(cfg.database_url) as s:
            rows = s.query(db.SubbandRow).all()
            assert len(rows) == 16 * len(ids)
            assert all(r.state == db.SB_OK for r in rows)
        assert all(r["attempts"] == 1 for r in recs), [r["attempts"] for r in recs]


# -- 3 ---------------------------------------------------------------------------------


def test_truncated_and_missing_subbands(tmp_path):
    """Block 0 lacks sb03 and has an empty sb05: it completes from 14 subbands and says so;
    block 1 is intact and unaffected."""
    from contimg.cluster import LocalCluster
    from contimg.pipeline import wait

    ids = noop_night(tmp_path / "data" / DATE, 2, skip={(0, 3)}, empty={(0, 5)})
    cfg = make_config(tmp_path, tmp_path / "data", stage_set="noop", dispatch__node_check_s=0)
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        _, queued = submit_night(cl.config)
        recs = wait(cl.config, queued, timeout_s=120)
        status = cli_json(cl, "status", "--block", ids[0])
    assert [r["state"] for r in recs] == ["done", "done"]
    assert recs[0]["n_subbands_ok"] == 14 and recs[1]["n_subbands_ok"] == 16
    assert "sb03: missing from the block" in recs[0]["reason"] and "sb05" in recs[0]["reason"]
    assert recs[1]["reason"] == "no-op stage set: nothing imaged"
    sbs = {s["subband"]: s for s in status[0]["subbands"]}
    assert sbs[5]["state"] == "failed" and "is empty" in sbs[5]["reason"]
    assert sbs[3]["state"] == "failed" and sbs[3]["reason"] == "missing from the block"


# -- 5 ---------------------------------------------------------------------------------


def test_node_down_blocks_wait_then_complete(tmp_path):
    """node2's worker is down when the night is submitted. Its subbands wait in its queue;
    the dispatcher sees no worker answering for node2, keeps the block's lease (which is
    short: 25 s, one attempt, so a reaped block would fail) and shows the wait in the
    block's reason. When the worker starts, the blocks complete."""
    from contimg.cluster import LocalCluster
    from contimg.pipeline import Dispatcher, wait

    ids = noop_night(tmp_path / "data" / DATE, 2)
    cfg = make_config(tmp_path, tmp_path / "data", stage_set="noop", broker__task_time_limit_s=20,
                      dispatch__lease_s=25, dispatch__max_attempts=1, dispatch__node_check_s=1)
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        cfg = cl.config
        cl.stop_worker("node2")
        submit_night(cfg)
        disp = Dispatcher(cfg)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 35:  # longer than the lease
            disp.step()
            time.sleep(0.5)
        recs = db.blocks(cfg.database_url, ids)
        assert [r["state"] for r in recs] == ["running", "running"], [(r["state"], r["reason"]) for r in recs]
        assert all("waiting for node node2" in (r["reason"] or "") for r in recs)
        status = cli_json(cl, "status", "--block", ids[0])
        assert "waiting for node node2" in status[0]["reason"]
        sbs = {s["subband"]: s["state"] for s in status[0]["subbands"]}
        assert all(sbs.get(sb) == "ok" for sb in range(8)), sbs  # node1 did its part
        assert all(sbs.get(sb) in (None, "queued") for sb in range(8, 16)), sbs
        nodes = {n["node"]: n for n in cli_json(cl, "nodes")["nodes"]}
        assert nodes["node1"]["up"] and not nodes["node2"]["up"]
        assert nodes["node2"]["queued_tasks"] == 16  # 8 subbands of each block wait in its queue
        assert nodes["node1"]["blocks_in_flight"] == ids

        cl.start_worker("node2")
        cl.wait_ready()
        recs = wait(cfg, ids, timeout_s=120, dispatcher=disp)
    assert [r["state"] for r in recs] == ["done", "done"], [r["reason"] for r in recs]
    assert all(r["attempts"] == 1 for r in recs)


# -- 6 ---------------------------------------------------------------------------------


def test_hung_task_ends_at_time_limit(tmp_path):
    """Every subband stage of block 0 hangs (sleeps 60 s) under a 6 s task time limit (3 s
    soft): each is ended at 3 s and failed with the limit in its reason, the block fails with
    the reason, and the workers are free again."""
    from contimg.cluster import LocalCluster
    from contimg.pipeline import wait

    noop_night(tmp_path / "data" / DATE, 1)
    cfg = make_config(tmp_path, tmp_path / "data", stage_set="noop", noop_seconds=60,
                      broker__task_time_limit_s=6, dispatch__lease_s=30, dispatch__node_check_s=0)
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        t0 = time.monotonic()
        _, queued = submit_night(cl.config)
        recs = wait(cl.config, queued, timeout_s=120)
        wall = time.monotonic() - t0
        assert cl.wait_idle(30)
        assert all(p.poll() is None for p in cl.workers.values()), "a worker died"
    (rec,) = recs
    assert rec["state"] == "failed"
    assert "only 0 of 16 subbands" in rec["reason"] and "exceeded its time limit (3 s" in rec["reason"]
    assert wall < 16 * 60 / 2, "the hung stages were not ended by the time limit"
