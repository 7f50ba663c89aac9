"""A simulated night end to end: real redis-server, real workers in separate processes, real CASA.

What these check
----------------
- every block of a clean tiny night gets a FITS image, the database says done, and the
  brightest pixel lies within one synthesized beam of the brightest apparent source
  (true position from truth.json, beam-weighted flux at the block's mid-time);
- a truncated and a missing subband do not stop their block, and the database names
  them with the reason; a block below pipeline.min_subbands fails with its reason and
  the other blocks are unaffected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contimg import database as db
from contimg.sky import Fault
from contimg.simulate import Scenario, simulate_night

from conftest import make_config

pytestmark = pytest.mark.slow


def brightest_apparent_source(truth: dict, block_index: int, mid_jd: float, max_radius_deg: float = 180.0):
    """(ra_deg, dec_deg, apparent Jy) of the source the beam makes brightest in a block,
    among sources within ``max_radius_deg`` of the block's phase centre."""
    from contimg.phasing import meridian_icrs
    from contimg.telescope import airy_power_beam

    ra0, dec0 = meridian_icrs(mid_jd, np.radians(truth["pointing_dec_deg"]))
    best = None
    for s in truth["sources"]:
        ra, dec = np.radians(s["ra_deg"]), np.radians(s["dec_deg"])
        cos_t = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(ra - ra0)
        theta = np.arccos(np.clip(cos_t, -1, 1))
        if np.degrees(theta) > max_radius_deg:
            continue
        app = s["flux_jy_per_block"][block_index] * float(airy_power_beam(np.array([theta]), 1.4e9)[0])
        if best is None or app > best[2]:
            best = (s["ra_deg"], s["dec_deg"], app)
    return best


def image_peak(fits_path: str, max_radius_deg: float | None = None):
    """(ra_deg, dec_deg, value, bmaj_deg) of the brightest pixel of a FITS image,
    optionally within ``max_radius_deg`` of the image centre."""
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(fits_path) as hdul:
        data = np.nan_to_num(hdul[0].data.squeeze())
        w = WCS(hdul[0].header).celestial
        bmaj = hdul[0].header["BMAJ"]
        if max_radius_deg is not None:
            yy, xx = np.indices(data.shape)
            cy, cx = (np.array(data.shape) - 1) / 2
            r_deg = np.hypot(yy - cy, xx - cx) * abs(hdul[0].header["CDELT2"])
            data = np.where(r_deg <= max_radius_deg, data, -np.inf)
    iy, ix = np.unravel_index(np.argmax(data), data.shape)
    sky = w.pixel_to_world(ix, iy)
    return sky.ra.deg, sky.dec.deg, float(data[iy, ix]), bmaj


def separation_deg(ra1, dec1, ra2, dec2):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    return SkyCoord(ra1 * u.deg, dec1 * u.deg).separation(SkyCoord(ra2 * u.deg, dec2 * u.deg)).deg


def test_tiny_night_end_to_end(tmp_path):
    data = tmp_path / "data"
    # a controlled sky: gains off, no catalogued calibrator (the calibrated night is its own test)
    scen = Scenario(preset="tiny", n_blocks=2, gains=False, n_random_sources=40, seed=7, catalogue_calibrators=False)
    simulate_night(scen, data)
    truth = json.loads((data / "truth.json").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
    env.update({
        "CONTIMG_PATHS__DATA_ROOT": str(data),
        "CONTIMG_PATHS__PRODUCTS_ROOT": str(tmp_path / "products"),
        "CONTIMG_PATHS__SCRATCH_ROOT": str(tmp_path / "scratch"),
        "CONTIMG_PATHS__ARCHIVE_ROOT": str(tmp_path / "archive"),
    })
    r = subprocess.run([sys.executable, "-m", "contimg.cli", "run", str(data), "--local", "--json",
                        "--timeout", "900"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["n_blocks"] == 2 and summary["n_done"] == 2, summary
    st = subprocess.run([sys.executable, "-m", "contimg.cli", "status", "--json"], capture_output=True, text=True,
                        env=env, cwd=tmp_path, check=True)
    records = json.loads(st.stdout)
    assert [b["state"] for b in records] == ["done", "done"]
    for i, rec in enumerate(records):
        assert rec["n_subbands_ok"] == 16
        assert all(sb["state"] == "ok" for sb in rec["subbands"])
        img = rec["products"]["image_fits"]
        assert Path(img).is_file() and Path(rec["products"]["pb_fits"]).is_file()
        ra, dec, _, bmaj = image_peak(img)
        sra, sdec, app = brightest_apparent_source(truth, i, rec_mid_jd(tmp_path, rec["block_id"]))
        sep = separation_deg(ra, dec, sra, sdec)
        assert sep < bmaj, f"block {rec['block_id']}: peak {sep * 3600:.1f}\" from the brightest source " \
                           f"({app:.2f} Jy apparent), beam {bmaj * 3600:.1f}\""
    # the night's mosaic was made when the run ended, before the workers stopped, and recorded
    mosaics = sorted((tmp_path / "products" / "mosaics").glob("*/*/*.image.fits"))
    assert len(mosaics) == 1 and f"_{records[0]['block_id']}_{records[1]['block_id']}." in mosaics[0].name, mosaics
    url = f"sqlite:///{tmp_path / 'products' / 'contimg.sqlite'}"
    night = records[0]["block_id"][:10]
    assert db.night_mosaics(url, [night])[night]["details"]["mosaics"] == [mosaics[0].parent.name]
    # scratch is cleaned after success
    assert not any((tmp_path / "scratch").rglob("*.ms"))
    # the private redis-server and the workers are gone
    assert not _our_processes_running(tmp_path)


def rec_mid_jd(tmp_path: Path, block_id: str) -> float:
    url = f"sqlite:///{tmp_path / 'products' / 'contimg.sqlite'}"
    with db.session(url) as s:
        return s.get(db.BlockRow, block_id).mid_jd


def _our_processes_running(tmp_path: Path) -> bool:
    """Any live process whose command line names the test's directory (redis-server, workers)."""
    me = os.getpid()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            pid = int(cmdline.parent.name)
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().split(") ")[-1][:1]
        except (OSError, ValueError):
            continue
        if pid != me and state != "Z" and str(tmp_path) in args:
            return True
    return False


def test_truncated_and_missing_subbands(tmp_path):
    from contimg.cluster import LocalCluster
    from contimg import pipeline
    from contimg.blocks import discover

    data = tmp_path / "data"
    faults = (Fault(block=0, subband=3, kind="truncate"), Fault(block=0, subband=11, kind="drop"))
    faults += tuple(Fault(block=1, subband=sb, kind="drop") for sb in (0, 2, 4, 6, 8, 10))
    scen = Scenario(preset="tiny", n_blocks=3, gains=False, n_random_sources=20, seed=3, faults=faults)
    simulate_night(scen, data)
    cfg = make_config(tmp_path, data, min_subbands=12)
    disc = discover(data)
    assert [len(b.files) for b in disc.blocks] == [15, 10, 16]
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        subs = pipeline.submit(cl.config, disc.blocks, data)
        assert [s.outcome for s in subs] == ["queued"] * 3
        recs = pipeline.wait(cl.config, [s.block_id for s in subs], timeout_s=900)
        assert cl.wait_idle()
    b0, b1, b2 = recs
    assert b0["state"] == "done" and b0["n_subbands_ok"] == 14
    sbs = {sb["subband"]: sb for sb in b0["subbands"]}
    assert sbs[3]["state"] == "failed" and "truncated" in sbs[3]["reason"]
    assert sbs[11]["state"] == "failed" and "missing" in sbs[11]["reason"]
    assert "sb03" in b0["reason"] and "sb11" in b0["reason"]
    assert Path(b0["products"]["image_fits"]).is_file()
    assert b1["state"] == "failed"
    assert "only 10 of 16 subbands converted, minimum is 12" in b1["reason"]
    assert "image_fits" not in b1["products"]
    assert b2["state"] == "done" and b2["n_subbands_ok"] == 16
    # scratch is cleaned after success and after failure (keep_scratch_on_failure is off)
    assert not any((tmp_path / "scratch").rglob("*.ms"))


def test_ctrl_c_stops_every_process(tmp_path):
    """SIGINT (Ctrl-C) in the middle of `contimg run --local`: exit 130 and nothing left running."""
    import signal
    import time

    data = tmp_path / "data"
    simulate_night(Scenario(preset="tiny", n_blocks=3, gains=False, n_random_sources=10, seed=5), data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
    env.update({"CONTIMG_PATHS__PRODUCTS_ROOT": str(tmp_path / "products"),
                "CONTIMG_PATHS__SCRATCH_ROOT": str(tmp_path / "scratch")})
    proc = subprocess.Popen([sys.executable, "-m", "contimg.cli", "run", str(data), "--local"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait until blocks are being processed
        if " running " in line or time.monotonic() > deadline:
            break
    assert _our_processes_running(tmp_path), "the private cluster should be up while blocks run"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    time.sleep(0.5)
    assert not _our_processes_running(tmp_path), "a worker or redis-server outlived Ctrl-C"


def test_run_against_a_configured_broker(tmp_path, redis_server):
    """A configured cluster: `contimg worker` for node1, the documented plain `celery` line for node2."""
    import time

    from contimg import config

    data = tmp_path / "data"
    simulate_night(Scenario(preset="tiny", n_blocks=1, gains=False, n_random_sources=10, seed=11), data)
    cfg = make_config(tmp_path, data)
    cfg = cfg.with_broker(redis_server.url)
    cfg_path = config.write(cfg, tmp_path / "contimg.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
    env["CONTIMG_CONFIG"] = str(cfg_path)
    celery_exe = str(Path(sys.executable).parent / "celery")
    workers = [
        subprocess.Popen([sys.executable, "-m", "contimg.cli", "worker", "--node", "node1"], env=env, cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
        subprocess.Popen([celery_exe, "-A", "contimg.tasks.app", "worker", "-Q", "node2", "-n", "node2@%h",
                          "--concurrency", "1", "--prefetch-multiplier", "1"], env=env, cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
    ]
    try:
        r = subprocess.run([sys.executable, "-m", "contimg.cli", "run", str(data), "--json", "--timeout", "600"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=700)
        assert r.returncode == 0, r.stderr[-2000:]
        summary = json.loads(r.stdout)
        assert summary["n_done"] == 1
        rec = json.loads(subprocess.run([sys.executable, "-m", "contimg.cli", "status", "--json"], env=env,
                                        cwd=tmp_path, capture_output=True, text=True, check=True).stdout)[0]
        assert {sb["node"] for sb in rec["subbands"] if sb["subband"] < 8} == {"node1"}
        assert {sb["node"] for sb in rec["subbands"] if sb["subband"] >= 8} == {"node2"}
        assert Path(rec["products"]["image_fits"]).is_file()
        # a directory outside the configured data roots is refused before anything is sent
        other = tmp_path / "elsewhere"
        simulate_night(Scenario(preset="tiny", n_blocks=1, seed=1, n_random_sources=0), other)
        r = subprocess.run([sys.executable, "-m", "contimg.cli", "run", str(other)], capture_output=True, text=True,
                           env=env, cwd=tmp_path)
        assert r.returncode == 1 and "paths.data_root" in r.stderr
    finally:
        for w in workers:
            os.killpg(w.pid, 15)
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, 9)
        time.sleep(0.2)


def test_calibrated_night_with_gains(tmp_path):
    """Gains on, SIMCAL54 in transit: calibrator blocks are dispatched first and solve, the other
    blocks apply the nearest caltables, and every image finds its brightest source within a beam."""
    from contimg.cluster import LocalCluster
    from contimg import pipeline
    from contimg.blocks import discover

    data = tmp_path / "data"
    scen = Scenario(preset="tiny", n_blocks=5, gains=True, n_random_sources=30, seed=13)
    simulate_night(scen, data)
    truth = json.loads((data / "truth.json").read_text())
    cfg = make_config(tmp_path, data)
    blocks = discover(data).blocks
    cal_blocks = [b.block_id for b in blocks if pipeline.calibrator_of(cfg, b) == "SIMCAL54"]
    assert blocks[3].block_id in cal_blocks and len(cal_blocks) <= 2 and blocks[0].block_id not in cal_blocks
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        subs = pipeline.submit(cl.config, blocks, data)
        assert [s.block_id for s in subs][: len(cal_blocks)] == sorted(cal_blocks)  # calibrators first
        recs = pipeline.wait(cl.config, [b.block_id for b in blocks], timeout_s=1200)
        assert cl.wait_idle()
    url = cfg.database_url
    with db.session(url) as s:
        assert s.query(db.CaltableRow).count() == 16 * len(cal_blocks)
    checked = 0
    for i, rec in enumerate(recs):
        assert rec["state"] == "done", rec["reason"]
        assert "UNCALIBRATED" not in (rec["reason"] or "")
        with db.session(url) as s:
            kinds = {s.get(db.SubbandRow, (rec["block_id"], sb)).details["calibration"]["calibration"]
                     for sb in range(16)}
        assert kinds == ({"solved"} if rec["block_id"] in cal_blocks else {"applied"})
        # The brightest source must be well inside the image (beam >= 0.3): a source beyond the
        # imaged field is never cleaned and its sidelobes (0.46 for the 12-antenna preset) can
        # outshine what is inside.
        sra, sdec, app = brightest_apparent_source(truth, i, rec_mid_jd(tmp_path, rec["block_id"]))
        flux = next(s["flux_jy_per_block"][i] for s in truth["sources"] if s["ra_deg"] == sra)
        if app / flux < 0.3:
            continue
        ra, dec, peak, bmaj = image_peak(rec["products"]["image_fits"])
        assert separation_deg(ra, dec, sra, sdec) < bmaj, f"block {i}: peak not at the brightest source"
        assert peak > 0.5 * app, f"block {i}: peak {peak:.2f} Jy/beam, source {app:.2f} Jy: calibration lost coherence"
        checked += 1
    assert checked >= 3

    # The night's weblog: every block's image, the bandpass solved on SIMCAL54, all shown by Chromium.
    from contimg import weblog
    from contimg.browser import dump_dom, find_chromium

    page = weblog.render_night(cfg, blocks[0].block_id[:10])
    text = page.read_text()
    assert text.count("<img ") >= len(blocks) + 2 and f'alt="bandpass {cal_blocks[0]}' in text and "solved on SIMCAL54" in text
    if find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the weblog was not opened")
    dom = dump_dom(page.as_uri())
    import re

    total = int(re.search(r'data-images="(\d+)"', dom).group(1))
    assert int(re.search(r'data-images-shown="(\d+)"', dom).group(1)) == total >= len(blocks) + 2
