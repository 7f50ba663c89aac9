"""`contimg mosaic --night DATE`: the night's imaged blocks, one mosaic per declination strip.

What this checks
----------------
Two synthetic strips (dec 54.6 and dec 16.3, four blocks each, Gaussian beams and known
noise) are recorded as done blocks of one night: the command makes two mosaics, each of
its own four blocks, with image, noise, weight FITS and a PNG; the injected source's
flux in the dec 54.6 mosaic is within 2 % of the truth; a night without imaged blocks is
a one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path

from contimg import database as db
from contimg.cli import main
from contimg.images_sim import StripSpec, write_strip
from contimg.photometry import forced_peak

from conftest import make_config


def test_night_mosaics_per_strip(tmp_path, monkeypatch, capsys):
    cfg = make_config(tmp_path, tmp_path / "data")
    url = cfg.database_url
    north = StripSpec(dec_deg=54.6, n_blocks=4, npix=128)
    south = StripSpec(dec_deg=16.3, n_blocks=4, npix=128, ra0_deg=200.0,
                      start=north.start.replace(hour=9))
    ra_src, dec_src, flux = north.centre(1)[0] + 0.3, 54.7, 0.5
    for spec, ra, dec, fl in ((north, [ra_src], [dec_src], [flux]), (south, [], [], [])):
        for i, (img, pb) in enumerate(write_strip(spec, tmp_path / "products" / f"{spec.dec_deg}", ra, dec, fl,
                                                  seed=int(spec.dec_deg))):
            bid = spec.block_id(i)
            db.upsert_block(url, bid, state="done", data_dir=str(tmp_path))
            db.record_product(url, bid, "image_fits", img)
            db.record_product(url, bid, "pb_fits", pb)
    for k, v in {"CONTIMG_PATHS__PRODUCTS_ROOT": str(cfg.paths.products_root),
                 "CONTIMG_PATHS__DATA_ROOT": str(cfg.paths.data_root)}.items():
        monkeypatch.setenv(k, v)
    assert main(["mosaic", "--night", "2025-10-05", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert sorted(round(r["center_dec_deg"]) for r in results) == [16, 55]
    assert all(r["n_blocks"] == 4 for r in results)
    n = next(r for r in results if r["center_dec_deg"] > 50)
    assert n["block_ids"] == [north.block_id(i) for i in range(4)]
    assert all(Path(n["paths"][kind]).is_file() for kind in ("image", "noise", "weight", "png"))
    measured = forced_peak(n["paths"]["image"], ra_src, dec_src)[0]  # beam fit at the known position
    assert abs(measured / flux - 1) < 0.02, measured

    assert main(["mosaic", "--night", "2025-10-06"]) == 1
    assert "no imaged blocks recorded for 2025-10-06" in capsys.readouterr().err
