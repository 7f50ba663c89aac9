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


def test_night_mosaics_made_when_a_run_ends(tmp_path):
    """The dispatcher sends a finished run's night mosaics to an imaging node, once; a real worker makes them.

    Real redis-server and worker processes (LocalCluster). A recorded run of
    four done blocks (the synthetic dec 54.6 strip): the dispatcher's
    finishing pass records the run's ``night_mosaics`` product as queued and
    sends the task; the worker writes the mosaic (image, noise, weight, PNG),
    records the product as done with the mosaic id and rewrites the night's
    weblog with a Mosaics section. A second pass sends nothing. A run whose
    blocks all failed, and the no-op stage set, ask for no mosaics.
    """
    import time
    from datetime import timedelta

    from contimg import products, strips
    from contimg.cluster import LocalCluster
    from contimg.pipeline import Dispatcher
    from contimg.submission import new_run_id

    cfg = make_config(tmp_path, tmp_path / "data", dispatch__node_check_s=0)
    url = cfg.database_url
    spec = StripSpec(dec_deg=54.6, n_blocks=4, npix=96)
    ids = []
    for i, (img, pb) in enumerate(write_strip(spec, tmp_path / "products" / "blocks", [], [], [], seed=3)):
        bid = spec.block_id(i)
        ids.append(bid)
        db.upsert_block(url, bid, state="done", data_dir=str(tmp_path))
        db.record_product(url, bid, "image_fits", img)
        db.record_product(url, bid, "pb_fits", pb)
    run_id = new_run_id("night")
    db.create_run(url, run_id, kind="night", selection={}, submitted_by="test", config_toml="", remap={},
                  block_ids=ids)
    failed_run = new_run_id("night")
    db.upsert_block(url, "2025-10-05T09:00:00", state="failed", data_dir=str(tmp_path), reason="test")
    db.create_run(url, failed_run, kind="night", selection={}, submitted_by="test", config_toml="", remap={},
                  block_ids=["2025-10-05T09:00:00"])
    noop = make_config(tmp_path, tmp_path / "data", stage_set="noop")
    assert strips.runs_wanting_mosaics(noop) == []
    # a run submitted more than RECENT_DAYS ago is left to `contimg mosaic --night`
    later = db.utcnow() + timedelta(days=strips.RECENT_DAYS, hours=1)
    assert strips.runs_wanting_mosaics(cfg, now=later) == []
    assert [r["run_id"] for r in strips.runs_wanting_mosaics(cfg)] == [run_id]

    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        disp = Dispatcher(cl.config)
        events = disp.notify(force=True)
        assert [e for e in events if "night mosaics" in e] == [
            f"night mosaics of run {run_id} (2025-10-05) sent to node1"], events
        assert strips.mosaics_pending(cl.config, [run_id, failed_run]) == [run_id]
        assert not [e for e in disp.notify(force=True) if "night mosaics" in e]  # once per run
        t0 = time.monotonic()
        while strips.mosaics_pending(cl.config, [run_id]) and time.monotonic() - t0 < 120:
            time.sleep(0.5)
    (p,) = [p for p in db.run_products(url, run_id) if p["kind"] == strips.RUN_PRODUCT]
    assert p["details"]["state"] == "done", p["details"]
    (mosaic,) = p["details"]["nights"]["2025-10-05"]
    made = products.mosaic_products(cfg.paths.products_root, mosaic)
    assert mosaic.startswith("dec+54.60_") and made.directory.is_dir()
    assert {f.suffix for f in made.directory.iterdir()} >= {".fits", ".png"}
    night_page = products.night_weblog(cfg.paths.products_root, "2025-10-05").read_text()
    assert "Mosaics" in night_page and mosaic in night_page
    assert not [p for p in db.run_products(url, failed_run) if p["kind"] == strips.RUN_PRODUCT]
    # `contimg runs ID` shows it, and its --json has it
    import subprocess
    import sys

    env = {"CONTIMG_PATHS__PRODUCTS_ROOT": str(cfg.paths.products_root),
           "CONTIMG_PATHS__DATA_ROOT": str(cfg.paths.data_root), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "contimg.cli", "runs", run_id], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert f"night_mosaics: {tmp_path / 'products' / 'mosaics'} [done] 2025-10-05: {mosaic}" in out, out
    out = subprocess.run([sys.executable, "-m", "contimg.cli", "runs", run_id, "--json"], capture_output=True,
                         text=True, env=env, check=True).stdout
    (shown,) = [p for p in json.loads(out)[0]["products"] if p["kind"] == strips.RUN_PRODUCT]
    assert shown["details"]["nights"] == {"2025-10-05": [mosaic]}


def test_night_mosaics_not_sent_are_asked_again(tmp_path, caplog):
    """A broker that cannot be reached: the send fails fast, the mark is taken back, the error logged."""
    import logging

    from contimg import strips
    from contimg.pipeline import Dispatcher
    from contimg.submission import new_run_id

    cfg = make_config(tmp_path, tmp_path / "data", broker__url="redis://127.0.0.1:1/0", dispatch__node_check_s=0)
    url = cfg.database_url
    db.upsert_block(url, "2025-10-05T03:00:00", state="done", data_dir=str(tmp_path))
    run_id = new_run_id("night")
    db.create_run(url, run_id, kind="night", selection={}, submitted_by="test", config_toml="", remap={},
                  block_ids=["2025-10-05T03:00:00"])
    with caplog.at_level(logging.ERROR, logger="contimg.pipeline"):
        events = Dispatcher(cfg).notify(force=True)
    assert not [e for e in events if "night mosaics" in e]
    assert any("night mosaic pass failed" in r.getMessage() for r in caplog.records)
    assert not [p for p in db.run_products(url, run_id) if p["kind"] == strips.RUN_PRODUCT]
    assert [r["run_id"] for r in strips.runs_wanting_mosaics(cfg)] == [run_id]  # asked again next pass
