"""Shared fixtures: a real private redis-server, real worker processes, simulated nights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
ATA_UVH5 = DATA / "ata.LoA.C0352.uvh5_60647_62965_9760406_3c286_0001.uvh5"
VLA_MS_TGZ = DATA / "day2_TDEM0003_10s_norx_1src_1spw.ms.tar.gz"


def require(path: Path) -> Path:
    """Fail (never pass silently) when a test's data are missing."""
    if not path.exists():
        pytest.fail(f"test data {path} is missing; restore it from git (tests/data)")
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No user config or CONTIMG_* variables leak into a test."""
    for k in list(os.environ):
        if k.startswith("CONTIMG_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("CONTIMG_CASA_LOGFILE", str(tmp_path_factory.getbasetemp() / "casa.log"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server on a free port (real, not mocked)."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed; run `make setup` (it installs it with apt)")
    from contimg.cluster import RedisServer

    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


def make_config(base: Path, data_dir: Path, **pipeline):
    """A configuration whose roots all live under ``base``.

    Keyword arguments set ``pipeline`` keys (``min_subbands=12``), or any
    section's key when named ``section__key`` (``dispatch__lease_s=60``).
    """
    from contimg import config

    env = {
        "CONTIMG_PATHS__DATA_ROOT": str(data_dir),
        "CONTIMG_PATHS__PRODUCTS_ROOT": str(base / "products"),
        "CONTIMG_PATHS__ARCHIVE_ROOT": str(base / "archive"),
        "CONTIMG_PATHS__SCRATCH_ROOT": str(base / "scratch"),
    }
    for k, v in pipeline.items():
        key = k.upper() if "__" in k else f"PIPELINE__{k.upper()}"
        env[f"CONTIMG_{key}"] = str(v).lower() if isinstance(v, bool) else str(v)
    return config.load(path=None, env=env)
