"""Watch the incoming directory: submit each block once its subband files have landed.

``contimg watch INCOMING`` follows the directory the correlator writes into and
submits every observation block exactly once, as soon as it is ready:

- **complete**: all 16 subbands are present and every file of the block is
  *landed*; or
- **timed out**: ``watch.block_timeout_s`` has passed since the block's first
  file appeared; it is submitted with the landed files it has, and the
  pipeline records the other subbands as missing (a file that never became
  readable gets that reason on its subband row).

A file has *landed* when both hold (``watch.settle_s``):

1. its size, mtime and inode have not changed for ``settle_s`` seconds, as
   seen by this process; until then the file is never opened, so the watcher
   never reads a file that is being written;
2. it then opens with h5py and its ``Header`` group is readable.

Either alone is not enough. A writer that stalls mid-file (a network hiccup, a
correlator buffer flush) leaves a stable size for longer than any sensible
``settle_s``: the HDF5 check catches it, because the superblock records an end
of file beyond the bytes on disk ("truncated file"). Conversely an HDF5 file
can open and show its header while the writer is still appending the
visibilities: the header is written first. A file that settles but never opens
(the writer died) keeps its block waiting until the timeout, then is left out.

Events and polling
------------------
New files are noticed through Linux inotify (ctypes, no extra dependency) or,
where inotify is unavailable or useless, by rescanning every ``watch.poll_s``
(``watch.use_inotify``: ``auto`` polls on network file systems such as NFS,
where events written by other hosts never arrive). Events are only hints that
wake the loop early: the authoritative state always comes from a scan of the
directory (``os.scandir`` and ``stat``), which also runs every ``poll_s`` with
inotify and whenever a file could have settled or a block could have timed out.
A missed or overflowed event therefore costs latency, never a block.

Restarts
--------
The watcher keeps no record of what it submitted: the products database and
the Redis work queue already do. Submission is idempotent (a block already
queued, running or done is skipped, and the work queue never holds a block
twice), and the watcher goes further: a block whose id is in the database in
any state, failed included, is never submitted again by the watcher
(``contimg resubmit --failed`` is the operator's decision). So on start it
rescans INCOMING and submits the ready blocks that the database does not know
yet: blocks that landed while it was down are caught up, and none is
submitted twice. A late file for a block already submitted (it timed out
without it) is logged and not submitted: its block id is one of the known
blocks, found by any of the timestamps of its files, so a late file with an
earlier start time (which would change the block id) is recognised too.

The one thing that would be lost is the time a still-incomplete block was
first seen, which the timeout counts from; it is kept in a small JSON state
file (``{products_root}/watch/...json``, :func:`contimg.products.watch_state`),
written atomically whenever a new file is seen, so a restart does not reset
the timeout. A file first seen by a restarted watcher counts from then.

SIGTERM (systemd stop) and Ctrl-C let the current submission finish. A SIGKILL
in the milliseconds of a submission can at worst leave a run record listing a
block that a later run queues again; the work queue and the database still
process it once.

Run granularity
---------------
The blocks that become ready in one pass of the loop are submitted as one run
of kind ``watch``. In steady state that is one run per block (blocks arrive
every ~309 s); a watcher that starts on a backlog records one run for the
backlog instead of hundreds, and ``contimg runs`` / ``status --run`` follow it
like any submission. Each run's selection records the directory and, per
block, why it was submitted (complete, or timed out with what was missing).

Only the top level of INCOMING is watched (not subdirectories). Files whose
names are not ``{YYYY-MM-DDTHH:MM:SS}_sb{NN}.hdf5`` (temporary names of a
writer that renames, notes, logs) are ignored and logged once.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .blocks import Block, SubbandFile, cluster
from .config import Config
from .products import format_timestamp, parse_subband_filename, temporary_name, watch_state
from .telescope import N_SUBBANDS

SayFn = Callable[[str], None]

STATE_VERSION = 1


# ---------------------------------------------------------------------------
# landed files
# ---------------------------------------------------------------------------


def hdf5_header_problem(path: Path) -> str | None:
    """None if ``path`` opens with h5py and its ``Header`` group reads; else why not.

    Reads the Header group's member names and its small datasets (counts,
    frequencies), never the visibilities.
    """
    import h5py

    try:
        with h5py.File(path, "r") as h:
            hdr = h.get("Header")
            if not isinstance(hdr, h5py.Group):
                return "no Header group (not a UVH5 file?)"
            for item in hdr.values():
                if isinstance(item, h5py.Dataset) and item.size <= 4096:
                    item[()]
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        return f"does not open as HDF5 ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


@dataclass
class _Tracked:
    """What the watcher knows of one subband file not yet submitted."""

    file: SubbandFile
    sig: tuple[int, int, int]
    """(size, mtime_ns, inode) at the last scan."""
    changed_at: float
    """Monotonic time ``sig`` last changed (or was first seen)."""
    first_seen: float
    """Wall-clock (unix) time the file was first seen; persisted."""
    landed: bool = False
    problem: str | None = None
    """Why a settled file is not readable (None: not checked yet, or readable)."""
    checked_at: float = -float("inf")


@dataclass
class Dispatched:
    """One block the watcher submitted, and why."""

    block_id: str
    why: str
    """``complete`` or ``timeout: ...`` (what was missing)."""
    n_subbands: int
    left_out: dict[int, str] = field(default_factory=dict)
    """Subbands present on disk but not readable, with the reason."""


SubmitFn = Callable[[list[Block], dict[str, Dispatched]], object]


class Watcher:
    """The Celery-free core: scan INCOMING, decide which blocks are ready, hand them to ``submit``.

    Parameters
    ----------
    cfg : Config
        ``[watch]`` keys, ``pipeline.block_tolerance_s``, ``paths.products_root``
        (the state file) and the database (known blocks).
    incoming : Path
        The directory the correlator writes into (top level only).
    submit : callable, optional
        ``submit(blocks, why)`` queues the blocks; default :func:`submit_watch_run`.
        Returns anything; it is passed back in :attr:`submitted`.
    say : callable, optional
        Receives one line per event.
    """

    def __init__(self, cfg: Config, incoming: str | os.PathLike, *, submit: SubmitFn | None = None,
                 say: SayFn | None = None, use_inotify: str | None = None):
        self.cfg = cfg
        self.incoming = Path(incoming).absolute()
        if not self.incoming.exists():
            raise FileNotFoundError(f"incoming directory {self.incoming} does not exist; create it or fix the path")
        if not self.incoming.is_dir():
            raise NotADirectoryError(f"{self.incoming} is not a directory; give the directory the correlator writes into")
        self.say = say or (lambda line: None)
        self.submit = submit or (lambda blocks, why: submit_watch_run(cfg, self.incoming, blocks, why))
        self.state_path = watch_state(cfg.paths.products_root, self.incoming)
        self._tracked: dict[str, _Tracked] = {}
        self._done: dict[str, SubbandFile] = {}  # files of submitted (or otherwise known) blocks: never stat'ed again
        self._known: dict[str, str] = {}  # block id -> state, from the database or our own submissions
        self._ignored: set[str] = set()
        self._said: set[tuple[str, str]] = set()  # (what, key) events logged once
        self._cluster_of: dict[str, str] = {}  # file name -> block id, from the last pass
        self._first_seen = self._load_state()
        self._state_dirty = False
        self.submitted: list[object] = []
        """What ``submit`` returned, one entry per run."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopped = False
        self.events = _open_events(self.incoming, use_inotify or cfg.watch.use_inotify, self.say)
        self.mode = "inotify" if self.events else "polling"

    # -- state file -------------------------------------------------------

    def _load_state(self) -> dict[str, float]:
        try:
            doc = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            self.say(f"state file {self.state_path} unreadable ({e}); block timeouts count from now")
            return {}
        if doc.get("version") != STATE_VERSION or doc.get("incoming") != str(self.incoming):
            self.say(f"state file {self.state_path} is for another directory or version; ignored")
            return {}
        return {str(k): float(v) for k, v in doc.get("first_seen", {}).items()}

    def _save_state(self) -> None:
        """The first-seen times of files not yet submitted, written atomically."""
        doc = {"version": STATE_VERSION, "incoming": str(self.incoming),
               "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "first_seen": {n: t.first_seen for n, t in sorted(self._tracked.items())}}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(self.state_path)
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.state_path)
        self._state_dirty = False

    # -- one pass ---------------------------------------------------------

    def step(self) -> list[Dispatched]:
        """Scan, update what has landed, submit the ready blocks; returns what was submitted."""
        self._scan()
        ready = self._ready_blocks()
        out: list[Dispatched] = []
        if ready:
            blocks = [b for b, _ in ready]
            why = {b.block_id: d for b, d in ready}
            result = self.submit(blocks, why)
            self.submitted.append(result)
            for b, d in ready:
                self._known[b.block_id] = "submitted"
                for name in self._names_of(b.block_id):
                    self._done[name] = self._tracked.pop(name).file
                self._state_dirty = True
                out.append(d)
            self.say(_describe_submission(result, why))
        if self._state_dirty:
            self._save_state()
        return out

    def _scan(self) -> None:
        now_m, now_w = time.monotonic(), time.time()
        seen: set[str] = set()
        with os.scandir(self.incoming) as it:
            entries = [e for e in it]
        for e in entries:
            name = e.name
            if name in self._done:
                seen.add(name)
                continue
            parsed = parse_subband_filename(name)
            if parsed is None or parsed.subband >= N_SUBBANDS:
                if name not in self._ignored:
                    self._ignored.add(name)
                    self.say(f"ignoring {name}: not a subband file name ({{YYYY-MM-DDTHH:MM:SS}}_sb{{NN}}.hdf5)")
                continue
            try:
                st = os.stat(e.path)
            except FileNotFoundError:
                continue
            if not e.is_file():
                continue
            seen.add(name)
            sig = (st.st_size, st.st_mtime_ns, st.st_ino)
            t = self._tracked.get(name)
            if t is None:
                first = self._first_seen.pop(name, None)
                sf = SubbandFile(Path(e.path), parsed.timestamp, parsed.subband, st.st_size)
                self._tracked[name] = _Tracked(sf, sig, now_m, first if first is not None else now_w)
                self._state_dirty = True
                self.say(f"new file {name} ({st.st_size} bytes)" + (" (seen before a restart)" if first else ""))
            elif t.sig != sig:
                if t.landed:
                    self.say(f"{name} changed after it had landed ({t.sig[0]} -> {sig[0]} bytes); waiting again")
                t.sig, t.changed_at, t.landed, t.problem = sig, now_m, False, None
                t.file = SubbandFile(t.file.path, t.file.timestamp, t.file.subband, st.st_size)
        for name in [n for n in self._tracked if n not in seen]:
            del self._tracked[name]
            self._state_dirty = True
            self.say(f"{name} disappeared before its block was submitted")
        for name in [n for n in self._done if n not in seen]:
            del self._done[name]  # moved away after processing: forget it
        settle = self.cfg.watch.settle_s
        for name, t in self._tracked.items():
            if t.landed or now_m - t.changed_at < settle or now_m - t.checked_at < settle:
                continue
            # Settled: only now is the file opened (never while its size or mtime still move).
            t.checked_at = now_m
            problem = hdf5_header_problem(t.file.path)
            if problem is None:
                t.landed, t.problem = True, None
                self.say(f"landed {name} ({t.sig[0]} bytes, unchanged for {now_m - t.changed_at:.1f} s, "
                         "HDF5 header readable)")
            elif problem != t.problem:
                t.problem = problem
                self.say(f"{name} unchanged for {now_m - t.changed_at:.1f} s but {problem}; waiting "
                         f"(a block is submitted without it after watch.block_timeout_s)")

    def _names_of(self, block_id: str) -> list[str]:
        """The tracked (not yet submitted) files of a block."""
        return [n for n, bid in self._cluster_of.items() if bid == block_id and n in self._tracked]

    def _ready_blocks(self) -> list[tuple[Block, Dispatched]]:
        every = [t.file for t in self._tracked.values()] + list(self._done.values())
        groups = cluster(every, self.cfg.pipeline.block_tolerance_s)
        self._cluster_of: dict[str, str] = {}
        candidates: list[tuple[Block, list[_Tracked]]] = []
        for g in groups:
            files = list(g.files.values()) + [f for fs in g.duplicates.values() for f in fs]
            for f in files:
                self._cluster_of[f.path.name] = g.block_id
            tracked = [self._tracked[f.path.name] for f in files if f.path.name in self._tracked]
            if tracked:
                candidates.append((g, tracked))
        self._lookup_known({format_timestamp(t.file.timestamp) for _, ts in candidates for t in ts}
                           | {g.block_id for g, _ in candidates})
        ready = []
        now = time.time()
        timeout = self.cfg.watch.block_timeout_s
        for g, tracked in candidates:
            ids = {g.block_id} | {format_timestamp(f.timestamp) for f in g.files.values()} | {
                format_timestamp(f.timestamp) for fs in g.duplicates.values() for f in fs}
            known = sorted(i for i in ids if i in self._known)
            if known:
                self._retire(g, tracked, known[0])
                continue
            landed = {}
            for sb in sorted({t.file.subband for t in tracked} | set(g.files)):
                copies = [g.files[sb]] + g.duplicates.get(sb, []) if sb in g.files else []
                for f in copies:
                    t = self._tracked.get(f.path.name)
                    if (t is not None and t.landed) or (t is None and f.path.name in self._done):
                        landed[sb] = f
                        break
            unsettled = [t for t in tracked if not t.landed and t.problem is None]
            age = now - min(t.first_seen for t in tracked)
            if len(landed) == N_SUBBANDS and not unsettled:
                why = Dispatched(g.block_id, "complete", N_SUBBANDS)
            elif age >= timeout:
                left_out = {t.file.subband: t.problem or "still being written" for t in tracked
                            if not t.landed and t.file.subband not in landed}
                if not landed:
                    self._say_once("empty", g.block_id, f"block {g.block_id}: {age:.0f} s since its first file "
                                   "and no file has landed; not submitted (waiting for one)")
                    continue
                missing = [sb for sb in range(N_SUBBANDS) if sb not in landed]
                desc = f"timeout after {age:.0f} s with {len(landed)}/16 subbands"
                if missing:
                    desc += " (missing " + ",".join(f"sb{sb:02d}" for sb in missing) + ")"
                why = Dispatched(g.block_id, desc, len(landed), left_out)
            else:
                continue
            dups = {sb: [f for f in [g.files[sb]] + g.duplicates.get(sb, []) if f is not landed[sb]]
                    for sb in landed if sb in g.duplicates}
            ready.append((Block(g.block_id, dict(sorted(landed.items())), {k: v for k, v in dups.items() if v}),
                          why))
        return ready

    def _lookup_known(self, ids: set[str]) -> None:
        from . import database as db

        ask = sorted(i for i in ids if i not in self._known)
        for i in range(0, len(ask), 500):
            self._known.update(db.states(self.cfg.database_url, ask[i:i + 500]))

    def _retire(self, g: Block, tracked: list[_Tracked], known_id: str) -> None:
        """A cluster that holds a block already known: its files not yet seen are not submitted."""
        state = self._known[known_id]
        files = list(g.files.values()) + [f for fs in g.duplicates.values() for f in fs]
        seen_before = state == "submitted" or any(f.path.name in self._done for f in files)
        for t in tracked:
            name = t.file.path.name
            self._done[name] = self._tracked.pop(name).file
            self._state_dirty = True
            if seen_before:
                self.say(f"late file {name}: block {known_id} was already submitted ({state}) without it; "
                         "not submitted again")
        if not seen_before:
            self.say(f"block {known_id} is already in the products database ({state}); not submitted by the "
                     "watcher (`contimg resubmit --failed` or `submit --force` decide that)")

    def _say_once(self, what: str, key: str, line: str) -> None:
        if (what, key) not in self._said:
            self._said.add((what, key))
            self.say(line)

    def waiting_files(self) -> list[str]:
        """Names of the files seen but not yet landed (still changing, or not readable)."""
        return sorted(n for n, t in self._tracked.items() if not t.landed)

    # -- waiting ----------------------------------------------------------

    def seconds_to_next_wake(self) -> float:
        """Until the next scan is due: a file could have settled, a block timed out, or ``poll_s``."""
        w = self.cfg.watch
        now_m, now_w = time.monotonic(), time.time()
        due = [w.poll_s]
        for t in self._tracked.values():
            if not t.landed:
                due.append(max(t.changed_at, t.checked_at) + w.settle_s - now_m)
        firsts: dict[str, float] = {}
        for name, t in self._tracked.items():
            bid = self._cluster_of.get(name)
            if bid is not None:
                firsts[bid] = min(firsts.get(bid, t.first_seen), t.first_seen)
        due += [f + w.block_timeout_s - now_w for f in firsts.values()]
        return max(0.05, min(due) + 0.01)

    def wait(self, timeout_s: float) -> None:
        """Sleep until ``timeout_s`` passes, a filesystem event arrives, or :meth:`stop` is called."""
        fds = [self._wake_r] + ([self.events.fileno()] if self.events else [])
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, timeout_s))
        except InterruptedError:  # pragma: no cover (PEP 475 retries)
            return
        if self.events and self.events.fileno() in ready:
            try:
                self.events.read()
            except OSError as e:
                self.say(f"inotify failed ({e}); falling back to polling every {self.cfg.watch.poll_s:g} s")
                self.events.close()
                self.events, self.mode = None, "polling"
            time.sleep(0.05)  # let a burst of events (16 files landing) collapse into one scan
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current pass (safe from a signal handler)."""
        self._stopped = True
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    @property
    def stopped(self) -> bool:
        return self._stopped

    def run(self, on_pass: Callable[[], float | None] | None = None) -> None:
        """Scan and submit until :meth:`stop`. ``on_pass`` runs after every pass (the dispatcher) and may
        return a number of seconds it wants the next pass within."""
        while not self._stopped:
            self.step()
            limit = on_pass() if on_pass else None
            if self._stopped:
                break
            t = self.seconds_to_next_wake()
            self.wait(min(t, limit) if limit is not None else t)

    def close(self) -> None:
        if self._state_dirty:
            self._save_state()
        if self.events:
            self.events.close()
            self.events = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _describe_submission(result, why: dict[str, Dispatched]) -> str:
    run_id = getattr(result, "run_id", None)
    outcomes = {s.block_id: s.outcome for s in getattr(result, "submitted", [])}
    parts = [f"{bid} ({d.why}{'; ' + outcomes[bid] if bid in outcomes else ''})" for bid, d in why.items()]
    return (f"submitted run {run_id}: " if run_id else "submitted: ") + ", ".join(parts)


# ---------------------------------------------------------------------------
# submission
# ---------------------------------------------------------------------------


def submit_watch_run(cfg: Config, incoming: Path, blocks: list[Block], why: dict[str, Dispatched]):
    """Record one run of kind ``watch`` for ``blocks`` and queue them (contimg.submission).

    Subbands left out because their file never became readable get that
    reason on their subband row (instead of "missing from the block").
    """
    from . import database as db
    from .submission import Selection, submit_selection

    desc = {"incoming": str(incoming), "why": {bid: d.why for bid, d in why.items()}}
    res = submit_selection(cfg, Selection("watch", desc, blocks, incoming))
    queued = {s.block_id for s in res.submitted if s.outcome == "queued"}
    for bid, d in why.items():
        if bid not in queued:
            continue
        for sb, problem in d.left_out.items():
            db.upsert_subband(cfg.database_url, bid, sb, state=db.SB_FAILED,
                              reason=f"file present but not readable within watch.block_timeout_s="
                                     f"{cfg.watch.block_timeout_s:g} s: {problem}; left out")
    return res


# ---------------------------------------------------------------------------
# inotify (ctypes) and the network file system check
# ---------------------------------------------------------------------------

IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x4, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
WATCH_MASK = (IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
              | IN_DELETE_SELF | IN_MOVE_SELF)
# Not IN_MODIFY: a 500 MB file being written would send thousands; the settle rule needs scans anyway.

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "glusterfs", "beegfs",
              "9p", "afs", "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.gcsfuse")


class Inotify:
    """A Linux inotify watch on one directory (ctypes; no dependency)."""

    def __init__(self, directory: Path):
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            raise OSError(errno.ENOSYS, "inotify is not available (not Linux?)")
        self._fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        if libc.inotify_add_watch(self._fd, os.fsencode(str(directory)), WATCH_MASK) < 0:
            e = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(e, f"inotify_add_watch {directory}: {os.strerror(e)}"
                          + ("; raise fs.inotify.max_user_watches" if e == errno.ENOSPC else ""))
        self.overflowed = False

    def fileno(self) -> int:
        return self._fd

    def read(self) -> list[tuple[int, str]]:
        """Every pending event as (mask, name); raises OSError if the watched directory went away."""
        out: list[tuple[int, str]] = []
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            off = 0
            while off + 16 <= len(buf):
                _wd, mask, _cookie, n = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16:off + 16 + n].rstrip(b"\0").decode(errors="replace")
                off += 16 + n
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True  # harmless: the next scan sees everything
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    raise OSError(errno.ENOENT, "the watched directory was removed or moved")
                out.append((mask, name))
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def filesystem_type(path: Path) -> str | None:
    """The type of the file system that holds ``path`` (from /proc/self/mounts), or None."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    p = str(path.resolve())
    best, fstype = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype


def _open_events(directory: Path, use_inotify: str, say: SayFn) -> Inotify | None:
    if use_inotify == "off":
        return None
    fstype = filesystem_type(directory)
    if use_inotify == "auto" and fstype in NETWORK_FS:
        say(f"{directory} is on {fstype}: inotify does not see files written by other hosts; polling")
        return None
    try:
        return Inotify(directory)
    except OSError as e:
        if use_inotify == "on":
            from .errors import ConfigError

            raise ConfigError(f"watch.use_inotify = \"on\" but inotify on {directory} failed: {e}; "
                              "set it to auto or off") from None
        say(f"inotify on {directory} failed ({e}); polling")
        return None


__all__ = ["Watcher", "Dispatched", "Inotify", "hdf5_header_problem", "submit_watch_run", "filesystem_type"]
