"""The mosaics of a night that has ended (sent by the dispatcher's finishing pass)."""

from __future__ import annotations

import logging

from ..strips import mosaic_night as _mosaic_night
from .app import app, current_config

log = logging.getLogger(__name__)


@app.task(bind=True, name="contimg.mosaic_night", ignore_result=True)
def mosaic_night(self, date: str) -> dict:
    """Mosaic the night (UTC date) and record it (:func:`contimg.strips.mosaic_night`).

    The outcome is the night's row in the products database's
    ``night_mosaics`` table, and the night's weblog; the date of the message
    is checked before any path is made of it.
    """
    result = _mosaic_night(current_config(), date)
    if result["state"] != "done":
        log.warning("night %s: mosaics failed: %s", date, result.get("reason"))
    return result
