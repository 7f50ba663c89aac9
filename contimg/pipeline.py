"""Submit blocks as Celery chords and follow them to the end.

One chord per block: a header task per subband routed to the queue of the
node that holds it, and a callback on an imaging node. This module never
imports CASA; it only builds signatures and reads the products database.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from celery import chord

from . import database as db
from .blocks import Block
from .dispatch import WorkQueue
from .config import Config
from .errors import ConfigError
from .products import subband_ms
from .tasks.backend import results_not_followed

log = logging.getLogger(__name__)


@dataclass
class Submitted:
    """What submission did with one block."""

    block_id: str
    outcome: str
    """queued | skipped (already queued, running or done) | inflight (a block in flight is never forced)"""
    previous_state: str | None = None


def block_spec(block: Block, data_dir: Path, run_id: str | None = None,
               node_of: dict[int, str] | None = None) -> dict:
    """The JSON description of a block that waits in the work queue.

    ``node_of`` (subband -> node) carries a submission's remap to whichever
    dispatcher builds the chord.
    """
    spec = {
        "block_id": block.block_id,
        "mid_jd": block.mid_jd,
        "files": {str(sb): str(f.path) for sb, f in sorted(block.files.items())},
        "missing": block.missing,
        "data_dir": str(data_dir),
        "run_id": run_id,
    }
    if node_of:
        spec["nodes"] = {str(sb): node for sb, node in node_of.items() if sb in block.files}
    return spec


def build_chord(cfg: Config, spec: dict, imaging_node: str, token: str | None = None):
    """The chord of one block: convert each subband on its node, then image."""
    from .tasks.block import image_block
    from .tasks.subband import process_subband

    bid = spec["block_id"]
    # A rerun's changed settings and flag template travel with its tasks (only when set, so
    # that ordinary messages stay as they were).
    run_args = {k: spec[k] for k in ("overrides", "flag_template") if spec.get(k)}
    header = []
    nodes_used = set()
    for sb_text, path in sorted(spec["files"].items(), key=lambda kv: int(kv[0])):
        sb = int(sb_text)
        node = cfg.node(spec["nodes"][sb_text]) if sb_text in spec.get("nodes", {}) else cfg.node_for_subband(sb)
        nodes_used.add(node.name)
        ms = subband_ms(cfg.scratch_root(node.name), bid, sb)
        header.append(
            process_subband.s(bid, sb, path, str(ms), spec["mid_jd"], node.name, token=token, **run_args)
            .set(queue=node.queue, argsrepr=f"({bid!r}, {sb})", kwargsrepr=_kwargsrepr(run_args))
        )
    callback = image_block.s(
        block_id=bid, node=imaging_node, missing=spec["missing"], nodes_used=sorted(nodes_used), token=token,
        run_id=spec.get("run_id"), **({"overrides": spec["overrides"]} if spec.get("overrides") else {}),
    ).set(queue=cfg.node(imaging_node).queue, ignore_result=True,  # its outcome is in the database
          argsrepr="()", kwargsrepr=f"{{'block_id': {bid!r}, 'node': {imaging_node!r}}}")
    return chord(header, callback)


def _kwargsrepr(run_args: dict) -> str:
    """What Flower and the worker logs show of a subband task's keyword arguments.

    Given, so that Celery does not ``saferepr`` every message's arguments (an eighth
    of the dispatcher's time to send a chord); the block and subband are in ``argsrepr``.
    """
    return "{" + ", ".join(f"{k!r}: ..." for k in sorted(run_args)) + "}"


def check_data_dir(cfg: Config, data_dir: Path) -> None:
    """Workers refuse paths outside the configured roots; say so before submitting."""
    d = data_dir.resolve()
    roots = [cfg.paths.data_root, *cfg.paths.allowed_roots]
    if not any(d == r.resolve() or r.resolve() in d.parents for r in roots):
        raise ConfigError(
            f"paths.data_root: {d} is not under the configured data roots "
            f"({', '.join(str(r) for r in roots)}); set paths.data_root or add it to paths.allowed_roots"
        )


ACTIVE_OR_DONE = (db.QUEUED, db.RUNNING, db.IMAGING, db.DONE)


def submit(cfg: Config, blocks: list[Block], data_dir: Path, *, force: bool = False,
           run_id: str | None = None, node_of: dict[int, str] | None = None,
           spec_extra: dict | None = None) -> list[Submitted]:
    """Put blocks in the work queue and record them as queued.

    A block already queued, running or done is left alone unless ``force``;
    a block in flight is never handed out twice. ``spec_extra`` is added to
    every block's spec (a rerun's ``overrides`` and ``flag_template``).
    """
    check_data_dir(cfg, data_dir)
    url = cfg.database_url
    queue = WorkQueue.from_url(cfg.broker.url)
    out = []
    cal_of = {b.block_id: calibrator_of(cfg, b) for b in blocks}
    for block in sorted(blocks, key=lambda b: (cal_of[b.block_id] is None, b.block_id)):
        prev = db.block(url, block.block_id)
        prev_state = prev["state"] if prev else None
        if prev_state in ACTIVE_OR_DONE and not force:
            out.append(Submitted(block.block_id, "skipped", prev_state))
            continue
        spec = dict(block_spec(block, data_dir, run_id, node_of), calibrator=cal_of[block.block_id],
                    **(spec_extra or {}))
        outcome = queue.enqueue(block.block_id, spec, force=force, first=cal_of[block.block_id] is not None)
        if outcome in ("inflight", "pending"):  # already waiting or running: never twice
            out.append(Submitted(block.block_id, "skipped" if outcome == "pending" else "inflight",
                                 prev_state or db.QUEUED))
            continue
        db.upsert_block(
            url, block.block_id, state=db.QUEUED, reason=None, data_dir=str(data_dir), mid_jd=block.mid_jd,
            n_subbands_found=len(block.files), n_subbands_ok=0, submitted_at=db.utcnow(), started_at=None,
            finished_at=None, timings={}, run_id=run_id,
        )
        for sb in block.missing:
            db.upsert_subband(url, block.block_id, sb, state=db.SB_FAILED, reason="missing from the block",
                              path=None, node=(node_of or {}).get(sb) or cfg.node_for_subband(sb).name)
        out.append(Submitted(block.block_id, "queued", prev_state))
    return out


def calibrator_of(cfg: Config, block: Block) -> str | None:
    """Name of the catalogued calibrator this block's beam sees brightly enough, if any."""
    import math

    from .calibrators import calibrator_for_block

    dec = block.pointing_dec_deg()
    if dec is None:
        return None
    c = calibrator_for_block(block.mid_jd, math.radians(dec), cfg.calibration.min_apparent_jy,
                             cfg.calibration.max_offset_deg,
                             include_synthetic=cfg.calibration.include_synthetic_calibrators)
    return c.calibrator.name if c else None


class Dispatcher:
    """Fills the imaging nodes' free slots from the work queue and reaps expired leases.

    ``step()`` is cheap and idempotent: run it in a loop (``contimg run`` does
    while it waits; ``contimg dispatch`` does as a service). Several
    dispatchers may run at once: every queue change is atomic in Redis.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.queue = WorkQueue.from_url(cfg.broker.url)
        self._live: set[str] | None = None  # nodes with a worker answering; None: not checked yet
        self._checked_at = -float("inf")
        self._down_since: dict[str, float] = {}
        self._waiting: dict[str, set[str]] = {}  # block id -> down nodes it waits for
        self._notified_at = -float("inf")  # monotonic time of the last notification pass

    def step(self) -> list[str]:
        """One pass; returns human-readable events."""
        cfg, url, events = self.cfg, self.cfg.database_url, []
        d = cfg.dispatch
        for r in self.queue.reap(d.max_attempts):
            if r.outcome == "failed":
                reason = (f"handed out {r.attempts} times and its lease expired each time (tasks did not finish "
                          f"within dispatch.lease_s={d.lease_s:g} s); check the workers, then `contimg resubmit`")
                db.upsert_block(url, r.block_id, state=db.FAILED, reason=reason, finished_at=db.utcnow())
            else:
                db.upsert_block(url, r.block_id, state=db.QUEUED,
                                reason=f"lease expired on attempt {r.attempts}; queued again")
            events.append(f"{r.block_id} lease expired: {r.outcome}")
        live = self._check_nodes()
        if live is not None:
            events += self._hold_blocks_on_down_nodes(live)
        # an imaging node with no worker would only let its callbacks queue up
        nodes = [n.name for n in cfg.imaging_nodes() if live is None or n.name in live]
        progress = True
        while progress:  # round-robin over imaging nodes, one block at a time
            progress = False
            for node in nodes:
                c = self.queue.claim(node, d.max_inflight_per_node, d.lease_s)
                if c is None:
                    continue
                progress = True
                db.upsert_block(url, c.block_id, imaging_node=node, attempts=c.attempt)
                with results_not_followed(self._app()):  # it follows blocks in the database
                    build_chord(cfg, c.spec, node, c.token).apply_async()
                events.append(f"{c.block_id} dispatched to {node} (attempt {c.attempt})")
        _stop_result_listener(self._app())
        return events + self.notify()

    def idle(self, timeout_s: float) -> None:
        """Wait for the next pass: until a block frees its slot, or ``timeout_s``."""
        try:
            self.queue.wait_freed(timeout_s)
        except BROKER_DOWN:
            time.sleep(timeout_s)

    def notify(self, force: bool = False) -> list[str]:
        """Write the weblogs of runs that finished, then email and post the runs and nights
        that finished (contimg/notify.py), at most every ``notify.check_s`` unless ``force``;
        never raises: neither ever stops dispatching."""
        now = time.monotonic()
        if not force and now - self._notified_at < self.cfg.notify.check_s:
            return []
        self._notified_at = now
        events = []
        try:
            events += self.request_night_mosaics()
        except Exception:
            log.exception("night mosaic pass failed; dispatching goes on")
        try:  # weblogs first: the notifications link to them
            from .weblog import render_finished_runs

            events += [f"weblog {p}" for p in render_finished_runs(self.cfg)]
        except Exception:
            log.exception("weblog pass failed; dispatching goes on")
        try:
            from .notify import describe, notify_finished_runs

            return events + [describe(n) for n in notify_finished_runs(self.cfg)]
        except Exception:
            log.exception("notification pass failed (the products database?); dispatching goes on")
            return events

    def request_night_mosaics(self) -> list[str]:
        """Send the mosaics of every night that just finished to the first imaging node with a worker.

        Once per night, whichever dispatcher gets there first: the night is
        claimed in the products database before the task is sent
        (:func:`contimg.strips.nights_wanting_mosaics`), and the task records
        the outcome. With the broker down nothing is claimed; a send that fails
        anyway is not retried here: the claim is taken back. Either way the
        next pass asks again.
        """
        from .strips import nights_wanting_mosaics
        from .tasks.app import configure

        nights = nights_wanting_mosaics(self.cfg)
        if not nights:
            return []
        try:
            self.queue.r.ping()  # fails at once where Celery's producer would try to connect for seconds
        except BROKER_DOWN as e:
            log.warning("broker unreachable (%s): the mosaics of night %s wait for the next pass",
                        type(e).__name__, ", ".join(nights))
            return []
        app = configure(self.cfg)
        nodes = self.cfg.imaging_nodes()
        live = [n for n in nodes if self._live is None or n.name in self._live]
        node = (live or nodes)[0]
        url, events = self.cfg.database_url, []
        for date in nights:
            if not db.claim_night_mosaics(url, date):
                continue  # another dispatcher has it
            try:
                with results_not_followed(app):
                    app.send_task("contimg.mosaic_night", args=[date], queue=node.queue, ignore_result=True,
                                  retry=False)
            except BaseException:
                db.forget_night_mosaics(url, date)
                raise
            events.append(f"mosaics of night {date} sent to {node.name}")
        return events

    def _app(self):
        from .tasks.app import app

        return app

    def _check_nodes(self) -> set[str] | None:
        """Nodes with a worker answering a ping, refreshed every ``dispatch.node_check_s``."""
        every = self.cfg.dispatch.node_check_s
        if every <= 0:
            return None
        now = time.monotonic()
        if now - self._checked_at >= every:
            from .tasks.app import configure

            replies = configure(self.cfg).control.ping(timeout=1.0) or []
            self._live = {name.split("@", 1)[0] for r in replies for name in r}
            self._checked_at = now
        for n in self.cfg.nodes:
            if n in self._live:
                self._down_since.pop(n, None)
            else:
                self._down_since.setdefault(n, time.time())
        return self._live

    def _hold_blocks_on_down_nodes(self, live: set[str]) -> list[str]:
        """Keep the lease of in-flight blocks whose work waits on a node with no worker.

        Their tasks sit safely in that node's queue; handing the block out
        again would only queue a second copy behind the first. The block's
        reason says which node it waits for, and is updated when it goes on.
        """
        cfg, url, events = self.cfg, self.cfg.database_url, []
        holders = self.queue.inflight()
        for bid, token in self.queue.tokens().items():
            spec = self.queue.spec(bid)
            if spec is None:
                continue
            needed = set(spec.get("nodes", {}).values()) | {
                cfg.node_for_subband(int(sb)).name for sb in spec["files"] if sb not in spec.get("nodes", {})}
            needed.add(holders.get(bid, ""))
            down = sorted(n for n in needed if n in cfg.nodes and n not in live)
            was = self._waiting.get(bid, set())
            if down:
                self.queue.renew(bid, token, cfg.dispatch.lease_s)
                if set(down) != was:
                    since = datetime.fromtimestamp(min(self._down_since[n] for n in down), timezone.utc)
                    db.upsert_block(url, bid, reason=f"waiting for node {', '.join(down)}: no worker answering "
                                                     f"since {since:%H:%M:%S} UTC; start its worker "
                                                     f"(or resubmit with --remap)")
                    events.append(f"{bid} waits for {', '.join(down)}")
                self._waiting[bid] = set(down)
            elif was:
                db.upsert_block(url, bid, reason=f"waited for node {', '.join(sorted(was))} (no worker); went on")
                events.append(f"{bid} goes on: {', '.join(sorted(was))} back")
                del self._waiting[bid]
        return events


def _stop_result_listener(app) -> None:
    """Drop the result subscriptions Celery made while sending.

    The dispatcher follows blocks in the products database, never through
    result messages; left subscribed, Celery's result objects try to
    unsubscribe from Redis when finalized, which fails noisily at exit once a
    private Redis has stopped.
    """
    consumer = getattr(getattr(app, "backend", None), "result_consumer", None)
    if consumer is not None and getattr(consumer, "subscribed_to", None):
        consumer.subscribed_to.clear()
        consumer.stop()


ProgressFn = Callable[[str], None]


def _broker_errors() -> tuple[type[BaseException], ...]:
    import redis
    from kombu.exceptions import OperationalError

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
            OperationalError, ConnectionError)


BROKER_DOWN = _broker_errors()
"""Errors that mean the broker is (briefly) unreachable, not that the work is wrong."""


def wait(cfg: Config, block_ids: list[str], progress: ProgressFn | None = None, poll_s: float | None = None,
         timeout_s: float | None = None, dispatcher: Dispatcher | None = None, finish: bool = True) -> list[dict]:
    """Wait until every block is done or failed, reporting state changes.

    With a ``dispatcher`` (the default), this process also hands out the
    blocks as imaging slots free up, and when all have ended (with ``finish``)
    writes the weblogs and notifications of the runs that finished
    (``Dispatcher.notify``). Returns the final block records. Raises
    TimeoutError naming the blocks still open when ``timeout_s`` passes.
    """
    url = cfg.database_url
    poll_s = poll_s if poll_s is not None else cfg.dispatch.poll_s
    dispatcher = dispatcher if dispatcher is not None else Dispatcher(cfg)
    last: dict[str, str] = {}
    t0 = time.monotonic()
    final = {db.DONE, db.FAILED}
    open_ids = list(dict.fromkeys(block_ids))  # only these are polled: a night's pass costs what is left of it
    total = len(open_ids)
    while True:
        try:
            dispatcher.step()
        except BROKER_DOWN as e:  # a restarting Redis: the work waits in it, persisted; try again
            if progress:
                progress(f"broker unreachable ({type(e).__name__}); retrying in {poll_s:g} s")
        states = db.states(url, open_ids)
        for bid in open_ids:
            st = states.get(bid, "unknown")
            if st != last.get(bid) and progress:
                n_done = total - sum(1 for b in open_ids if states.get(b) not in final)
                progress(f"[{n_done}/{total}] {bid} {st} ({time.monotonic() - t0:.0f} s)")
            last[bid] = st
        open_ids = [b for b in open_ids if states.get(b) not in final]
        if not open_ids:
            if finish and isinstance(dispatcher, Dispatcher):  # the last blocks' run and night, before this process ends
                dispatcher.notify(force=True)
                _wait_for_night_mosaics(cfg, block_ids, progress)
            return db.blocks(url, block_ids)
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"blocks still open after {timeout_s:.0f} s: {', '.join(open_ids)}")
        dispatcher.idle(poll_s)


def _wait_for_night_mosaics(cfg: Config, block_ids: list[str], progress: ProgressFn | None) -> None:
    """Wait until the mosaics requested for the nights of ``block_ids`` are recorded, and report them.

    So that ``contimg run`` and the demo end with them (their workers stop
    when this returns). Gives up, saying so, after the task time limit: the
    task may still finish on a cluster that stays up. Nights never requested
    (not finished, or ``pipeline.night_mosaics`` off) are not waited for.
    """
    from .strips import mosaics_pending

    dates = sorted({b[:10] for b in block_ids})
    pending = mosaics_pending(cfg, dates)
    if pending and progress:
        progress(f"mosaics of night {', '.join(pending)}: being made")
    t0, limit = time.monotonic(), cfg.broker.task_time_limit_s + 60
    while pending and time.monotonic() - t0 < limit:
        time.sleep(0.5)
        pending = mosaics_pending(cfg, pending)
    if pending:
        log.warning("mosaics of night %s not recorded after %.0f s; the task may still finish",
                    ", ".join(pending), limit)
    if progress:
        for date, rec in sorted(db.night_mosaics(cfg.database_url, dates).items()):
            d = rec["details"]
            what = (f"{len(d.get('mosaics', []))} mosaic(s) in {d.get('directory')}" if rec["state"] == "done"
                    else d.get("reason", "not recorded yet"))
            progress(f"mosaics of night {date}: {rec['state']}, {what}")


STAGES = ("convert_s", "flag_s", "calibrate_s", "concat_s", "image_s")


def summarize(records: list[dict], wall_s: float) -> dict:
    """Counts, reasons, products and stage times of finished blocks."""
    done = [r for r in records if r["state"] == db.DONE]
    failed = [r for r in records if r["state"] == db.FAILED]
    stages = {k: round(sum((r.get("timings") or {}).get(k, 0.0) for r in records), 2) for k in STAGES}
    block_walls = [r["timings"]["block_wall_s"] for r in records if "block_wall_s" in (r.get("timings") or {})]
    return {
        "n_blocks": len(records),
        "n_done": len(done),
        "n_failed": len(failed),
        "wall_s": round(wall_s, 2),
        "stage_s_total": stages,
        "block_wall_s_mean": round(sum(block_walls) / len(block_walls), 2) if block_walls else None,
        "blocks": [
            {"block_id": r["block_id"], "state": r["state"], "reason": r["reason"],
             "n_subbands_ok": r["n_subbands_ok"], "image": r["products"].get("image_fits"),
             "peak_jy": r.get("image", {}).get("peak_jy"), "rms_jy": r.get("image", {}).get("rms_jy"),
             "products": r["products"], "timings": r["timings"]}
            for r in records
        ],
    }


def format_summary(s: dict) -> str:
    lines = [f"blocks: {s['n_done']} done, {s['n_failed']} failed, {s['n_blocks']} in all; "
             f"wall time {s['wall_s']:.1f} s"]
    st = s["stage_s_total"]
    lines.append("time per stage, summed over blocks: " + ", ".join(
        f"{k.removesuffix('_s')} {v:.1f} s" for k, v in st.items())
        + " (convert summed over subbands)")
    if s["block_wall_s_mean"] is not None:
        lines.append(f"mean wall time per block, first subband task to registered image: {s['block_wall_s_mean']:.1f} s")
    for b in s["blocks"]:
        line = f"  {b['block_id']}  {b['state']:<6}  {b['n_subbands_ok']:>2}/16 subbands"
        if b["peak_jy"] is not None:
            line += f"  peak {b['peak_jy']:.3f} Jy/beam, rms {1e3 * b['rms_jy']:.1f} mJy/beam"
        lines.append(line)
        if b["image"]:
            lines.append(f"      {b['image']}")
        if b["reason"]:
            lines.append(f"      reason: {b['reason']}")
    return "\n".join(lines)
