"""Header tasks of a block's chord: one per subband, on the node that holds it.

Each converts its subband file into the node's scratch, flags it, and
calibrates it (solve on a calibrator block, apply the nearest valid caltables
on a target block), then returns a structured result.
"""

from __future__ import annotations

import logging
import random
import shutil
import time

from celery.exceptions import SoftTimeLimitExceeded

from .. import database as db
from .. import flagtemplate
from ..config import check_path_in_roots, with_overrides
from ..errors import PermanentError, TransientError
from ..products import block_scratch_dir
from .app import app, current_config, lease_holds, soft_time_limit_s

log = logging.getLogger(__name__)


def backoff_s(retries: int, base: float = 5.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**retries)]."""
    return random.uniform(0.0, min(cap, base * 2.0**retries))


def _result(block_id: str, subband: int, node: str, state: str, **extra) -> dict:
    return {"block_id": block_id, "subband": subband, "node": node, "state": state, **extra}


@app.task(bind=True, name="contimg.process_subband", ignore_result=True)
def process_subband(self, block_id: str, subband: int, uvh5_path: str, ms_path: str,
                    block_mid_jd: float, node: str, token: str | None = None, overrides: dict | None = None,
                    flag_template: str | None = None) -> dict:
    """Convert, flag and calibrate one subband file in the node's scratch.

    Returns a structured result (``state`` ok with ``ms_path``, or failed with
    ``reason``) instead of raising, so one bad subband never strands the chord
    (FIELD-NOTES §4). Only :class:`TransientError` is retried. A task whose
    lease ``token`` is stale (the block was handed out again) does nothing.
    A rerun's ``overrides`` (changed settings) and ``flag_template`` apply to this task only.
    """
    cfg = current_config()
    if not lease_holds(block_id, token):
        log.warning("block %s sb%02d: stale lease, the block was handed out again; skipping", block_id, subband)
        return _result(block_id, subband, node, "superseded", reason="stale lease")
    url = cfg.database_url
    attempt = self.request.retries + 1
    t0 = time.monotonic()
    db.upsert_subband(url, block_id, subband, block_running=True, state=db.SB_RUNNING, path=uvh5_path, node=node,
                      attempts=attempt, reason=None)

    def failed(reason: str) -> dict:
        secs = time.monotonic() - t0
        db.upsert_subband(url, block_id, subband, state=db.SB_FAILED, reason=reason, seconds=secs)
        log.warning("block %s sb%02d failed: %s", block_id, subband, reason)
        return _result(block_id, subband, node, "failed", reason=reason, seconds=secs, attempts=attempt)

    try:
        src = check_path_in_roots(cfg, uvh5_path, "subband file")
        dst = check_path_in_roots(cfg, ms_path, "subband MS")
        cfg = with_overrides(cfg, overrides)
        template = check_path_in_roots(cfg, flag_template, "flag template") if flag_template else None
        if cfg.pipeline.stage_set == "noop":
            steps, details, extra = _noop_stages(cfg, src)
        else:
            steps, details, extra = _science_stages(cfg, block_id, subband, src, dst, block_mid_jd, template)
    except TransientError as e:
        if self.request.retries < cfg.pipeline.max_retries:
            db.upsert_subband(url, block_id, subband, reason=f"retrying: {e}")
            raise self.retry(exc=e, countdown=backoff_s(self.request.retries))
        return failed(f"{e} (gave up after {attempt} attempts)")
    except PermanentError as e:
        return failed(str(e))
    except SoftTimeLimitExceeded:
        return failed(f"the subband step exceeded its time limit ({soft_time_limit_s(cfg)} s, "
                      f"broker.task_time_limit_s = {cfg.broker.task_time_limit_s} s); a hung read or tool?")
    except Exception as e:  # a bug must not strand the block: record it as a failure with its type
        log.exception("unexpected error converting %s", uvh5_path)
        return failed(f"internal error {type(e).__name__}: {e}")
    secs = time.monotonic() - t0
    steps = {k: round(v, 3) for k, v in steps.items()}
    db.upsert_subband(url, block_id, subband, state=db.SB_OK, ms_path=str(dst), seconds=secs,
                      details=dict(details, steps_s=steps))
    return _result(block_id, subband, node, "ok", ms_path=str(dst), seconds=secs, attempts=attempt,
                   steps_s=steps, **extra)


def _science_stages(cfg, block_id: str, subband: int, src, dst, block_mid_jd: float, template=None):
    """Convert, flag (and the rerun's flag template), calibrate; returns (step seconds, details, result extras)."""
    from ..calibrate_step import calibrate_subband
    from ..convert import convert_subband
    from ..fast_convert import convert_subband_fast
    from ..flagging import flag_subband

    convert = convert_subband_fast if cfg.pipeline.converter == "fast" else convert_subband

    steps = {}
    t = time.monotonic()
    res = convert(src, dst, block_mid_jd=block_mid_jd)
    steps["convert_s"] = time.monotonic() - t
    t = time.monotonic()
    flags = flag_subband(dst, cfg.flagging, date=block_id[:10])
    applied_template = flagtemplate.apply(dst, template) if template is not None else None
    steps["flag_s"] = time.monotonic() - t
    t = time.monotonic()
    cal = calibrate_subband(cfg, block_id, subband, dst, block_mid_jd, res.pointing_dec_deg)
    steps["calibrate_s"] = time.monotonic() - t
    details = {"convert": res.as_dict(), "flags": flags.as_dict(), "calibration": cal}
    if applied_template:
        details["flag_template"] = applied_template
    return steps, details, {"uvw_max_m": res.uvw_check_max_m, "calibration": cal["calibration"]}


def _noop_stages(cfg, src):
    """The no-op stage set (:mod:`contimg.noop`): check the file, sleep."""
    from ..noop import subband_stage

    # scratch False: nothing was written to the node's scratch, so the callback sends no cleanup there
    return subband_stage(src, cfg.pipeline.noop_seconds), {"stage_set": "noop"}, {"calibration": "noop",
                                                                                 "scratch": False}


@app.task(bind=True, name="contimg.cleanup_scratch")
def cleanup_scratch(self, block_id: str, node: str) -> dict:
    """Remove a block's scratch directory on this node (safe to run twice)."""
    cfg = current_config()
    d = block_scratch_dir(cfg.scratch_root(node), block_id)
    existed = d.exists()
    shutil.rmtree(d, ignore_errors=True)
    return {"block_id": block_id, "node": node, "removed": str(d) if existed else None}
