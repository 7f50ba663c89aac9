"""Flower against a real local cluster while a night runs.

What these check
----------------
- ``contimg flower`` builds its command without a shell and keeps the password out of
  the command line; it refuses a non-loopback address without basic auth;
- Flower started by ``contimg flower`` with basic auth refuses a request without the
  password (401) and, with it, lists both nodes' workers and the night's subband tasks
  through its API while the night runs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from contimg.errors import ConfigError
from contimg.monitoring import flower_command

from conftest import make_config

DATE = "2025-10-05"


def test_flower_command_keeps_the_password_off_the_command_line(tmp_path):
    cfg = make_config(tmp_path, tmp_path / "data", flower__basic_auth="ops:s3cret")
    cfg = cfg.with_broker("redis://:pw@127.0.0.1:6379/0")
    argv, env = flower_command(cfg, port=5601)
    assert argv[1:6] == ["-m", "celery", "-A", "contimg.tasks.app", "flower"]
    assert "--port=5601" in argv and "--address=127.0.0.1" in argv
    assert not any("s3cret" in a for a in argv) and env["FLOWER_BASIC_AUTH"] == "ops:s3cret"


def test_flower_refuses_open_address_without_password(tmp_path):
    cfg = make_config(tmp_path, tmp_path / "data").with_broker("redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="flower.address: 0.0.0.0"):
        flower_command(cfg, address="0.0.0.0")
    with pytest.raises(ConfigError, match="flower.basic_auth"):
        make_config(tmp_path, tmp_path / "data", flower__basic_auth="nopassword")


def _get(url: str, auth: str | None = None, timeout: float = 5.0):
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


@pytest.mark.slow
def test_flower_api_during_a_night(tmp_path):
    from contimg.cluster import LocalCluster, free_port
    from contimg.noop import write_night
    from contimg.pipeline import wait
    from contimg.submission import select_night, submit_selection

    ids = write_night(tmp_path / "data" / DATE, DATE, 6)
    cfg = make_config(tmp_path, tmp_path / "data", stage_set="noop", noop_seconds=0.5, dispatch__node_check_s=0)
    port, auth = free_port(), "ops:s3cret"
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
        env.update(CONTIMG_CONFIG=str(cl.config_path), CONTIMG_FLOWER__BASIC_AUTH=auth)
        log = open(tmp_path / "flower.log", "wb")
        flower = subprocess.Popen([sys.executable, "-m", "contimg.cli", "flower", "--port", str(port)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            t0 = time.monotonic()
            while True:  # Flower is up when it answers at all
                try:
                    _get(f"{base}/healthcheck", timeout=1.0)
                    break
                except (urllib.error.URLError, ConnectionError):
                    assert flower.poll() is None, (tmp_path / "flower.log").read_text()
                    assert time.monotonic() - t0 < 60, "Flower did not answer within 60 s"
                    time.sleep(0.3)
            with pytest.raises(urllib.error.HTTPError) as e:
                _get(f"{base}/api/workers", timeout=5.0)
            assert e.value.code == 401

            res = submit_selection(cl.config, select_night(cl.config, DATE))
            done = {}
            waiter = threading.Thread(target=lambda: done.update(recs=wait(cl.config, ids, timeout_s=300)))
            waiter.start()
            seen_tasks, workers = {}, {}
            t0 = time.monotonic()
            while waiter.is_alive() and time.monotonic() - t0 < 300:
                status, body = _get(f"{base}/api/workers?refresh=1", auth, timeout=10.0)
                assert status == 200
                workers = json.loads(body)
                status, body = _get(f"{base}/api/tasks?limit=500", auth, timeout=10.0)
                seen_tasks.update(json.loads(body))
                time.sleep(1.0)
            waiter.join()
        finally:
            flower.terminate()
            flower.wait(20)
            log.close()
    assert res.run_id and [r["state"] for r in done["recs"]] == ["done"] * len(ids)
    assert {name.split("@")[0] for name in workers} == {"node1", "node2"}
    names = {t["name"] for t in seen_tasks.values()}
    assert "contimg.process_subband" in names
    subband_tasks = [t for t in seen_tasks.values() if t["name"] == "contimg.process_subband"]
    assert {t["state"] for t in subband_tasks} & {"STARTED", "SUCCESS", "RECEIVED"}
    assert len(subband_tasks) >= 16, "Flower saw less than one block's subband tasks"
