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
