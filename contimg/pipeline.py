"""Submit blocks as Celery chords and follow them to the end.

One chord per block: a header task per subband routed to the queue of the
node that holds it, and a callback on an imaging node. This module never
imports CASA; it only builds signatures and reads the products database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from celery import chord

from . import database as db
from .blocks import Block
from .config import Config
from .errors import ConfigError
from .products import subband_ms


@dataclass
class Submitted:
    block_id: str
    result_id: str
    imaging_node: str


def build_chord(cfg: Config, block: Block, imaging_node: str):
    """The chord of one block: convert each subband on its node, then image."""
    from .tasks.block import image_block
    from .tasks.subband import convert_subband

    header = []
    nodes_used = set()
    for sb, f in sorted(block.files.items()):
        node = cfg.node_for_subband(sb)
        nodes_used.add(node.name)
        ms = subband_ms(cfg.scratch_root(node.name), block.block_id, sb)
        header.append(
            convert_subband.s(block.block_id, sb, str(f.path), str(ms), block.mid_jd, node.name).set(queue=node.queue)
        )
    callback = image_block.s(
        block_id=block.block_id, node=imaging_node, missing=block.missing, nodes_used=sorted(nodes_used)
    ).set(queue=cfg.node(imaging_node).queue, ignore_result=True)  # its outcome is in the database
    return chord(header, callback)


def check_data_dir(cfg: Config, data_dir: Path) -> None:
    """Workers refuse paths outside the configured roots; say so before submitting."""
    d = data_dir.resolve()
    roots = [cfg.paths.data_root, *cfg.paths.allowed_roots]
    if not any(d == r.resolve() or r.resolve() in d.parents for r in roots):
        raise ConfigError(
            f"paths.data_root: {d} is not under the configured data roots "
            f"({', '.join(str(r) for r in roots)}); set paths.data_root or add it to paths.allowed_roots"
        )


def submit(cfg: Config, blocks: list[Block], data_dir: Path) -> list[Submitted]:
    """Record the blocks as queued and send one chord per block."""
    check_data_dir(cfg, data_dir)
    imagers = [n.name for n in cfg.imaging_nodes()]
    url = cfg.database_url
    out = []
    for i, block in enumerate(blocks):
        node = imagers[i % len(imagers)]
        prev = db.block(url, block.block_id)
        db.upsert_block(
            url, block.block_id, state=db.QUEUED, reason=None, data_dir=str(data_dir), mid_jd=block.mid_jd,
            n_subbands_found=len(block.files), n_subbands_ok=0, imaging_node=node,
            attempts=(prev["attempts"] if prev else 0) + 1, submitted_at=db.utcnow(), started_at=None,
            finished_at=None, timings={},
        )
        for sb in block.missing:
            db.upsert_subband(url, block.block_id, sb, state=db.SB_FAILED, reason="missing from the block",
                              path=None, node=cfg.node_for_subband(sb).name)
        res = build_chord(cfg, block, node).apply_async()
        out.append(Submitted(block.block_id, res.id, node))
    _stop_result_listener(res.app if blocks else None)
    return out


def _stop_result_listener(app) -> None:
    """Drop the result subscriptions Celery made while sending.

    The submitter follows blocks in the products database, never through
    result messages; left subscribed, Celery's result objects try to
    unsubscribe from Redis when finalized, which fails noisily at exit once the
    private Redis has stopped.
    """
    consumer = getattr(getattr(app, "backend", None), "result_consumer", None)
    if consumer is not None and getattr(consumer, "subscribed_to", None) is not None:
        consumer.subscribed_to.clear()
        consumer.stop()


ProgressFn = Callable[[str], None]


def wait(cfg: Config, block_ids: list[str], progress: ProgressFn | None = None, poll_s: float = 0.5,
         timeout_s: float | None = None) -> list[dict]:
    """Wait until every block is done or failed, reporting state changes.

    Returns the final block records. Raises TimeoutError naming the blocks
    still open when ``timeout_s`` passes.
    """
    url = cfg.database_url
    last: dict[str, str] = {}
    t0 = time.monotonic()
    final = {db.DONE, db.FAILED}
    while True:
        states = db.states(url, block_ids)
        for bid in block_ids:
            st = states.get(bid, "unknown")
            if st != last.get(bid) and progress:
                n_done = sum(1 for s in states.values() if s in final)
                progress(f"[{n_done}/{len(block_ids)}] {bid} {st} ({time.monotonic() - t0:.0f} s)")
            last[bid] = st
        if all(states.get(b) in final for b in block_ids):
            return db.blocks(url, block_ids)
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            open_ = [b for b in block_ids if states.get(b) not in final]
            raise TimeoutError(f"blocks still open after {timeout_s:.0f} s: {', '.join(open_)}")
        time.sleep(poll_s)


STAGES = ("convert_s", "concat_s", "image_s")


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
