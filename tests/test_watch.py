"""contimg/watch.py and `contimg watch`: files landing in real time, a real cluster, real restarts.

What is checked where
---------------------
(a) a file written slowly is never opened before it has settled, and a writer that stalls
    longer than ``settle_s`` is caught by the HDF5 check: ``test_slow_writer_*``;
(b) a block whose 16 files land one by one is submitted once, after the last file, and is
    processed: ``test_block_landing_file_by_file`` (inotify);
(c) an incomplete block (15 files) and a block with a truncated file are submitted after
    ``block_timeout_s`` with 15 subbands: ``test_incomplete_blocks_after_timeout``;
(d) a real `contimg watch` process stopped mid-night (SIGTERM, SIGKILL) and restarted: no
    block lost, none submitted twice, the timeout not reset: ``test_restart_*``;
(e) the polling fallback gives the same result: ``test_block_landing_file_by_file[polling]``;
(f) bad input: ``test_missing_incoming_*``, ``test_incoming_outside_data_root``, config checks.

The files are small real HDF5 files with a ``Header`` group; the cluster runs the no-op
stage set (``pipeline.stage_set = "noop"``), so blocks complete in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import make_config

from contimg import database as db
from contimg.products import format_timestamp, subband_filename

SETTLE_S = 0.5


# -- helpers -------------------------------------------------------------------------------


def hdf5_bytes(tmp: Path, n_vis: int = 1000) -> bytes:
    """A small HDF5 file with a UVH5-like ``Header`` group (and visibilities after it)."""
    import h5py
    import numpy as np

    p = tmp / f"template-{n_vis}.h5"
    if not p.exists():
        with h5py.File(p, "w") as h:
            hdr = h.create_group("Header")
            hdr["Ntimes"] = 24
            hdr["Nfreqs"] = 48
            hdr["freq_array"] = np.linspace(1.3e9, 1.31e9, 48)
            h.create_group("Data")["visdata"] = np.ones((n_vis, 48), dtype=np.complex64)
    return p.read_bytes()


def block_time(date: str, b: int) -> datetime:
    return datetime.fromisoformat(f"{date}T03:00:00") + timedelta(seconds=309 * b)


def file_name(date: str, b: int, sb: int) -> str:
    """Subband ``sb`` of block ``b``: correlator nodes start up to tens of seconds apart."""
    return subband_filename(block_time(date, b) + timedelta(seconds=3 * sb), sb)


def block_id(date: str, b: int) -> str:
    return format_timestamp(block_time(date, b))


def land(path: Path, data: bytes, chunks: int = 1, gap_s: float = 0.0, stall_at: int | None = None,
         stall_s: float = 0.0) -> float:
    """Write ``data`` to ``path`` in place, chunk by chunk (as a correlator writes); returns the
    monotonic time after the last byte."""
    step = -(-len(data) // chunks)
    with open(path, "wb") as f:
        for i in range(chunks):
            f.write(data[i * step:(i + 1) * step])
            f.flush()
            if i == stall_at:
                time.sleep(stall_s)
            elif gap_s and i < chunks - 1:
                time.sleep(gap_s)
    return time.monotonic()


def watch_config(cfg, **watch):
    return dataclasses.replace(cfg, watch=dataclasses.replace(cfg.watch, **watch))


class Running:
    """A Watcher in a thread, with what it said and when it submitted."""

    def __init__(self, cfg, incoming: Path, **kw):
        from contimg.watch import Watcher, submit_watch_run

        self.lines: list[str] = []
        self.submits: list[tuple[float, list[str], dict]] = []

        def submit(blocks, why):
            self.submits.append((time.monotonic(), [b.block_id for b in blocks],
                                 {b.block_id: sorted(b.files) for b in blocks}))
            return submit_watch_run(cfg, incoming, blocks, why)

        self.watcher = Watcher(cfg, incoming, submit=submit, say=self.lines.append, **kw)
        self.thread = threading.Thread(target=self.watcher.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.watcher.stop()
        self.thread.join(10)
        self.watcher.close()

    def wait_for(self, pred, timeout_s: float = 30.0, what: str = "") -> None:
        t0 = time.monotonic()
        while not pred():
            assert self.thread.is_alive(), "the watcher thread died:\n" + "\n".join(self.lines)
            assert time.monotonic() - t0 < timeout_s, f"timed out waiting for {what}:\n" + "\n".join(self.lines)
            time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One real cluster (redis-server + two no-op workers) for the end-to-end tests of this file;
    each test uses its own date and incoming directory."""
    from contimg.cluster import LocalCluster

    base = tmp_path_factory.mktemp("watch")
    cfg = make_config(base, base / "data", stage_set="noop", dispatch__node_check_s=0,
                      watch__settle_s=SETTLE_S, watch__poll_s=0.3, watch__block_timeout_s=30)
    with LocalCluster(cfg, base / "cluster") as cl:
        yield cl


def wait_done(cfg, ids: list[str], timeout_s: float = 60.0) -> list[dict]:
    from contimg.pipeline import wait

    return wait(cfg, ids, timeout_s=timeout_s)


def watch_runs(cfg, date: str) -> list[dict]:
    return [r for r in db.runs(cfg.database_url) if r["kind"] == "watch"
            and any(b.startswith(date) for b in r["block_ids"])]


# -- (a) a file being written ---------------------------------------------------------------


def _record_opens(monkeypatch, path: Path) -> list[tuple[float, int]]:
    """Every time the watcher opens a file: (monotonic time, size of the file then)."""
    import contimg.watch as watch

    opens: list[tuple[float, int]] = []
    real = watch.hdf5_header_problem

    def spy(p):
        if Path(p) == path:
            opens.append((time.monotonic(), Path(p).stat().st_size))
        return real(p)

    monkeypatch.setattr(watch, "hdf5_header_problem", spy)
    return opens


def test_slow_writer_is_not_opened_before_it_settles(tmp_path, monkeypatch):
    """A file written in 12 chunks over ~2.2 s (gaps shorter than settle_s) is opened only once,
    after its last chunk plus settle_s, at its final size, and lands then."""
    cfg = make_config(tmp_path, tmp_path / "data", watch__settle_s=1.0, watch__poll_s=0.2)
    incoming = tmp_path / "data" / "incoming"
    incoming.mkdir(parents=True)
    data = hdf5_bytes(tmp_path, n_vis=2000)
    path = incoming / file_name("2025-10-01", 0, 0)
    opens = _record_opens(monkeypatch, path)
    with Running(cfg, incoming) as r:
        t_last = land(path, data, chunks=12, gap_s=0.2)
        r.wait_for(lambda: any(line.startswith(f"landed {path.name}") for line in r.lines), 15, "landing")
    assert opens, "the watcher never opened the file"
    assert all(t >= t_last + 1.0 - 0.05 for t, _ in opens), (opens, t_last)
    assert all(size == len(data) for _, size in opens)
    assert len(opens) == 1
    assert r.submits == [], "one subband is not a complete block"


def test_slow_writer_stalled_longer_than_settle_is_caught_by_hdf5_check(tmp_path, monkeypatch):
    """Why the HDF5 check: a writer that stalls 2.5 s (settle_s = 1 s) half-way leaves a stable,
    truncated file; it is opened, found unreadable, and lands only once complete."""
    cfg = make_config(tmp_path, tmp_path / "data", watch__settle_s=1.0, watch__poll_s=0.2)
    incoming = tmp_path / "data" / "incoming"
    incoming.mkdir(parents=True)
    data = hdf5_bytes(tmp_path, n_vis=2000)
    path = incoming / file_name("2025-10-01", 0, 1)
    opens = _record_opens(monkeypatch, path)
    with Running(cfg, incoming) as r:
        t_last = land(path, data, chunks=4, stall_at=1, stall_s=2.5)
        r.wait_for(lambda: any(line.startswith(f"landed {path.name}") for line in r.lines), 15, "landing")
    early = [(t, s) for t, s in opens if t < t_last]
    assert early and all(s < len(data) for _, s in early), opens
    assert any("does not open as HDF5" in line for line in r.lines), r.lines
    landed_at = [t for t, s in opens if s == len(data)]
    assert landed_at and min(landed_at) >= t_last + 1.0 - 0.05


def test_hdf5_header_problem_names_what_is_wrong(tmp_path):
    from contimg.watch import hdf5_header_problem

    data = hdf5_bytes(tmp_path)
    good, cut, plain = tmp_path / "good.h5", tmp_path / "cut.h5", tmp_path / "plain.h5"
    good.write_bytes(data)
    cut.write_bytes(data[: len(data) // 2])
    plain.write_bytes(b"no-op subband\n")
    import h5py

    with h5py.File(tmp_path / "noheader.h5", "w") as h:
        h["x"] = 1
    assert hdf5_header_problem(good) is None
    assert "does not open as HDF5" in hdf5_header_problem(cut)
    assert "does not open as HDF5" in hdf5_header_problem(plain)
    assert "no Header group" in hdf5_header_problem(tmp_path / "noheader.h5")


# -- (b), (e) one block landing file by file ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_block_landing_file_by_file(cluster, tmp_path, mode):
    """16 files land one by one (each in two chunks); the block is submitted once, after the
    last file has settled, as one run of kind watch, and completes with 16 subbands. A stray
    file is ignored and logged once."""
    date = "2025-10-02" if mode == "inotify" else "2025-10-03"
    cfg = watch_config(cluster.config, poll_s=0.3 if mode == "polling" else 5.0)
    incoming = cfg.paths.data_root / f"incoming-{mode}"
    incoming.mkdir(parents=True)
    data = hdf5_bytes(tmp_path)
    (incoming / "notes.txt").write_text("not a subband file\n")
    with Running(cfg, incoming, use_inotify="on" if mode == "inotify" else "off") as r:
        assert r.watcher.mode == mode
        for sb in range(16):
            t_last = land(incoming / file_name(date, 0, sb), data, chunks=2, gap_s=0.05)
            time.sleep(0.15)
            assert r.submits == [], f"submitted after {sb + 1} files"
        r.wait_for(lambda: r.submits, 20, "the submission")
        recs = wait_done(cfg, [block_id(date, 0)])
        time.sleep(3 * SETTLE_S)  # more passes: nothing more is submitted
    assert len(r.submits) == 1
    t_sub, ids, files = r.submits[0]
    assert ids == [block_id(date, 0)] and files[ids[0]] == list(range(16))
    assert t_sub >= t_last + SETTLE_S - 0.05
    assert recs[0]["state"] == "done" and recs[0]["n_subbands_ok"] == 16
    runs = watch_runs(cfg, date)
    assert len(runs) == 1 and runs[0]["block_ids"] == ids
    assert runs[0]["selection"]["why"] == {ids[0]: "complete"}
    assert sum("ignoring notes.txt" in line for line in r.lines) == 1
    assert any(line.startswith("submitted run ") for line in r.lines)


# -- (c) incomplete blocks ----------------------------------------------------------------


@pytest.mark.slow
def test_incomplete_blocks_after_timeout(cluster, tmp_path):
    """Block 0 has 15 files (no sb03); block 1 has 16 but sb05 is truncated. Neither is complete;
    both are submitted once block_timeout_s has passed since their first file, with 15 subbands,
    and complete; the unreadable file's subband carries the reason."""
    date = "2025-10-04"
    timeout = 4.0
    cfg = watch_config(cluster.config, block_timeout_s=timeout)
    incoming = cfg.paths.data_root / "incoming-timeout"
    incoming.mkdir(parents=True)
    data = hdf5_bytes(tmp_path)
    with Running(cfg, incoming) as r:
        t_first = time.monotonic()
        for b in (0, 1):
            for sb in range(16):
                if (b, sb) == (0, 3):
                    continue
                land(incoming / file_name(date, b, sb), data[: len(data) // 3] if (b, sb) == (1, 5) else data)
        r.wait_for(lambda: len({i for _, ids, _ in r.submits for i in ids}) == 2, 30, "both submissions")
        ids = [block_id(date, 0), block_id(date, 1)]
        recs = wait_done(cfg, ids)
        time.sleep(3 * SETTLE_S)
    assert sorted(i for _, ids_, _ in r.submits for i in ids_) == ids, "each block submitted once"
    for t_sub, _, files in r.submits:
        assert t_sub >= t_first + timeout - 0.1
        for bid, sbs in files.items():
            assert sbs == [sb for sb in range(16) if sb != (3 if bid == ids[0] else 5)]
    assert [rec["state"] for rec in recs] == ["done", "done"]
    assert [rec["n_subbands_ok"] for rec in recs] == [15, 15]
    assert "sb03: missing from the block" in recs[0]["reason"]
    sb5 = next(s for s in recs[1]["subbands"] if s["subband"] == 5)
    assert sb5["state"] == "failed" and "not readable within watch.block_timeout_s" in sb5["reason"]
    why = {k: v for run in watch_runs(cfg, date) for k, v in run["selection"]["why"].items()}
    assert why[ids[0]].startswith("timeout after") and "missing sb03" in why[ids[0]]


# -- (d) restarts of a real `contimg watch` process ----------------------------------------


def _env(cluster, **watch) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
    env["CONTIMG_CONFIG"] = str(cluster.config_path)
    env["PYTHONUNBUFFERED"] = "1"
    for k, v in watch.items():
        env[f"CONTIMG_WATCH__{k.upper()}"] = str(v)
    return env


def _start_watch(cluster, incoming: Path, log: Path, env: dict) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "contimg.cli", "watch", str(incoming)], stdout=f,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_log(log: Path, text: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    t0 = time.monotonic()
    while text not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, f"contimg watch exited ({proc.returncode}):\n{log.read_text()}"
        assert time.monotonic() - t0 < timeout_s, f"no {text!r} in the watcher's log:\n{log.read_text()}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_restart_loses_and_repeats_nothing(cluster, tmp_path, sig):
    """A night of 5 blocks (block 3 incomplete) lands while `contimg watch` runs; it is stopped
    after block 1 was submitted and once it has seen block 3's first file, two more blocks land
    while it is down, then it is started again. Every block is submitted exactly once (runs in
    the database, the work queue), every block completes, and block 3 is submitted
    block_timeout_s after its first file appeared, not after the restart."""
    from contimg.dispatch import WorkQueue
    from contimg.pipeline import Dispatcher

    date = "2025-10-06" if sig == signal.SIGTERM else "2025-10-07"
    timeout = 8.0
    cfg = cluster.config
    incoming = cfg.paths.data_root / f"incoming-restart-{sig.name}"
    incoming.mkdir(parents=True)
    data = hdf5_bytes(tmp_path)
    env = _env(cluster, settle_s=SETTLE_S, poll_s=0.3, block_timeout_s=timeout)
    log = tmp_path / "watch.log"
    ids = [block_id(date, b) for b in range(5)]
    stop = threading.Event()

    def dispatch():  # the dispatcher service, in this process: only the watcher is killed
        d = Dispatcher(cfg)
        while not stop.is_set():
            d.step()
            time.sleep(0.3)

    dispatcher = threading.Thread(target=dispatch, daemon=True)
    dispatcher.start()

    def land_block(b: int, sbs=range(16)):
        for sb in sbs:
            land(incoming / file_name(date, b, sb), data)
            time.sleep(0.02)

    procs = []
    try:
        p1 = _start_watch(cluster, incoming, log, env)
        procs.append(p1)
        _wait_log(log, "watching ", p1)
        land_block(0)
        land_block(1)
        _wait_log(log, f"{ids[1]} (complete", p1)
        land_block(2, range(8))  # half of block 2 has landed when the watcher stops
        t3 = time.time()
        land_block(3, [sb for sb in range(16) if sb != 9])  # block 3 will never be complete
        _wait_log(log, f"new file {file_name(date, 3, 0)}", p1)
        os.kill(p1.pid, sig)
        rc1 = p1.wait(20)
        t_down = time.monotonic()
        land_block(2, range(8, 16))
        land_block(4)
        time.sleep(max(0.0, 3.0 - (time.monotonic() - t_down)))
        t_restart = time.time()
        p2 = _start_watch(cluster, incoming, log, env)
        procs.append(p2)
        t0 = time.monotonic()
        while list(db.states(cfg.database_url, ids).values()).count("done") < len(ids):
            assert p2.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 60, (db.states(cfg.database_url, ids), log.read_text())
            time.sleep(0.2)
        time.sleep(4 * SETTLE_S)  # more passes of the restarted watcher: nothing more is submitted
        os.kill(p2.pid, signal.SIGTERM)
        rc2 = p2.wait(20)
    finally:
        stop.set()
        dispatcher.join(10)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    text = log.read_text()
    assert rc1 == (0 if sig == signal.SIGTERM else -signal.SIGKILL), text
    assert rc2 == 0 and text.rstrip().endswith("stopped"), text

    runs = watch_runs(cfg, date)
    listed = [b for r in runs for b in r["block_ids"]]
    assert sorted(listed) == ids, f"each block in exactly one watch run: {listed}"
    recs = db.blocks(cfg.database_url, ids)
    assert [r["state"] for r in recs] == ["done"] * 5
    assert [r["n_subbands_ok"] for r in recs] == [16, 16, 16, 15, 16]
    assert all(r["attempts"] == 1 for r in recs), [r["attempts"] for r in recs]
    assert all(r["run_id"] in {x["run_id"] for x in runs} for r in recs)
    counts = WorkQueue.from_url(cfg.broker.url).counts()
    assert not any(counts.get(k) for k in ("pending", "inflight")), counts
    # Block 3: timed out 8 s after its first file, not 8 s after the restart.
    run3 = next(r for r in runs if ids[3] in r["block_ids"])
    t_sub3 = db.parse_iso(run3["submitted_at"]).timestamp()
    assert t3 + timeout - 0.5 <= t_sub3 < t_restart + timeout - 1.0, (t3, t_restart, t_sub3, text)
    after = text[text.rindex("watching "):]
    assert "(seen before a restart)" in after
    assert f"block {ids[0]} is already in the products database (done)" in after


# -- --once and --json ------------------------------------------------------------------------


@pytest.mark.slow
def test_once_json_submits_ready_blocks_then_nothing(cluster, tmp_path):
    date = "2025-10-08"
    incoming = cluster.config.paths.data_root / "incoming-once"
    incoming.mkdir(parents=True)
    data = hdf5_bytes(tmp_path)
    for sb in range(16):
        land(incoming / file_name(date, 0, sb), data)
    land(incoming / file_name(date, 1, 0), data)  # block 1 has just begun
    env = _env(cluster, settle_s=SETTLE_S, block_timeout_s=600)

    def once():
        r = subprocess.run([sys.executable, "-m", "contimg.cli", "watch", str(incoming), "--once", "--json"],
                           capture_output=True, text=True, env=env, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout), r.stderr

    first, err = once()
    assert [b["block_id"] for run in first["runs"] for b in run["blocks"]] == [block_id(date, 0)]
    assert first["runs"][0]["kind"] == "watch" and first["runs"][0]["blocks"][0]["outcome"] == "queued"
    assert first["waiting"] == [], "block 1's file has landed but its block is incomplete"
    assert "landed " in err
    second, err = once()
    assert second["runs"] == [], err
    assert "already in the products database (queued)" in err or "(done)" in err


# -- (f) bad input --------------------------------------------------------------------------


def _cli(*args, env=None):
    env = env or {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
    return subprocess.run([sys.executable, "-m", "contimg.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_missing_incoming_is_one_line_naming_the_path(tmp_path):
    r = _cli("watch", str(tmp_path / "nowhere"))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nowhere") in lines[0] and "does not exist" in lines[0], r.stderr


def test_incoming_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = _cli("watch", str(f))
    assert r.returncode != 0 and str(f) in r.stderr and "not a directory" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_incoming_outside_data_root(cluster, tmp_path):
    r = _cli("watch", str(tmp_path), "--once", env=_env(cluster))
    assert r.returncode != 0
    assert "paths.data_root" in r.stderr and str(tmp_path) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_watch_config_is_validated(tmp_path):
    from contimg.errors import ConfigError

    with pytest.raises(ConfigError, match="watch.use_inotify"):
        make_config(tmp_path, tmp_path / "data", watch__use_inotify="maybe")
    with pytest.raises(ConfigError, match="watch.block_timeout_s"):
        make_config(tmp_path, tmp_path / "data", watch__settle_s=30, watch__block_timeout_s=20)
    cfg = make_config(tmp_path, tmp_path / "data", watch__use_inotify="off")
    assert cfg.watch.use_inotify == "off" and cfg.watch.block_timeout_s == 600.0


def test_state_file_keeps_first_seen_across_restarts(tmp_path):
    """Without any cluster: the first-seen time of a file survives a new Watcher, so a block's
    timeout is not reset (the end-to-end version is test_restart_loses_and_repeats_nothing)."""
    from contimg.watch import Watcher

    cfg = make_config(tmp_path, tmp_path / "data", watch__settle_s=0.2, watch__use_inotify="off")
    incoming = tmp_path / "data" / "in"
    incoming.mkdir(parents=True)
    land(incoming / file_name("2025-10-09", 0, 0), hdf5_bytes(tmp_path))
    with Watcher(cfg, incoming, submit=lambda b, w: pytest.fail("nothing is ready")) as w1:
        w1.step()
        first = w1._tracked[file_name("2025-10-09", 0, 0)].first_seen
    assert json.loads(w1.state_path.read_text())["first_seen"] == {file_name("2025-10-09", 0, 0): first}
    time.sleep(0.3)
    with Watcher(cfg, incoming, submit=lambda b, w: pytest.fail("nothing is ready")) as w2:
        w2.step()
        assert w2._tracked[file_name("2025-10-09", 0, 0)].first_seen == first
