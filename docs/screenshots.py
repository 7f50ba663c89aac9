"""Screenshots for the docs: Flower's dashboard during a (no-op) night, and a run's weblog.

    .venv/bin/python docs/screenshots.py            # Flower
    .venv/bin/python docs/screenshots.py --weblog   # the weblog of a tiny calibrated night (CASA, minutes)

Starts a private cluster (real redis-server, two workers), submits a night of
12 blocks with the no-op stage set (1 s per subband stage), starts Flower with
``contimg flower`` and basic auth, and saves ``docs/img/flower-workers.png``
and ``docs/img/flower-tasks.png`` with headless Chromium while the night runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contimg import config as _config
from contimg.browser import screenshot
from contimg.cluster import LocalCluster, free_port
from contimg.noop import write_night
from contimg.pipeline import Dispatcher
from contimg.submission import select_night, submit_selection

DATE = "2025-10-05"
HERE = Path(__file__).resolve().parent


def weblog_screenshot() -> None:
    """A tiny simulated night of 5 blocks with gains and SIMCAL54 in transit, processed for real."""
    from contimg import weblog
    from contimg.pipeline import wait
    from contimg.simulate import Scenario, simulate_night

    base = Path(tempfile.mkdtemp(prefix="contimg-screens-"))
    simulate_night(Scenario(preset="tiny", n_blocks=5, gains=True, n_random_sources=30, seed=13), base / "data")
    env = {f"CONTIMG_PATHS__{k.upper()}_ROOT": str(base / k) for k in ("products", "archive", "scratch")}
    env.update(CONTIMG_PATHS__DATA_ROOT=str(base / "data"))
    cfg = _config.load(path=None, env=env)
    with LocalCluster(cfg, base / "cluster") as cl:
        date = sorted(p.name[:10] for p in (base / "data").glob("*_sb00.hdf5"))[0]
        res = submit_selection(cl.config, select_night(cl.config, date))
        wait(cl.config, [s.block_id for s in res.submitted], timeout_s=3600)
    page = weblog.render_run(cfg, res.run_id)
    out = screenshot(page.as_uri(), HERE / "img" / "weblog-run.png", width=1300, height=3400, wait_ms=3000)
    print(f"wrote {out} from {page}")


def main() -> None:
    if "--weblog" in sys.argv[1:]:
        weblog_screenshot()
        return
    base = Path(tempfile.mkdtemp(prefix="contimg-screens-"))
    write_night(base / "data" / DATE, DATE, 12)
    env = {f"CONTIMG_PATHS__{k.upper()}_ROOT": str(base / k) for k in ("products", "archive", "scratch")}
    env.update(CONTIMG_PATHS__DATA_ROOT=str(base / "data"), CONTIMG_PIPELINE__STAGE_SET="noop",
               CONTIMG_PIPELINE__NOOP_SECONDS="1.0", CONTIMG_DISPATCH__NODE_CHECK_S="0")
    cfg = _config.load(path=None, env=env)
    port, auth = free_port(), "ops:docs-screenshot"
    with LocalCluster(cfg, base / "cluster") as cl:
        penv = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
        penv.update(CONTIMG_CONFIG=str(cl.config_path), CONTIMG_FLOWER__BASIC_AUTH=auth)
        flower = subprocess.Popen([sys.executable, "-m", "contimg.cli", "flower", "--port", str(port)], env=penv,
                                  start_new_session=True)
        try:
            submit_selection(cl.config, select_night(cl.config, DATE))
            disp = Dispatcher(cl.config)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 25:  # let a few blocks run and finish
                disp.step()
                time.sleep(0.5)
            url = f"http://{auth}@127.0.0.1:{port}"
            for page, name in (("/workers", "flower-workers.png"), ("/tasks", "flower-tasks.png")):
                out = screenshot(url + page, HERE / "img" / name, wait_ms=6000)
                print(f"wrote {out}")
                disp.step()
        finally:
            flower.terminate()
            flower.wait(20)


if __name__ == "__main__":
    main()
