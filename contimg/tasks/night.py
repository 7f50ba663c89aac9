"""The nightly mosaics of a run, once all its blocks have ended (sent by the dispatcher)."""

from __future__ import annotations

import logging
from ..products import check_run_id
from ..strips import mosaic_run_nights
from .app import app, current_config

log = logging.getLogger(__name__)


@app.task(bind=True, name="contimg.mosaic_nights", ignore_result=True)
def mosaic_nights(self, run_id: str, dates: list[str]) -> dict:
    """Mosaic the nights (UTC dates) of a finished run and record them (:func:`contimg.strips.mosaic_run_nights`).

    The outcome is the run's ``night_mosaics`` product in the products
    database (``contimg runs``, the weblogs); the run id and each date of the
    message are checked before any path is made of them (a malformed date is
    recorded as that night's error).
    """
    check_run_id(run_id)
    result = mosaic_run_nights(current_config(), run_id, list(dates))
    if result["errors"]:
        log.warning("run %s: night mosaics failed for %s", run_id, "; ".join(f"{d}: {e}" for d, e in result["errors"].items()))
    return result
