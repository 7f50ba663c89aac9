"""Block discovery: jitter, duplicates, stray files, empty and missing directories."""

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from contimg.blocks import discover
from contimg.products import subband_filename
from contimg.telescope import BLOCK_DURATION_S

T0 = datetime(2025, 10, 5, 3, 0, 0, tzinfo=timezone.utc)


def touch_night(d, n_blocks=4, jitter_s=60, seed=1, skip=(), size=10):
    rng = np.random.default_rng(seed)
    names = {}
    for b in range(n_blocks):
        for sb in range(16):
            if (b, sb) in skip:
                continue
            t = T0 + timedelta(seconds=b * BLOCK_DURATION_S + rng.uniform(-jitter_s, jitter_s))
            p = d / subband_filename(t.replace(microsecond=0), sb)
            p.write_bytes(b"x" * size)
            names[(b, sb)] = p
    return names


def test_jittered_night_groups_into_blocks(tmp_path):
    names = touch_night(tmp_path, n_blocks=5)
    disc = discover(tmp_path)
    assert len(disc.blocks) == 5
    for b, blk in enumerate(disc.blocks):
        assert blk.complete and not blk.duplicates
        assert {sb: f.path for sb, f in blk.files.items()} == {sb: names[(b, sb)] for sb in range(16)}
        assert blk.block_id == min(f.timestamp for f in blk.files.values()).strftime("%Y-%m-%dT%H:%M:%S")
    assert disc.stray == []


def test_missing_duplicate_and_stray(tmp_path):
    touch_night(tmp_path, n_blocks=2, skip={(1, 5), (1, 9)})
    first = discover(tmp_path).blocks[0]
    dup_time = first.files[3].timestamp + timedelta(seconds=7)
    (tmp_path / subband_filename(dup_time, 3)).write_bytes(b"y" * 50)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "2025-10-05T03:00:00_sb16.hdf5").write_bytes(b"")
    (tmp_path / ".2025-10-05T03:00:00_sb01.hdf5.partial").write_bytes(b"")
    (tmp_path / "subdir").mkdir()
    disc = discover(tmp_path)
    assert len(disc.blocks) == 2
    b0, b1 = disc.blocks
    assert b1.missing == [5, 9] and not b1.complete
    assert list(b0.duplicates) == [3] and len(b0.duplicates[3]) == 1
    assert len(b0.files) == 16
    assert sorted(p.name for p in disc.stray) == sorted(
        ["notes.txt", "2025-10-05T03:00:00_sb16.hdf5", ".2025-10-05T03:00:00_sb01.hdf5.partial"])


def test_empty_and_missing_directory(tmp_path):
    assert discover(tmp_path).blocks == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(tmp_path / "nope")


def test_tolerance_controls_clustering(tmp_path):
    touch_night(tmp_path, n_blocks=2, jitter_s=0)
    # files of one block share a start; a tolerance above the block spacing merges blocks
    assert len(discover(tmp_path, tolerance_s=60).blocks) == 2
    merged = discover(tmp_path, tolerance_s=BLOCK_DURATION_S + 1).blocks
    assert len(merged) == 1 and len(merged[0].duplicates) == 16


def test_cli_blocks_json_and_errors(tmp_path):
    touch_night(tmp_path, n_blocks=2, skip={(0, 0)})
    out = subprocess.run([sys.executable, "-m", "contimg.cli", "blocks", str(tmp_path), "--json"],
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert data["n_blocks"] == 2 and data["blocks"][0]["missing"] == [0]
    bad = subprocess.run([sys.executable, "-m", "contimg.cli", "blocks", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "nope does not exist" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
