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


# -- the mosaics of a run's nights, made once all its blocks have ended -----------------

RUN_PRODUCT = "night_mosaics"
"""Run-level product (block ``""``) that records a run's night mosaics: ``details["state"]`` is
``queued`` (requested), ``done`` (``details["nights"]``: date -> mosaic ids) or ``failed``."""


RECENT_DAYS = 7
"""Only runs submitted this recently are mosaicked on their own: a products database that
predates the feature does not send a season of mosaics at once (``contimg mosaic --night``
does older nights)."""


def runs_wanting_mosaics(cfg: Config, now: datetime | None = None) -> list[dict]:
    """Recent runs whose blocks have all ended, one at least done, and whose night mosaics were never requested."""
    if not cfg.pipeline.night_mosaics or cfg.pipeline.stage_set != "science":
        return []
    since = (now or db.utcnow()) - timedelta(days=RECENT_DAYS)
    out = []
    for run in db.runs(cfg.database_url, without_product=RUN_PRODUCT):
        states = set(run["states"])
        recent = run["submitted_at"] is not None and db.parse_iso(run["submitted_at"]) >= since
        if recent and run["block_ids"] and states <= {db.DONE, db.FAILED} and db.DONE in states:
            out.append(run)
    return out


def mark_requested(cfg: Config, run: dict) -> list[str]:
    """Record that the night mosaics of ``run`` are on their way; returns the nights (UTC dates)."""
    dates = sorted({b[:10] for b in run["block_ids"]})
    db.record_run_product(cfg.database_url, run["run_id"], "", RUN_PRODUCT,
                          Path(cfg.paths.products_root) / "mosaics", state="queued", dates=dates)
    return dates


def unmark_requested(cfg: Config, run_id: str) -> None:
    """Undo :func:`mark_requested` (the task could not be sent): the next pass asks again."""
    db.forget_run_product(cfg.database_url, run_id, "", RUN_PRODUCT)


def mosaic_run_nights(cfg: Config, run_id: str, dates: list[str]) -> dict:
    """Mosaic every night of a run, record the result as the run's product and rewrite the nights' weblogs.

    Each night is mosaicked whole (every imaged block of the date, of any
    run), so a night made of several runs ends with the mosaics of all of
    them; the mosaics are written atomically, so doing it twice is harmless.
    A night that fails is recorded with its reason and the others go on.

    Returns
    -------
    dict
        ``state`` (``done`` when every night was mosaicked, else ``failed``),
        ``nights`` (date -> list of mosaic ids) and ``errors`` (date -> reason).
    """
    from . import weblog

    nights: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    for date in dates:
        try:
            datetime.strptime(date, "%Y-%m-%d")  # checked before any path is made of it
            nights[date] = [r["mosaic_id"] for r in night_mosaics(cfg, date)]
        except Exception as e:  # one night's fault must not lose the others'
            errors[date] = f"{type(e).__name__}: {e}"
            continue
        try:
            weblog.render_night(cfg, date)
        except Exception as e:
            errors[date] = f"mosaics made; night weblog not rewritten: {type(e).__name__}: {e}"
    state = "failed" if errors else "done"
    db.record_run_product(cfg.database_url, run_id, "", RUN_PRODUCT, Path(cfg.paths.products_root) / "mosaics",
                          state=state, dates=list(dates), nights=nights, errors=errors)
    return {"state": state, "nights": nights, "errors": errors}


def mosaics_pending(cfg: Config, run_ids: list[str]) -> list[str]:
    """The runs among ``run_ids`` whose night mosaics were requested and are not recorded yet."""
    pending = []
    for run_id in run_ids:
        for p in db.run_products(cfg.database_url, run_id):
            if p["kind"] == RUN_PRODUCT and p["block_id"] == "" and p["details"].get("state") == "queued":
                pending.append(run_id)
    return pending
