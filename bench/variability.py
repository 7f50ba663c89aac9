"""Speed of the variability statistics and the ESE dip scan on a large light-curve set.

Simulates N_SOURCES steady light curves of N_EPOCHS epochs (float32, in source
chunks so memory stays ~1 GB), times :func:`contimg.variability.variability_stats`
and :func:`contimg.ese.scan_dips` on all of them (default blocks and threads,
printed on the first line), and compares with a
straightforward per-source Python loop on a subsample, extrapolated. The null
calibration of the FAP (once per number of epochs per process) is timed apart.

    .venv/bin/python bench/variability.py [N_SOURCES N_EPOCHS]

Last line: ``seconds=...`` (statistics + scan, calibration excluded).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from contimg import ese, variability

N_SOURCES = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
N_EPOCHS = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000
N_BASELINE = 200


def make(n, n_ep, seed):
    rng = np.random.default_rng(seed)
    f = np.empty((n, n_ep), np.float32)
    e = np.empty((n, n_ep), np.float32)
    for i in range(0, n, 10_000):
        m = min(10_000, n - i)
        snr = np.exp(rng.uniform(np.log(10), np.log(1000), (m, 1)))
        e[i:i + m] = 1.0 / (snr * np.exp(rng.normal(0, 0.2, (m, n_ep))))
        f[i:i + m] = 1.0 + rng.standard_normal((m, n_ep), np.float32) * e[i:i + m]
    return f, e


def baseline_one(f, e, cfg):
    """Straightforward per-source version: the statistics and every window with plain numpy."""
    w = 1 / e**2
    mu = (w * f).sum() / w.sum()
    eta = (w * (f - mu) ** 2).sum() / (f.size - 1)
    v = f.std(ddof=1) / f.mean()
    vs = np.diff(f) / np.hypot(e[1:], e[:-1])
    med = np.median(f)
    r, s = f / med, e / med
    k = np.median(np.abs(np.diff(r)) / np.hypot(s[1:], s[:-1])) / 0.6745
    x = np.clip((r - 1) / (k * s), -cfg.clip, cfg.clip)
    ws = 1 / s**2
    best = -np.inf
    for length in cfg.lengths(f.size):
        step = max(1, round(length * cfg.step_fraction))
        for a in range(0, f.size - length + 1, step):
            inside = slice(a, a + length)
            wi = ws[inside].sum()
            mi = (ws[inside] * x[inside] * s[inside]).sum() / wi
            mo = ((ws * x * s).sum() - mi * wi) / (ws.sum() - wi)
            best = max(best, (mo - mi) / np.sqrt(1 / wi + 1 / (ws.sum() - wi)))
    return eta, v, np.abs(vs).max(), best


def main():
    print(f"sources={N_SOURCES} epochs={N_EPOCHS} dtype=float32 threads={variability.default_workers()} "
          f"block={variability.default_chunk(N_EPOCHS)} sources")
    t0 = time.perf_counter()
    f, e = make(N_SOURCES, N_EPOCHS, 1)
    print(f"simulate: {time.perf_counter() - t0:.1f} s ({2 * f.nbytes / 1e9:.2f} GB of input)")

    t0 = time.perf_counter()
    ese.false_alarm_probability(np.array([5.0]), np.array([N_EPOCHS]))
    print(f"null calibration for N={N_EPOCHS} (once per process, cached): {time.perf_counter() - t0:.1f} s")

    cfg = ese.ScanConfig()
    t0 = time.perf_counter()
    for i in range(N_BASELINE):
        baseline_one(f[i].astype(float), e[i].astype(float), cfg)
    t_base = (time.perf_counter() - t0) / N_BASELINE * N_SOURCES
    print(f"baseline per-source loop: {N_BASELINE} sources, extrapolated to {N_SOURCES}: {t_base:.0f} s")

    t0 = time.perf_counter()
    st = variability.variability_stats(f, e)
    t_stats = time.perf_counter() - t0
    t0 = time.perf_counter()
    sc = ese.scan_dips(f, e)
    t_scan = time.perf_counter() - t0
    total = t_stats + t_scan
    print(f"variability_stats: {t_stats:.2f} s; scan_dips (+FAP): {t_scan:.2f} s")
    print(f"median eta={np.nanmedian(st.eta):.3f} (expect ~1); FAP<=1e-3: {(sc.fap <= 1e-3).mean():.5f} (expect <=0.001)")
    print(f"speedup over the per-source loop: {t_base / total:.0f}x")
    print(f"seconds={total:.2f}")


if __name__ == "__main__":
    main()
