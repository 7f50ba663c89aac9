"""The deployment files in deploy/ are consistent with the code and with the installed Redis.

What these check
----------------
- deploy/redis.conf starts the installed redis-server, with the append-only file on,
  no eviction, and a password required (a client without it is refused);
- every contimg command in the systemd units and in docker-compose.yml is one the
  command line accepts; the compose file has Redis with that config, workers, the
  dispatcher and Flower with basic auth, and puts the broker password in the URL.
"""

from __future__ import annotations

import configparser
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from contimg.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_redis_conf_starts_persistent_and_password_protected(tmp_path):
    import redis

    from contimg.cluster import free_port, redis_server_binary

    port, password = free_port(), "t3st-pass"
    proc = subprocess.Popen([redis_server_binary(), str(DEPLOY / "redis.conf"), "--port", str(port),
                             "--bind", "127.0.0.1", "--dir", str(tmp_path), "--requirepass", password,
                             "--logfile", str(tmp_path / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, password=password)
        t0 = time.monotonic()
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                assert proc.poll() is None, (tmp_path / "redis.log").read_text()
                assert time.monotonic() - t0 < 15
                time.sleep(0.1)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port).ping()
    finally:
        proc.terminate()
        proc.wait(10)


def _parses(argv: list[str]) -> None:
    build_parser().parse_args(argv)  # argparse exits (SystemExit) on an unknown command or option


@pytest.mark.parametrize("unit", sorted(p.name for p in (DEPLOY / "systemd").glob("*.service")))
def test_systemd_units_run_real_commands(unit):
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.read(DEPLOY / "systemd" / unit)
    exec_start = shlex.split(cp["Service"]["ExecStart"].replace("%i", "node1"))
    assert Path(exec_start[0]).name == "contimg"
    _parses(exec_start[1:])
    assert "CONTIMG_CONFIG=" in cp["Service"]["Environment"]


def test_compose_file_matches_the_cli():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "worker-node1", "worker-node2", "dispatch", "flower"} <= set(services)
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in services["redis"]["volumes"]
    for name, svc in services.items():
        if name == "redis":
            continue
        _parses(svc["command"])
        env = svc["environment"]
        assert env["CONTIMG_BROKER__URL"].startswith("redis://:${REDIS_PASSWORD")
    assert "CONTIMG_FLOWER__BASIC_AUTH" in services["flower"]["environment"]
    assert (DEPLOY / "docker" / "Dockerfile").is_file()
