"""Nightly mosaics: the night's block images grouped by declination strip and combined.

The telescope drifts, so one night at one pointing declination is one strip of
overlapping blocks. :func:`night_mosaics` takes the night's imaged blocks from the
products database, groups them by the declination of their phase centre (to
``STRIP_TOLERANCE_DEG``), and makes one mosaic per strip with
:func:`contimg.mosaic.make_mosaic` (per-pixel pb^2/sigma^2 weights, noise and weight
maps, PNG quicklook). The mosaics land in ``{products_root}/mosaics/{date}/``
(:func:`contimg.products.mosaic_products`), where the weblogs find their quicklooks
and ``contimg catalogue build`` takes them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from . import database as db
from .config import Config
from .mosaic import MosaicSettings, make_mosaic
from .products import mosaic_id, mosaic_products

STRIP_TOLERANCE_DEG = 0.05
"""Blocks whose phase-centre declinations differ by less than this belong to one strip."""


def imaged_blocks(cfg: Config, date: str) -> list[tuple[str, float, str, str]]:
    """(block id, declination, image FITS, pb FITS) of the night's done blocks whose files exist."""
    from astropy.io import fits

    out = []
    for b in db.blocks(cfg.database_url, date=date):
        prods = b.get("products") or {}
        image, pb = prods.get("image_fits"), prods.get("pb_fits")
        if b["state"] != db.DONE or not image or not pb or not Path(image).is_file() or not Path(pb).is_file():
            continue
        out.append((b["block_id"], float(fits.getheader(image)["CRVAL2"]), image, pb))
    return out


def group_strips(blocks: list[tuple[str, float, str, str]]) -> list[list[tuple[str, float, str, str]]]:
    """Blocks grouped by declination (within ``STRIP_TOLERANCE_DEG``), each group in time order."""
    strips: list[list[tuple[str, float, str, str]]] = []
    for b in sorted(blocks, key=lambda x: (x[1], x[0])):
        if strips and abs(b[1] - strips[-1][0][1]) < STRIP_TOLERANCE_DEG:
            strips[-1].append(b)
        else:
            strips.append([b])
    return [sorted(s) for s in strips]


def night_mosaics(cfg: Config, date: str, *, png: bool = True) -> list[dict]:
    """One mosaic per declination strip of the night; returns each mosaic's result as a dict.

    Raises
    ------
    KeyError
        The night has no imaged block.
    """
    blocks = imaged_blocks(cfg, date)
    if not blocks:
        raise KeyError(f"no imaged blocks recorded for {date}; `contimg status` lists the known blocks")
    settings = MosaicSettings(pb_cutoff=cfg.imaging.pb_limit)
    results = []
    for strip in group_strips(blocks):
        dec = sum(b[1] for b in strip) / len(strip)
        mid = mosaic_id(dec, strip[0][0], strip[-1][0])
        res = make_mosaic([(b[2], b[3]) for b in strip], mosaic_products(cfg.paths.products_root, mid), settings,
                          png=png)
        results.append(res.as_dict())
    return results


# -- the mosaics of a night, made once it has ended ------------------------------------

RECENT_DAYS = 7
"""Only nights with a run submitted this recently are mosaicked on their own: a products
database that predates the feature does not send a season of mosaics at once
(``contimg mosaic --night`` does older nights)."""


def nights_wanting_mosaics(cfg: Config, now: datetime | None = None) -> list[str]:
    """Nights (UTC dates) to mosaic now: finished, recent, at least one block done, never requested.

    Finished as for the night notifications (:mod:`contimg.notify`): every
    block of the date that a run submitted is done or failed, and the date
    has ended. So a night that the incoming-directory watcher submits block
    by block, one run each, is mosaicked once, after its last block, and
    not after every run.
    """
    if not cfg.pipeline.night_mosaics or cfg.pipeline.stage_set != "science":
        return []
    url, now = cfg.database_url, now or db.utcnow()
    since = now - timedelta(days=RECENT_DAYS)
    out = []
    for date in db.unmosaicked_nights(url):
        try:
            if now < datetime.strptime(date, "%Y-%m-%d") + timedelta(days=1):
                continue  # the night is still going on
        except ValueError:
            continue
        runs = db.night_runs(url, date)
        if not any(r["submitted_at"] and db.parse_iso(r["submitted_at"]) >= since for r in runs):
            continue
        states = {b["state"] for r in runs for b in r["blocks"] if b["block_id"][:10] == date}
        if states and states <= {db.DONE, db.FAILED} and db.DONE in states:
            out.append(date)
    return out


def mosaic_night(cfg: Config, date: str) -> dict:
    """Mosaic one night, record the outcome and rewrite the night's weblog (the automatic pass's task).

    The night is mosaicked whole (every imaged block of the date, of any
    run); the mosaics are written atomically, so doing it twice is harmless.

    Returns
    -------
    dict
        ``state`` (``done`` or ``failed``), ``mosaics`` (ids) and, when
        failed, ``reason``.
    """
    from . import weblog

    datetime.strptime(date, "%Y-%m-%d")  # checked before any path is made of it
    try:
        ids = [r["mosaic_id"] for r in night_mosaics(cfg, date)]
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        db.record_night_mosaics(cfg.database_url, date, "failed", reason=reason)
        return {"state": "failed", "mosaics": [], "reason": reason}
    details: dict = {"mosaics": ids, "directory": str(Path(cfg.paths.products_root) / "mosaics" / date)}
    try:
        weblog.render_night(cfg, date)
    except Exception as e:  # the mosaics stand; the weblog can be rewritten by hand (`contimg weblog`)
        details["weblog"] = f"not rewritten: {type(e).__name__}: {e}"
    db.record_night_mosaics(cfg.database_url, date, "done", **details)
    return {"state": "done", **details}


def mosaics_pending(cfg: Config, dates: list[str]) -> list[str]:
    """The nights among ``dates`` whose mosaics were requested and are not recorded yet."""
    found = db.night_mosaics(cfg.database_url, dates)
    return [d for d in dates if found.get(d, {}).get("state") == "queued"]
