"""Accuracy of block images against the simulator's truth (issue 3); prints, never times.

    .venv/bin/python bench/accuracy.py [--preset small] [--blocks 1] [--random 60] [--out DIR]
                                       [--backends tclean,wsclean]

Simulates a night (gains off until calibration lands; noise on; bright
sources placed around the first block's mid-time meridian plus random ones),
runs convert -> concat -> image on every block with the default imaging
settings and each imaging backend in turn (the same data), and prints per
backend the imaging seconds, then per flux bin and beam radius: median
S/S_true, its scatter (1.4826 MAD), median position offset in beams, n; then
the noise against the radiometer expectation; last ``flux_err_median=...``
(of the last backend).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from contimg import simulate, telescope, validation
from contimg.config import ImagingConfig
from contimg.sky import Source

OFFSETS = [(0.0, 0.2), (0.5, 0.0), (-0.6, 0.3), (0.3, -0.7), (-0.9, -0.4), (0.9, 0.6), (-0.2, 1.0), (0.1, -1.05),
           (-0.35, -0.3), (0.7, -0.35), (-0.7, 0.75), (0.35, 0.55), (1.1, -0.1), (-1.1, 0.1), (0.0, -0.45), (0.6, 0.95)]
FLUXES = [1.0, 0.6, 0.8, 0.4, 1.5, 0.5, 0.7, 0.3, 0.2, 0.25, 0.15, 0.12, 0.35, 0.3, 0.08, 0.1]
FLUX_BINS = [(0.0, 0.1), (0.1, 0.3), (0.3, 1.0), (1.0, 100.0)]
RADIUS_BINS = [(0.0, 0.5), (0.5, 1.0)]  # in half-power radii


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--random", type=int, default=60, help="random sources over the night's strip")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--backends", default="tclean", help="comma-separated imaging backends: tclean, wsclean")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="contimg-accuracy-"))

    base = simulate.Scenario(n_blocks=args.blocks, preset=args.preset, gains=False, noise=True, catalogue_calibrators=False,
                             n_random_sources=args.random, start_jitter_s=30.0, seed=args.seed)
    mid = base.block_start(0).jd + telescope.BLOCK_DURATION_S / 2 / 86400
    sources = validation.bright_sources_near_meridian(mid, base.dec_deg, OFFSETS, FLUXES)
    sc = dataclasses.replace(base, sources=tuple(Source(**s) for s in sources))
    t0 = time.perf_counter()
    simulate.simulate_night(sc, out / "data")
    t_sim = time.perf_counter() - t0
    print(f"# {args.preset}, {args.blocks} block(s), {len(sources)} placed + {args.random} random sources; "
          f"simulate {t_sim:.0f} s; data in {out}", flush=True)
    for backend in args.backends.split(","):
        s = report(out, backend)
    print(f"flux_err_median={s['flux_err_median']:.4f}")


def report(out: Path, backend: str) -> dict:
    """Image every block with ``backend`` (default settings otherwise), print its figures, return the summary."""
    import os

    load = os.getloadavg()[0]
    runs, rows = validation.run_night(out / "data", out / f"work-{backend}", ImagingConfig(backend=backend))
    print(f"## backend {backend} (load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end)")
    for run in runs:
        print(f"# block {run.block_id}: {run.seconds} {backend} {run.image.seconds.get(backend)} s, "
              f"cell {run.image.cell_arcsec} arcsec, imsize {run.image.imsize}, "
              f"beam {run.image.beam_major_arcsec:.0f}x{run.image.beam_minor_arcsec:.0f} arcsec, "
              f"channel_average {run.image.channel_average}")
    use = [r for r in rows if r["snr"] >= 50 and r["pb"] >= 0.5]
    print(f"{'flux bin (Jy)':>14} {'r/r_hpbw':>9} {'n':>3} {'median S/S_true':>16} {'scatter':>8} {'offset/beam':>12}")
    for lo, hi in FLUX_BINS:
        for rlo, rhi in RADIUS_BINS:
            sel = [r for r in use if lo <= r["s_true"] < hi and rlo <= r["radius_hpbw"] < rhi]
            if not sel:
                continue
            ratio = np.array([r["s_meas"] / r["s_true"] for r in sel])
            scatter = 1.4826 * np.median(np.abs(ratio - np.median(ratio)))
            off = np.median([r["offset_beam"] for r in sel])
            print(f"{lo:6.2f}-{hi:<7.2f} {rlo:4.1f}-{rhi:<4.1f} {len(sel):3d} {np.median(ratio):16.4f} "
                  f"{scatter:8.4f} {off:12.3f}")
    for run in runs:
        n = run.noise
        print(f"noise block {run.block_id}: rms {run.image.rms_jy * 1e3:.3f} mJy/beam; radiometer natural "
              f"{n.natural_rms_jy * 1e3:.3f} mJy, computed weighting factor {n.weighting_factor:.2f} -> "
              f"{n.rms_jy * 1e3:.3f} mJy; ratio {run.image.rms_jy / n.rms_jy:.2f} "
              f"({run.image.rms_jy / n.natural_rms_jy:.2f} of natural); {n.n_baselines} baselines")
    s = validation.summarize(rows, runs)
    print(f"{backend}: n_sources={s['n_sources']} flux_err_median={s['flux_err_median']:.4f} "
          f"position_offset_median_beam={s['position_offset_median_beam']:.3f} "
          f"noise_ratio_max={s['noise_ratio_max']:.2f} noise_ratio_natural_max={s['noise_ratio_natural_max']:.2f}",
          flush=True)
    return s



if __name__ == "__main__":
    main()
