"""Recall and false positives of the ESE detector on simulated light curves.

    .venv/bin/python bench/ese.py [SEED]

Simulates 2000 steady sources and 500 injected ESEs (60 epochs; see
contimg/lightcurves_sim.py), runs :func:`contimg.ese.scan_dips` and prints the
recall by depth x duration bin (SNR >= 50, and all SNRs), by shape, and the
false positives per 1000 steady sources at the default FPR. Last line:
``recall_20pct_10ep=...`` (dips >= 20 %, >= 10 epochs, SNR >= 50).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from contimg import ese
from contimg.lightcurves_sim import simulate_lightcurves

SEED = int(sys.argv[1]) if len(sys.argv) > 1 else 20251005
DEPTH_BINS = [0.10, 0.20, 0.30, 0.40, 0.50001]
DUR_BINS = [5, 10, 20, 30, 41]


def table(sim, det, sel, title):
    print(title)
    head = "depth \\ epochs " + "".join(f"{a:>3d}-{b - 1:<3d}   " for a, b in zip(DUR_BINS[:-1], DUR_BINS[1:]))
    print(head)
    for d0, d1 in zip(DEPTH_BINS[:-1], DEPTH_BINS[1:]):
        cells = []
        for a, b in zip(DUR_BINS[:-1], DUR_BINS[1:]):
            m = sel & (sim.depth >= d0) & (sim.depth < d1) & (sim.duration >= a) & (sim.duration < b)
            cells.append(f"{det[m].mean():5.2f} ({m.sum():2d})" if m.any() else "   -      ")
        print(f"{100 * d0:3.0f}-{min(100 * d1, 50):3.0f} %      " + " ".join(cells))


def main():
    t0 = time.perf_counter()
    sim = simulate_lightcurves(n_steady=2000, n_ese=500, n_epochs=60, seed=SEED)
    sc = ese.scan_dips(sim.flux, sim.flux_err)
    dt = time.perf_counter() - t0
    det = sc.fap <= ese.DEFAULT_FPR
    print(f"seed={SEED} steady=2000 ese=500 epochs=60 fpr={ese.DEFAULT_FPR:g} ({dt:.1f} s incl. calibration)")
    table(sim, det, sim.is_ese & (sim.snr >= 50), "recall (detected fraction, n), SNR >= 50:")
    table(sim, det, sim.is_ese & (sim.snr < 50), "recall, SNR 10-50:")
    for shape in ("caustic", "u", "box"):
        m = sim.is_ese & (sim.shape == shape) & (sim.snr >= 50)
        print(f"shape {shape:8s} recall (SNR >= 50) {det[m].mean():.3f} of {m.sum()}")
    steady = ~sim.is_ese
    n_fp = int(det[steady].sum())
    print(f"false positives: {n_fp} of {steady.sum()} steady = {1000 * n_fp / steady.sum():.2f} per 1000")
    for p in (1e-1, 1e-2, 1e-3):
        print(f"  steady with FAP <= {p:g}: {np.mean(sc.fap[steady] <= p):.4f}")
    sel = sim.is_ese & (sim.snr >= 50) & (sim.depth >= 0.2) & (sim.duration >= 10)
    print(f"recall_20pct_10ep={det[sel].mean():.3f}")


if __name__ == "__main__":
    main()
