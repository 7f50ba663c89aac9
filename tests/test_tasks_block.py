"""The block callback (`contimg/tasks/block.py`) on a real local cluster with the WSClean backend.

What this checks
----------------
With `imaging.backend = "wsclean"` a tiny block is imaged from its subband MSs: no
concatenated block MS is written or registered, WSClean's log is registered instead (and as a run product, so ingest archives it),
and the FITS products say which imager made them. The tclean path (block MS
concatenated and registered as `concat_ms`) is what every other cluster test runs
(`tests/test_rerun.py` reads its `concat_ms`); a tclean copy here took 61 s.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import make_config

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("wsclean") is None,
                    reason="wsclean is not on PATH (apt-get install wsclean; `make setup` does it)")
def test_wsclean_block_has_no_concatenated_ms(tmp_path):
    backend = "wsclean"
    from astropy.io import fits

    from contimg.cluster import LocalCluster
    from contimg.pipeline import wait
    from contimg.products import block_products
    from contimg.simulate import Scenario, simulate_night
    from contimg.submission import select_night, submit_selection

    data = tmp_path / "data" / "2025-10-05"
    simulate_night(Scenario(preset="tiny", n_blocks=1, gains=False, n_random_sources=6, seed=8), data)
    cfg = make_config(tmp_path, tmp_path / "data", flagging__strategy="none", imaging__backend=backend)
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        c = cl.config
        sub = submit_selection(c, select_night(c, "2025-10-05"))
        (block_id,) = [s.block_id for s in sub.submitted]
        (rec,) = wait(c, [block_id], timeout_s=600)
    assert rec["state"] == "done", rec["reason"]
    prods = rec["products"]
    for kind in ("image_fits", "image_pbcor_fits", "pb_fits", "residual_fits"):
        assert Path(prods[kind]).is_file()
        assert fits.getheader(prods[kind])["IMAGER"] == backend
    paths = block_products(c.paths.products_root, block_id, sub.run_id)
    assert "concat_ms" not in prods and not paths.concat_ms.exists()
    assert prods["imaging_log"] == str(paths.imaging_log("wsclean")) and Path(prods["imaging_log"]).is_file()
    assert "concat_s" not in rec["timings"] and rec["timings"]["image_s"] > 0
    # the run's products, which ingest archives, hold WSClean's log beside the FITS
    from contimg import database as db

    run_kinds = {r["kind"]: r["path"] for r in db.run_products(c.database_url, sub.run_id) if r["block_id"] == block_id}
    assert run_kinds["imaging_log"] == prods["imaging_log"] and "image_fits" in run_kinds
