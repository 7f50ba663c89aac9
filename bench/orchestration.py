"""Overhead of orchestration per block: chords, dispatch and database updates (issue 5).

    .venv/bin/python bench/orchestration.py [--blocks 100] [--k 4] [--repeat 3] [--out DIR]

A night of ``--blocks`` blocks of 16 subbands runs on a private local cluster
(a real redis-server and two worker processes: node1 holds sb00-07 and images,
node2 holds sb08-15) with the no-op stage set (``pipeline.stage_set = "noop"``,
0 s per stage): every subband task still checks its lease, records its state
in the products database and returns its result to the chord, and every
callback records the block and frees its slot; only the science is gone. So
the wall time per block is the orchestration's overhead.

Two ways in the same run, on the same cluster, each on its own copy of the night:

- baseline: every block's chord sent at once, no work queue, no leases
  (the flood that dynamic dispatch exists to avoid);
- dispatch: ``contimg submit night`` semantics: a recorded run, blocks in the
  Redis work queue, at most K blocks in flight per imaging node, leases.

Runs ``--repeat`` rounds of both (new nights each round) and prints each round, the
medians, the ratio, and last ``ms_per_block=...``: the median for dispatch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from datetime import date as date_cls, timedelta
from pathlib import Path

from contimg import config as _config
from contimg import database as db
from contimg.blocks import discover
from contimg.cluster import LocalCluster
from contimg.noop import write_night
from contimg.pipeline import Dispatcher, build_chord, block_spec, wait
from contimg.submission import select_night, submit_selection


def make_config(base: Path, k: int) -> _config.Config:
    env = {
        "CONTIMG_PATHS__DATA_ROOT": str(base / "data"),
        "CONTIMG_PATHS__PRODUCTS_ROOT": str(base / "products"),
        "CONTIMG_PATHS__ARCHIVE_ROOT": str(base / "archive"),
        "CONTIMG_PATHS__SCRATCH_ROOT": str(base / "scratch"),
        "CONTIMG_PIPELINE__STAGE_SET": "noop",
        "CONTIMG_PIPELINE__NOOP_SECONDS": "0",
        "CONTIMG_DISPATCH__MAX_INFLIGHT_PER_NODE": str(k),
        "CONTIMG_DISPATCH__POLL_S": "0.05",
        "CONTIMG_DISPATCH__NODE_CHECK_S": "0",
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("CONTIMG_") and k not in env})
    return _config.load(path=None, env=env)


def run_baseline(cfg: _config.Config, data_dir: Path) -> tuple[float, int]:
    """All chords at once, without the work queue; returns (wall s, blocks done)."""
    blocks = discover(data_dir).blocks
    url = cfg.database_url
    t0 = time.perf_counter()
    for b in blocks:
        db.upsert_block(url, b.block_id, state=db.QUEUED, data_dir=str(data_dir), mid_jd=b.mid_jd,
                        n_subbands_found=len(b.files), submitted_at=db.utcnow())
        build_chord(cfg, block_spec(b, data_dir), cfg.imaging_nodes()[0].name).apply_async()
    recs = wait(cfg, [b.block_id for b in blocks], poll_s=0.05, timeout_s=3600)
    return time.perf_counter() - t0, sum(r["state"] == db.DONE for r in recs)


def run_dispatch(cfg: _config.Config, date: str) -> tuple[float, int, str, float]:
    """A recorded run through the work queue; returns (wall s until every block ended, blocks done,
    run id, s of the run's finishing pass: its weblog, its night's, the notifications)."""
    t0 = time.perf_counter()
    res = submit_selection(cfg, select_night(cfg, date))
    ids = [s.block_id for s in res.submitted if s.outcome == "queued"]
    dispatcher = Dispatcher(cfg)
    recs = wait(cfg, ids, poll_s=cfg.dispatch.poll_s, timeout_s=3600, dispatcher=dispatcher, finish=False)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    dispatcher.notify(force=True)
    return wall, sum(r["state"] == db.DONE for r in recs), res.run_id, time.perf_counter() - t1


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each group of processes (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, group in pids.items():
        total = 0
        for pid in group:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        out[name] = total / tick
    return out


def cluster_pids(cl: LocalCluster) -> dict[str, list[int]]:
    """The processes whose CPU the bench accounts: itself (submission, dispatcher, waiting), redis, workers."""
    workers = [p.pid for p in cl.workers.values()]
    for node in cl.workers:
        workers += cl.worker_children(node)
    return {"bench+dispatcher": [os.getpid()], "redis": [cl.redis.proc.pid], "workers": workers}


def count_db_writes(db_path: Path) -> dict[str, int]:
    con = sqlite3.connect(db_path)
    try:
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in ("blocks", "subbands")}
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=100, help="blocks per night (default 100)")
    ap.add_argument("--k", type=int, default=4, help="dispatch.max_inflight_per_node (default 4)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of (baseline night, dispatch night), each on new nights; medians are reported "
                         "(default 3: on 2 busy cores one round varies by up to 30 %%)")
    ap.add_argument("--out", type=Path, default=None, help="working directory (default: a new temporary one)")
    args = ap.parse_args()
    if not 1 <= args.blocks <= 240:
        # The night's blocks start at 03:00, 309 s apart; the dispatch round submits the night by its
        # date, and only 245 blocks fit before midnight.
        ap.error("--blocks must be 1-240: a night's blocks must all fall on one date")
    base = args.out or Path(tempfile.mkdtemp(prefix="contimg-orchestration-"))
    day0 = date_cls(2025, 10, 5)
    nights = [((day0 + timedelta(days=2 * i)).isoformat(), (day0 + timedelta(days=2 * i + 1)).isoformat())
              for i in range(args.repeat)]
    for pair in nights:
        for date in pair:
            write_night(base / "data" / date, date, args.blocks)
    cfg = make_config(base, args.k)
    n_tasks = args.blocks * 17
    print(f"# {args.blocks} blocks x 16 subbands ({n_tasks} tasks with the callbacks) per night; "
          f"2 worker processes (node1 sb00-07 + imaging, node2 sb08-15, concurrency 1 each); "
          f"no-op stages of 0 s; K={args.k}; SQLite products database; task events "
          f"{'on' if cfg.broker.task_events else 'off (until Flower asks)'}; {os.cpu_count()} cores; "
          f"{args.repeat} rounds; in {base}")
    print(f"{'round':<6} {'method':<34} {'blocks done':>11} {'wall s':>8} {'ms/block':>9} {'ms/task':>8}")
    walls_b, walls_d, finish, cpu_b, cpu_d = [], [], [], [], []
    with LocalCluster(cfg, base / "cluster") as cl:
        for i, (date_b, date_d) in enumerate(nights, 1):
            pids = cluster_pids(cl)
            c0 = cpu_seconds(pids)
            wall_b, done_b = run_baseline(cl.config, base / "data" / date_b)
            c1 = cpu_seconds(pids)
            cl.wait_idle(120)
            c2 = cpu_seconds(pids)
            wall_d, done_d, run_id, finish_s = run_dispatch(cl.config, date_d)
            c3 = cpu_seconds(pids)
            cl.wait_idle(120)
            cpu_b.append({k: c1[k] - c0[k] for k in pids})
            cpu_d.append({k: c3[k] - c2[k] - (finish_s if k == "bench+dispatcher" else 0.0) for k in pids})
            for name, wall, done in (("baseline: all chords at once", wall_b, done_b),
                                     ("dispatch: work queue, K, leases", wall_d, done_d)):
                print(f"{i:<6} {name:<34} {done:>11} {wall:>8.2f} {1e3 * wall / args.blocks:>9.1f} "
                      f"{1e3 * wall / n_tasks:>8.2f}")
                if done != args.blocks:
                    raise SystemExit(f"round {i}: {name.split(':')[0]} finished {done} of {args.blocks} blocks")
            walls_b.append(wall_b)
            walls_d.append(wall_d)
            finish.append(finish_s)
    rows = count_db_writes(Path(str(cfg.database_url).removeprefix("sqlite:///")))
    ms_b = 1e3 * statistics.median(walls_b) / args.blocks
    ms_d = 1e3 * statistics.median(walls_d) / args.blocks
    spread = f"{1e3 * min(walls_d) / args.blocks:.1f}-{1e3 * max(walls_d) / args.blocks:.1f}"
    print(f"# median of {args.repeat}: baseline {ms_b:.1f} ms/block, dispatch {ms_d:.1f} ms/block "
          f"(range {spread}); dispatch / baseline = {ms_d / ms_b:.2f}; database rows: {rows}")
    print(f"# each run's finishing pass once all its blocks ended (weblog of the run and the night, "
          f"notifications; once per run, not per block): median {statistics.median(finish):.2f} s")
    for name, cpu in (("baseline", cpu_b), ("dispatch", cpu_d)):
        per = {k: 1e3 * statistics.median(c[k] for c in cpu) / args.blocks for k in cpu[0]}
        print(f"# CPU ms per block, {name} (median of rounds): "
              + ", ".join(f"{k} {v:.1f}" for k, v in per.items()) + f"; total {sum(per.values()):.1f} "
              f"(2 cores: {2 * (ms_b if name == 'baseline' else ms_d):.0f} available per block)")
    print("# target: <= 50 ms per block on this machine")
    if args.out is None:
        shutil.rmtree(base, ignore_errors=True)
    print(f"ms_per_block={ms_d:.1f}")


if __name__ == "__main__":
    main()
