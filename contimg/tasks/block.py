"""The per-block chord callback: concatenate (tclean only), image, register."""

from __future__ import annotations

import logging
import shutil
import time

from celery.exceptions import SoftTimeLimitExceeded

from .. import database as db
from ..config import with_overrides
from ..errors import PermanentError, TransientError
from ..products import block_products, block_scratch_dir
from .app import app, current_config, lease_holds, soft_time_limit_s, work_queue
from .subband import backoff_s, cleanup_scratch

log = logging.getLogger(__name__)


def _describe_failures(results: list[dict], missing: list[int]) -> str:
    parts = [f"sb{r['subband']:02d}: {r.get('reason')}" for r in sorted(results, key=lambda r: r["subband"])
             if r.get("state") != "ok"]
    parts += [f"sb{sb:02d}: missing from the block" for sb in missing]
    return "; ".join(parts)


@app.task(bind=True, name="contimg.image_block", ignore_result=True)
def image_block(self, results: list[dict], block_id: str, node: str, missing: list[int] | None = None,
                nodes_used: list[str] | None = None, token: str | None = None, run_id: str | None = None,
                overrides: dict | None = None) -> dict:
    """Image Stokes I from the good subbands of a block, register products.

    With ``imaging.backend = "tclean"`` the subband MSs are first concatenated
    into the block MS (registered as ``concat_ms``); with ``"wsclean"`` they are
    imaged directly, no block MS exists and none is registered.

    With a ``run_id`` the products go to that run's directory and are also
    registered as the run's products (a rerun never overwrites an earlier run).

    A block with fewer good subbands than ``pipeline.min_subbands`` is recorded
    as failed with the reason; the night goes on.
    """
    cfg = with_overrides(current_config(), overrides)  # a rerun's changed settings
    url = cfg.database_url
    if not lease_holds(block_id, token) or any(r.get("state") == "superseded" for r in results):
        log.warning("block %s: stale lease, the block was handed out again; this copy stops", block_id)
        return {"block_id": block_id, "state": "superseded"}
    missing = list(missing or [])
    ok = sorted((r for r in results if r.get("state") == "ok"), key=lambda r: r["subband"])
    # Per-step seconds summed over subbands (CPU spent); subband_wall_s: the slowest subband.
    timings = {k: round(sum((r.get("steps_s") or {}).get(k, 0.0) for r in results), 3)
               for k in ("convert_s", "flag_s", "calibrate_s")}
    timings["subband_wall_s"] = round(max((r.get("seconds") or 0.0 for r in results), default=0.0), 3)
    failures = _describe_failures(results, missing)
    uncalibrated = sorted(r["subband"] for r in ok if r.get("calibration") == "uncalibrated")

    def finish(state: str, reason: str | None, **extra) -> dict:
        started = db.started_at(url, block_id)
        now = db.utcnow()
        if started:
            timings["block_wall_s"] = round((now - started).total_seconds(), 3)
        db.upsert_block(url, block_id, state=state, reason=reason, n_subbands_ok=len(ok),
                        finished_at=now, timings=timings)
        if token is not None:
            work_queue().release(block_id, token)  # frees the imaging slot for the next block
        keep = state == db.FAILED and cfg.pipeline.keep_scratch_on_failure
        if not keep:
            # every node that ran a subband of the block, unless all its results say they wrote no scratch
            reported = {r.get("node") for r in results}
            dirty = {r.get("node") for r in results if r.get("scratch", True)}
            for n in sorted((set(nodes_used or []) - reported) | (dirty & set(nodes_used or []))):
                if n == node:  # this node's scratch is local: no task needed
                    shutil.rmtree(block_scratch_dir(cfg.scratch_root(n), block_id), ignore_errors=True)
                else:
                    cleanup_scratch.s(block_id, n).set(queue=cfg.node(n).queue).apply_async()
        return {"block_id": block_id, "state": state, "reason": reason, "n_subbands_ok": len(ok),
                "timings": timings, **extra}

    if len(ok) < cfg.pipeline.min_subbands:
        return finish(db.FAILED, f"only {len(ok)} of 16 subbands converted, minimum is "
                                 f"{cfg.pipeline.min_subbands} ({failures})")
    db.upsert_block(url, block_id, state=db.IMAGING, imaging_node=node, n_subbands_ok=len(ok))
    if cfg.pipeline.stage_set == "noop":
        return finish(db.DONE, "no-op stage set: nothing imaged" + (f"; {failures}" if failures else ""))
    prods = block_products(cfg.paths.products_root, block_id, run_id)
    try:
        from ..imaging import concat_subbands, image_block as make_image, needs_concat

        concatenated = needs_concat(cfg.imaging)
        if concatenated:
            t0 = time.monotonic()
            concat_subbands([r["ms_path"] for r in ok], prods.concat_ms)
            timings["concat_s"] = round(time.monotonic() - t0, 3)
            vis = [prods.concat_ms]
        else:
            vis = [r["ms_path"] for r in ok]
        t0 = time.monotonic()
        img = make_image(vis, prods, cfg.imaging, block_id=block_id,
                         extra_header={"NSUBBAND": len(ok)})
        timings["image_s"] = round(time.monotonic() - t0, 3)
    except TransientError as e:
        if self.request.retries < cfg.pipeline.max_retries:
            raise self.retry(exc=e, countdown=backoff_s(self.request.retries))
        return finish(db.FAILED, f"imaging: {e} (gave up after {self.request.retries + 1} attempts)")
    except PermanentError as e:
        return finish(db.FAILED, f"imaging: {e}")
    except SoftTimeLimitExceeded:
        return finish(db.FAILED, f"imaging exceeded its time limit ({soft_time_limit_s(cfg)} s, "
                                 f"broker.task_time_limit_s = {cfg.broker.task_time_limit_s} s)")
    except Exception as e:  # record a bug as a failure of this block; the night goes on
        log.exception("unexpected error imaging block %s", block_id)
        return finish(db.FAILED, f"imaging: internal error {type(e).__name__}: {e}")
    info = img.as_dict()
    if concatenated:
        db.record_product(url, block_id, "concat_ms", prods.concat_ms, n_subbands=len(ok))
    else:
        log_details = {"n_subbands": len(ok), "imaged_from": "subband MSs (no concatenated block MS)"}
        db.record_product(url, block_id, "imaging_log", prods.imaging_log(img.backend), **log_details)
        if run_id:  # the imager's own account of the image, archived with it
            db.record_run_product(url, run_id, block_id, "imaging_log", prods.imaging_log(img.backend), **log_details)
    measured = {k: info[k] for k in ("rms_jy", "peak_jy", "peak_pbcor_jy", "beam_major_arcsec",
                                     "beam_minor_arcsec", "beam_pa_deg", "cell_arcsec", "imsize")}
    for kind, path in info["fits"].items():
        db.record_product(url, block_id, f"{kind.replace('.', '_')}_fits", path, **measured)
        if run_id:
            db.record_run_product(url, run_id, block_id, f"{kind.replace('.', '_')}_fits", path, **measured)
    notes = []
    if failures:
        notes.append(f"imaged from {len(ok)} of 16 subbands ({failures})")
    if uncalibrated:
        notes.append("UNCALIBRATED: no valid caltables for " + ",".join(f"sb{sb:02d}" for sb in uncalibrated))
    # Forced photometry of the reference catalogue (skipped, and recorded so, while there is none);
    # it never fails the block (docs/survey.md).
    from ..survey import photometer_after_imaging

    phot = photometer_after_imaging(url, block_id, info["fits"].get("image"), info["fits"].get("pb"), cfg.survey)
    timings["photometry_s"] = phot.get("seconds", 0.0)
    return finish(db.DONE, "; ".join(notes) or None, image=info, photometry=phot)
