"""Tests of contimg.variability: definitions, missing epochs, null distribution."""

from __future__ import annotations

import numpy as np
import pytest

from contimg import variability as var


def test_definitions_match_field_notes():
    f = np.array([[1.0, 1.2, 0.9, 1.1, 1.0]])
    e = np.array([[0.1, 0.2, 0.1, 0.1, 0.05]])
    st = var.variability_stats(f, e)
    w = 1 / e[0] ** 2
    n = f.size
    eta = n / (n - 1) * (np.mean(w * f[0] ** 2) - np.mean(w * f[0]) ** 2 / np.mean(w))
    assert st.eta[0] == pytest.approx(eta, rel=1e-10)
    assert st.chi2[0] == pytest.approx((n - 1) * eta)
    assert st.v[0] == pytest.approx(np.std(f[0], ddof=1) / np.mean(f[0]))
    assert st.weighted_mean[0] == pytest.approx((w * f[0]).sum() / w.sum())
    # Largest consecutive |Vs|: 0.9 -> 1.1 (later minus earlier).
    vs, m = var.two_epoch(1.1, 0.1, 0.9, 0.1)
    assert st.vs_max[0] == pytest.approx(vs) and st.m_at_vs_max[0] == pytest.approx(m)
    assert vs == pytest.approx(0.2 / np.sqrt(0.02)) and m == pytest.approx(2 * 0.2 / 2.0)


def test_missing_epochs_use_only_valid_ones():
    f = np.array([[1.0, np.nan, 1.2, 0.8, 1.1], [1.0, 1.2, 0.8, 1.1, 5.0]])
    e = np.array([[0.1, 0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1, np.nan]])
    st = var.variability_stats(f, e)
    ref = var.variability_stats([[1.0, 1.2, 0.8, 1.1]], [[0.1] * 4])
    for k in ("eta", "v", "chi2", "vs_max"):
        assert getattr(st, k)[0] == pytest.approx(getattr(ref, k)[0])
        assert getattr(st, k)[1] == pytest.approx(getattr(ref, k)[0])
    assert list(st.n_epochs) == [4, 4]
    masked = np.ma.masked_invalid(f)
    assert var.variability_stats(masked, e).eta[0] == pytest.approx(ref.eta[0])


def test_too_few_epochs_give_nan():
    st = var.variability_stats([[1.0, np.nan]], [[0.1, 0.1]])
    assert np.isnan(st.eta[0]) and np.isnan(st.v[0]) and st.n_epochs[0] == 1


def test_eta_follows_chi2_under_the_null_at_high_snr():
    # High SNR is where the raw FIELD-NOTES formula loses digits; the centred form does not.
    rng = np.random.default_rng(3)
    e = np.full((4000, 30), 1e-4)
    f = 1e3 + rng.standard_normal(e.shape) * e
    st = var.variability_stats(f, e)
    assert np.mean(st.eta) == pytest.approx(1.0, abs=0.02)
    assert np.mean(st.chi2_p < 0.05) == pytest.approx(0.05, abs=0.012)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ in shape"):
        var.variability_stats(np.ones((2, 3)), np.ones((2, 4)))


def test_relative_calibration_removes_common_gain():
    rng = np.random.default_rng(4)
    gain = 1 + 0.01 * rng.standard_normal(40)
    flux = rng.uniform(1, 5, (50, 1)) * gain[None, :]
    g = var.relative_calibration(flux, np.arange(50))
    assert np.allclose(g / np.median(g), gain / np.median(gain), rtol=1e-12)
    with pytest.raises(ValueError, match="no reference"):
        var.relative_calibration(flux, np.zeros(50, bool))


def test_blocks_and_threads_do_not_change_the_statistics():
    rng = np.random.default_rng(6)
    e = rng.uniform(0.01, 0.05, (300, 50)).astype(np.float32)
    f = (1 + rng.standard_normal(e.shape) * e).astype(np.float32)
    g = f.astype(float)
    g[rng.random(g.shape) < 0.05] = np.nan
    for flux, err in ((f, e), (g, e.astype(float))):
        one = var.variability_stats(flux, err, chunk=10**6, workers=1)
        many = var.variability_stats(flux, err, chunk=7, workers=2)
        for k, a in one.as_dict().items():
            assert np.array_equal(a, getattr(many, k), equal_nan=True), k


def test_vs_max_is_the_first_of_tied_pairs_and_matches_two_epoch_on_all_pairs():
    # Every consecutive pair has the same abs(Vs): the first pair (a rise) must be reported.
    f = np.tile([1.0, 1.1], (3, 20))
    e = np.full_like(f, 0.1)
    st = var.variability_stats(f, e)
    vs, m = var.two_epoch(f[:, 1], e[:, 1], f[:, 0], e[:, 0])
    assert np.array_equal(st.vs_max, vs) and np.array_equal(st.m_at_vs_max, m)
    rng = np.random.default_rng(8)
    e = rng.uniform(0.01, 0.05, (200, 40))
    f = 1 + rng.standard_normal(e.shape) * e
    vs, m = var.two_epoch(f[:, 1:], e[:, 1:], f[:, :-1], e[:, :-1])
    j = np.argmax(np.abs(vs), axis=1)
    st = var.variability_stats(f, e)
    rows = np.arange(200)
    assert np.array_equal(st.vs_max, vs[rows, j]) and np.array_equal(st.m_at_vs_max, m[rows, j])


def test_one_epoch_without_gaps_gives_nan():
    # Used to raise "attempt to get argmax of an empty sequence".
    st = var.variability_stats(np.ones((2, 1)), np.ones((2, 1)))
    assert np.isnan(st.eta).all() and np.isnan(st.vs_max).all() and list(st.n_epochs) == [1, 1]
