"""Weblogs of runs and nights: self-contained HTML that opens from disk and shows its images.

What these check
----------------
- a run's weblog holds its blocks (state, reason), an image thumbnail per imaged block,
  flag fractions per antenna and subband, times per stage and the effective
  configuration, every image embedded (no file beside the page is needed);
- headless Chromium (Debian's package) opens the page from disk and every image in it
  decodes (the page counts them into data attributes; we read the DOM after load);
- the night's weblog lists the night's runs and links to their pages;
- an unknown run id gives a one-line error naming it and a non-zero exit.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from contimg import database as db
from contimg import weblog
from contimg.cli import main

from conftest import make_config

DATE = "2025-10-05"


def write_image(path, rng, peak=0.5):
    from astropy.io import fits

    n = 96
    data = rng.normal(0, 2e-3, (1, 1, n, n)).astype(np.float32)
    yy, xx = np.indices((n, n))
    data[0, 0] += peak * np.exp(-((yy - 40) ** 2 + (xx - 55) ** 2) / (2 * 2.0**2))
    h = fits.Header()
    for k, v in dict(CTYPE1="RA---SIN", CTYPE2="DEC--SIN", CTYPE3="FREQ", CTYPE4="STOKES", CRPIX1=n / 2,
                     CRPIX2=n / 2, CRPIX3=1, CRPIX4=1, CRVAL1=150.0, CRVAL2=54.6, CRVAL3=1.4e9, CRVAL4=1,
                     CDELT1=-10 / 3600, CDELT2=10 / 3600, CDELT3=187.5e6, CDELT4=1, CUNIT1="deg", CUNIT2="deg",
                     BMAJ=40 / 3600, BMIN=30 / 3600, BPA=10.0, BUNIT="Jy/beam").items():
        h[k] = v
    fits.writeto(path, data, h, overwrite=True)


@pytest.fixture
def recorded_run(tmp_path):
    cfg = make_config(tmp_path, tmp_path / "data")
    url = cfg.database_url
    rng = np.random.default_rng(3)
    ids = [f"{DATE}T03:00:00", f"{DATE}T03:05:09"]
    run_id = "20251005T031200-night-1a2b3c"
    db.create_run(url, run_id, kind="night", selection={"date": DATE}, submitted_by="ops",
                  config_toml="[imaging]\nniter = 2000\n", remap={}, block_ids=ids)
    ants = [f"DSA-{i:03d}" for i in range(1, 21)]
    for k, bid in enumerate(ids):
        db.upsert_block(url, bid, state="done" if k == 0 else "failed", data_dir=str(tmp_path),
                        reason=None if k == 0 else "only 10 of 16 subbands converted, minimum is 12",
                        n_subbands_ok=16 if k == 0 else 10, run_id=run_id,
                        timings={"convert_s": 20.0, "flag_s": 8.0, "calibrate_s": 3.0, "concat_s": 2.0,
                                 "image_s": 15.0, "block_wall_s": 30.0})
        for sb in range(16):
            frac = {a: float(rng.uniform(0, 0.2)) for a in ants}
            db.upsert_subband(url, bid, sb, state="ok", details={"flags": {"per_antenna_after": frac}})
    (tmp_path / "products").mkdir(exist_ok=True)
    img = tmp_path / "products" / "b0.pbcor.fits"
    write_image(img, rng)
    db.record_product(url, ids[0], "pbcor_fits", img, rms_jy=2e-3, peak_jy=0.5, beam_major_arcsec=40.0,
                      beam_minor_arcsec=30.0)
    return cfg, run_id, ids


def test_run_weblog_is_self_contained(recorded_run):
    cfg, run_id, ids = recorded_run
    page = weblog.render_run(cfg, run_id)
    text = page.read_text()
    assert page.parent.name == run_id
    assert ids[0] in text and ids[1] in text and "only 10 of 16 subbands" in text
    assert "Flag fractions per antenna and subband" in text and "Time per stage" in text
    assert "niter = 2000" in text and "no verdict yet" in text
    n_img = len(re.findall(r"<img ", text))
    assert n_img == 1 + 2 + 1  # one image thumbnail, two flag maps, the timings
    assert len(re.findall(r'src="data:image/png;base64,', text)) == n_img  # nothing outside the page
    moved = page.parent.parent / "copied.html"
    shutil.copy(page, moved)  # still complete anywhere


def test_run_weblog_opens_in_chromium(recorded_run):
    from contimg.browser import dump_dom, find_chromium

    if find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the weblog cannot be opened")
    cfg, run_id, _ = recorded_run
    page = weblog.render_run(cfg, run_id)
    dom = dump_dom(page.as_uri())
    total = int(re.search(r'data-images="(\d+)"', dom).group(1))
    shown = int(re.search(r'data-images-shown="(\d+)"', dom).group(1))
    assert total == 4 and shown == total


def test_night_weblog_links_runs(recorded_run):
    cfg, run_id, _ = recorded_run
    page = weblog.render_night(cfg, DATE)
    text = page.read_text()
    assert f"../../runs/{run_id}/index.html" in text
    assert (page.parent / f"../../runs/{run_id}/index.html").resolve().parent.name == run_id


def test_unknown_run_id(recorded_run, capsys, monkeypatch):
    cfg, _, _ = recorded_run
    for k, v in {"CONTIMG_PATHS__PRODUCTS_ROOT": str(cfg.paths.products_root),
                 "CONTIMG_PATHS__DATA_ROOT": str(cfg.paths.data_root)}.items():
        monkeypatch.setenv(k, v)
    assert main(["weblog", "20990101T000000-night-ffffff"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown run id 20990101T000000-night-ffffff" in err
    assert main(["weblog", "not-a-run"]) == 1
    assert "is not a run id" in capsys.readouterr().err


def test_finished_runs_get_their_weblog_once(recorded_run):
    cfg, run_id, _ = recorded_run
    first = weblog.render_finished_runs(cfg)
    assert [p.parent.name for p in first][:1] == [run_id] and first[1].name == "index.html"
    assert weblog.render_finished_runs(cfg) == []  # registered: not written again
    assert [p["kind"] for p in db.run_products(cfg.database_url, run_id)] == ["weblog"]
