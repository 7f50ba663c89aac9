"""The robust per-block flux scale (contimg.fluxscale) against injected gains and outliers."""

from __future__ import annotations

import math

import numpy as np

from contimg import fluxscale


def test_scale_resists_outliers_and_its_error_is_calibrated():
    rng = np.random.default_rng(7)
    pulls, rejected = [], []
    for _ in range(300):
        n = 40
        cat = 10 ** rng.uniform(-1.5, 0, n)
        err = 0.002 + 0.01 * cat  # noise plus a 1 % per-source term
        gain = rng.uniform(0.9, 1.1)
        meas = gain * cat + err * rng.standard_normal(n)
        bad = rng.choice(n, 4, replace=False)
        meas[bad] *= rng.choice([0.5, 0.6, 1.5], 4)  # variable or blended references
        fs = fluxscale.robust_scale(meas, err, cat, min_refs=5)
        assert fs.determined and fs.n_references == n
        pulls.append((fs.scale - gain) / fs.scale_err)
        rejected.append(set(bad) <= set(fs.rejected))
    pulls = np.array(pulls)
    print(f"scale pull std {pulls.std():.3f}, all outliers rejected in {np.mean(rejected):.3f} of the trials")
    assert abs(np.mean(pulls)) < 0.2 and 0.8 <= pulls.std() <= 1.2
    assert np.mean(rejected) >= 0.95


def test_too_few_references_leave_the_block_unscaled():
    fs = fluxscale.robust_scale([1.0, 1.1], [0.01, 0.01], [1.0, 1.0], min_refs=5)
    assert not fs.determined and fs.scale == 1.0 and math.isnan(fs.scale_err)
    f, e = fluxscale.apply_scale([2.0], [0.1], fs)
    assert f[0] == 2.0 and e[0] == 0.1


def test_apply_adds_the_scale_error_in_quadrature():
    fs = fluxscale.FluxScale(1.25, 0.0125, 10, 10, 0, [], 1.0, True)
    f, e = fluxscale.apply_scale([2.5], [0.05], fs)
    assert f[0] == 2.0
    assert e[0] == np.sqrt((0.05 / 1.25) ** 2 + (2.0 * 0.01) ** 2)
