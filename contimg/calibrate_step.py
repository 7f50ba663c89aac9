"""The calibration part of the per-subband step (Celery-free).

After conversion and flagging, a subband of a calibrator block solves its own
bandpass and gains and registers them (with their validity window) in the
products database; a subband of a target block gets the nearest valid
caltables of the same subband (one set, or two to interpolate) and applies
them. With none, ``calibration.without_calibration`` decides: image it
uncalibrated and say so, wait (retry later), or fail.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import database as db
from .calibration import CaltableSet, apply_subband, select_caltables, solve_subband
from .calibrators import calibrator_for_block
from .config import Config
from .errors import PermanentError, TransientError


def calibrate_subband(cfg: Config, block_id: str, subband: int, ms: Path, mid_jd: float,
                      pointing_dec_deg: float | None) -> dict:
    """Solve (calibrator block) or apply (target block) calibration; returns a JSON-friendly record.

    Raises
    ------
    PermanentError
        No valid caltables and ``without_calibration = "fail"``.
    TransientError
        No valid caltables yet and ``without_calibration = "wait"``.
    """
    settings, url = cfg.calibration, cfg.database_url
    if pointing_dec_deg is None:
        return {"calibration": "uncalibrated", "reason": "not a DSA-110 drift-scan file (no pointing declination)"}
    dec = math.radians(pointing_dec_deg)
    cal = calibrator_for_block(mid_jd, dec, settings.min_apparent_jy, settings.max_offset_deg,
                               include_synthetic=settings.include_synthetic_calibrators)
    if cal is not None:
        res = solve_subband(ms, cal.calibrator, settings, cfg.paths.products_root, block_id=block_id,
                            subband=subband, pointing_dec_rad=dec)
        ct = res.caltables
        db.record_caltables(url, block_id=block_id, subband=subband, bandpass=ct.bandpass, gain=ct.gain,
                            calibrator=ct.calibrator, time_jd=ct.time_jd, valid_from_jd=res.valid_from_jd,
                            valid_to_jd=res.valid_to_jd, details={"refant": res.refant,
                                                                  "flagged_solutions": res.flagged_solutions})
        applied = apply_subband(ms, ct, settings)
        return {"calibration": "solved", "calibrator": cal.calibrator.name, "apparent_jy": cal.apparent_jy,
                "caltables": ct.as_dict(), "seconds": {**res.seconds, **applied.seconds}}
    cands = [CaltableSet(c["block_id"], c["subband"], c["bandpass"], c["gain"], c["time_jd"], c["calibrator"])
             for c in db.caltables_near(url, subband, mid_jd)]
    sel = select_caltables(cands, mid_jd, settings.validity_window_s)
    if sel:
        applied = apply_subband(ms, sel, settings)
        return {"calibration": "applied", "selection": sel.as_dict(), "seconds": applied.seconds}
    why = (f"no valid caltables for sb{subband:02d} within {settings.validity_window_s:g} s of block {block_id}")
    if settings.without_calibration == "fail":
        raise PermanentError(f"{why}; process a calibrator block first or set calibration.without_calibration")
    if settings.without_calibration == "wait":
        raise TransientError(f"{why} yet; waiting for a calibrator block")
    return {"calibration": "uncalibrated", "reason": why}
