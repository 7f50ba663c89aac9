"""Tests of contimg.mstables: POINTING as pyuvdata writes it."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from contimg import mstables, phasing, telescope

sys.path.insert(0, str(Path(__file__).parent))
import synth_uvdata as synth  # noqa: E402

T0_JD = 2460953.6338541666


def _cells(ms: Path, sub: str) -> dict:
    from casacore import tables

    with tables.table(str(ms / sub), ack=False) as t:
        return {col: [t.getcell(col, i) if t.iscelldefined(col, i) else None for i in range(t.nrows())]
                for col in t.colnames()}


@pytest.mark.parametrize("integration", ["equal", "varying"])
def test_write_pointing_is_pyuvdatas(tmp_path, integration):
    from pyuvdata.utils.io import ms as ms_utils

    times = T0_JD + np.arange(3) * telescope.INTEGRATION_S / 86400
    uvd = synth.phased_uvdata(center=phasing.block_phase_center(float(times.mean()), math.radians(54.6)),
                              sources=[], freqs_hz=synth.subband_freqs(3), times_jd=times, apply_beam=False)
    if integration == "varying":  # the median of each time's rows: an even and an odd count differ
        uvd.integration_time = np.random.default_rng(1).choice([10.0, 11.0, 12.5], size=uvd.Nblts)
    theirs, ours = tmp_path / "theirs.ms", tmp_path / "ours.ms"
    for ms in (theirs, ours):
        ms_utils.init_ms_file(str(ms)).close()
    ms_utils.write_ms_pointing(str(theirs), uvobj=uvd)
    mstables.write_pointing(ours, uvd)

    a, b = _cells(ours, "POINTING"), _cells(theirs, "POINTING")
    assert a.keys() == b.keys() and len(a["TIME"]) == (max(uvd.telescope.antenna_numbers) + 1) * 3
    for col in b:
        for i, (x, y) in enumerate(zip(a[col], b[col], strict=True)):
            assert (x is None and y is None) or np.array_equal(np.asarray(x), np.asarray(y)), f"{col}[{i}]"
