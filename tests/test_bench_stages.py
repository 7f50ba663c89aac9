"""bench/stages.py runs end to end on a tiny preset and refuses missing data in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench" / "stages.py"


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_missing_data_not_simulated_is_one_line_and_fails(tmp_path):
    data = tmp_path / "nothing-here"
    r = _bench("--data", str(data), "--out", str(tmp_path / "out"), "--no-simulate")
    assert r.returncode != 0
    message = r.stderr.strip().splitlines()
    assert len(message) == 1, r.stderr
    assert str(data) in message[0] and "--no-simulate" in message[0] and "bench/block.py" in message[0]
    assert list((tmp_path / "out").iterdir()) == []  # the working directory is removed


@pytest.mark.slow
def test_tiny_blocks_json(tmp_path):
    """Two tiny blocks (calibrator SIMCAL54, then a target): every stage timed, figures as JSON (~15 s)."""
    from contimg import simulate

    data = tmp_path / "data"
    sc = simulate.Scenario(preset="tiny", n_blocks=2, start="03:15:28", seed=42, n_random_sources=0)
    simulate.simulate_night(sc, data)
    # WSClean: tclean spends ~25 s on even a tiny image
    r = _bench("--data", str(data), "--out", str(tmp_path / "out"), "--subband", "3", "--backend", "wsclean",
               "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    fig = json.loads(r.stdout)
    t, c = fig["target"], fig["calibrator"]
    assert fig["configuration"]["imaging_backend"] == "wsclean" and fig["subband"] == 3
    assert c["calibrator"] == "SIMCAL54" and c["flagged_solutions"] == {"bandpass": 0.0, "gain": 0.0}
    for key in ("convert_s", "flag_s", "apply_s", "image_s"):
        assert t[key] > 0
    for key in ("bandpass_s", "gaincal_s", "model_s", "solve_s"):
        assert c[key] > 0
    assert fig["subband_chain_s"] == pytest.approx(t["convert_s"] + t["flag_s"] + t["apply_s"])
    assert fig["sizes"]["visibilities"] == fig["sizes"]["rows"] * 4 * 4  # tiny: 4 channels, 4 correlations
    for when in ("cold", "warm"):
        assert fig["baseline"][when]["pyuvdata_converter"]["seconds"] > 0
        assert fig["baseline"][when]["plain_pyuvdata"]["seconds"] > 0
    assert fig["ratio_pyuvdata_converter"] > 0
    assert r.stderr.strip().splitlines()[-1] == f"subband_chain_s={fig['subband_chain_s']:.1f}"
    assert list((tmp_path / "out").iterdir()) == []
