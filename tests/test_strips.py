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


def test_night_mosaics_made_when_the_night_ends(tmp_path):
    """The dispatcher sends a finished night's mosaics to an imaging node, once; a real worker makes them.

    Real redis-server and worker processes (LocalCluster). Night 2025-10-05:
    four done blocks of the synthetic dec 54.6 strip in one recorded run, and
    a second run whose block is still running. Checked: no request while a
    block of the night is open (the watcher's many runs of one night give one
    mosaic, after the last block), nor before the date has ended, nor for a
    night whose runs are older than RECENT_DAYS, nor for a night whose blocks
    all failed, nor with the no-op stage set. Once the night is finished the
    dispatcher's pass claims it and sends the task; the worker writes the
    mosaic (image, noise, weight, PNG), records it as done with its id and
    rewrites the night's weblog with a Mosaics section. A second pass sends
    nothing.
    """
    import subprocess
    import sys
    import time
    from datetime import datetime, timedelta

    from contimg import products, strips
    from contimg.cluster import LocalCluster
    from contimg.pipeline import Dispatcher
    from contimg.submission import new_run_id

    cfg = make_config(tmp_path, tmp_path / "data", dispatch__node_check_s=0)
    url = cfg.database_url

    def recorded_run(block_states: dict[str, str]) -> str:
        run_id = new_run_id("night")
        for bid, state in block_states.items():
            db.upsert_block(url, bid, state=state, data_dir=str(tmp_path), run_id=run_id)
        db.create_run(url, run_id, kind="night", selection={}, submitted_by="test", config_toml="", remap={},
                      block_ids=list(block_states))
        return run_id

    spec = StripSpec(dec_deg=54.6, n_blocks=4, npix=96)
    ids = [spec.block_id(i) for i in range(4)]
    run_id = recorded_run({bid: "done" for bid in ids})
    for bid, (img, pb) in zip(ids, write_strip(spec, tmp_path / "products" / "blocks", [], [], [], seed=3)):
        db.record_product(url, bid, "image_fits", img)
        db.record_product(url, bid, "pb_fits", pb)
    recorded_run({"2025-10-05T11:00:00": "running"})  # a later block of the same night, another run
    recorded_run({"2025-10-06T03:00:00": "failed"})  # a night with nothing imaged

    assert strips.nights_wanting_mosaics(cfg) == []  # a block of the night is still open
    db.upsert_block(url, "2025-10-05T11:00:00", state="failed", reason="test")
    assert strips.nights_wanting_mosaics(cfg) == ["2025-10-05"]
    assert strips.nights_wanting_mosaics(cfg, now=datetime(2025, 10, 5, 23, 0)) == []  # the night goes on
    assert strips.nights_wanting_mosaics(cfg, now=db.utcnow() + timedelta(days=strips.RECENT_DAYS, hours=1)) == []
    assert strips.nights_wanting_mosaics(make_config(tmp_path, tmp_path / "data", stage_set="noop")) == []

    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        disp = Dispatcher(cl.config)
        events = disp.notify(force=True)
        sent = [e for e in events if e.startswith("mosaics of night")]
        assert sent == ["mosaics of night 2025-10-05 sent to node1"], events
        assert strips.mosaics_pending(cl.config, ["2025-10-05", "2025-10-06"]) == ["2025-10-05"]
        assert not [e for e in disp.notify(force=True) if e.startswith("mosaics of night")]  # once per night
        t0 = time.monotonic()
        while strips.mosaics_pending(cl.config, ["2025-10-05"]) and time.monotonic() - t0 < 120:
            time.sleep(0.5)
    rec = db.night_mosaics(url, ["2025-10-05", "2025-10-06"])
    assert list(rec) == ["2025-10-05"] and rec["2025-10-05"]["state"] == "done", rec
    (mosaic,) = rec["2025-10-05"]["details"]["mosaics"]
    made = products.mosaic_products(cfg.paths.products_root, mosaic)
    assert mosaic.startswith("dec+54.60_") and made.directory.is_dir()
    assert {f.suffix for f in made.directory.iterdir()} >= {".fits", ".png"}
    night_page = products.night_weblog(cfg.paths.products_root, "2025-10-05").read_text()
    assert "Mosaics" in night_page and mosaic in night_page
    # `contimg runs ID` shows the run-level products (the weblog the same pass wrote), and its --json too
    env = {"CONTIMG_PATHS__PRODUCTS_ROOT": str(cfg.paths.products_root),
           "CONTIMG_PATHS__DATA_ROOT": str(cfg.paths.data_root), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "contimg.cli", "runs", run_id], capture_output=True, text=True,
                         env=env, check=True).stdout
    page = products.run_weblog(cfg.paths.products_root, run_id)
    assert f"    weblog: {page}" in out, out
    out = subprocess.run([sys.executable, "-m", "contimg.cli", "runs", run_id, "--json"], capture_output=True,
                         text=True, env=env, check=True).stdout
    assert [p["kind"] for p in json.loads(out)[0]["products"]] == ["weblog"]


def test_night_mosaics_not_sent_are_asked_again(tmp_path, caplog, monkeypatch):
    """A broker that cannot be reached: nothing is claimed, a warning says so, the next pass asks again.

    And a send that fails after the claim (the broker went away in between)
    takes its claim back.
    """
    import logging

    from contimg import strips
    from contimg.pipeline import Dispatcher
    from contimg.submission import new_run_id

    cfg = make_config(tmp_path, tmp_path / "data", broker__url="redis://127.0.0.1:1/0", dispatch__node_check_s=0)
    url = cfg.database_url
    run_id = new_run_id("night")
    db.upsert_block(url, "2025-10-05T03:00:00", state="done", data_dir=str(tmp_path), run_id=run_id)
    db.create_run(url, run_id, kind="night", selection={}, submitted_by="test", config_toml="", remap={},
                  block_ids=["2025-10-05T03:00:00"])
    disp = Dispatcher(cfg)
    with caplog.at_level(logging.WARNING, logger="contimg.pipeline"):
        events = disp.notify(force=True)
    assert not [e for e in events if e.startswith("mosaics of night")]
    assert any("the mosaics of night 2025-10-05 wait for the next pass" in r.getMessage() for r in caplog.records)
    assert db.night_mosaics(url, ["2025-10-05"]) == {}
    assert strips.nights_wanting_mosaics(cfg) == ["2025-10-05"]

    monkeypatch.setattr(disp.queue.r, "ping", lambda: True)  # the broker seemed up, then the send fails
    with caplog.at_level(logging.ERROR, logger="contimg.pipeline"):
        disp.notify(force=True)
    assert any("night mosaic pass failed" in r.getMessage() for r in caplog.records)
    assert db.night_mosaics(url, ["2025-10-05"]) == {}  # the claim was taken back
    assert strips.nights_wanting_mosaics(cfg) == ["2025-10-05"]  # asked again at the next pass
