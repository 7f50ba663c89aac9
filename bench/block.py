"""A full-size block end to end on a private local cluster (issue 7); prints, never asserts.

    .venv/bin/python bench/block.py [--data /tmp/contimg-bench-block] [--out DIR] [--configs 1w,2w]
                                    [--baseline] [--repeat 1] [--backend tclean|wsclean]
                                    [--imaging KEY=VALUE ...]

Data: two consecutive ``full``-preset blocks (16 subbands each, 117 stations,
48 channels, 24 integrations; ~6.9 GB a block) simulated once into ``--data``
and reused afterwards (simulation takes ~100 s a block). Block 0 is the
transit of the catalogued calibrator SIMCAL54 (it solves bandpass and gains
and registers them), block 1 is a target block (it applies them): the common
case, and the one timed. Antenna gains, bandpass errors and thermal noise
are on, 150 random sources over the night's strip, as in the demo.

Run: the real pipeline (``pipeline.submit`` + ``pipeline.wait``) on a
:class:`contimg.cluster.LocalCluster` (private redis-server, real Celery
worker processes) with the default configuration, in these configurations:

- ``1w``: one node holding all 16 subbands, one worker process (concurrency 1);
- ``2w``: two nodes of 8 subbands each, one worker process each (the default
  node map; node1 also images), i.e. two worker processes on this 2-core
  machine, as on the real cluster where each node converts its own files.

The calibrator block is processed once (in the first configuration) and its
caltables are kept in the products database for the target runs. After each
target run the bench measures the truth sources on ``image.pbcor`` with
:func:`contimg.photometry.measure_point` (forced photometry) and prints the
wall time, the per-stage seconds recorded in the products database (per
subband: convert, flag, calibrate; per block: concat, image (tclean, vp,
export, pb, measure)), the photometry seconds, sizes, and the accuracy of
the photometry against the truth.

Imaging backend (``--backend``, default the configuration's): ``tclean``
concatenates the 16 subband MSs and images the block MS; ``wsclean`` images
the 16 subband MSs directly (no concat stage). ``--imaging KEY=VALUE``
(repeatable) sets any other ``[imaging]`` key, e.g. ``wsclean_mgain=0.9``.

Baseline in the same run (``--baseline``): the block's per-subband stages with
the plain pyuvdata converter (``pipeline.converter = "pyuvdata"``) in ``2w``.

Projection: from the measured per-stage seconds, blocks per hour of one node
and the nodes needed to keep up with one block per 309 s (see ``project``).
Last line ``block_wall_s=...`` (the target block with two worker processes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

DEFAULT_DATA = Path("/tmp/contimg-bench-block")
CAL_BLOCK_START = "03:15:28"
"""Block 0 starts here so that SIMCAL54 (transit 03:18:02 UTC) transits at its middle."""
BLOCK_S = 309.2


def scenario():
    from contimg import simulate

    return simulate.Scenario(preset="full", n_blocks=2, start=CAL_BLOCK_START, seed=42)


def simulate_blocks(data: Path) -> dict:
    """Simulate the two blocks into ``data`` unless a complete set is already there."""
    from contimg import products, simulate

    sc = scenario()
    marker = data / "bench-scenario.json"
    want = json.dumps(sc.to_dict(), sort_keys=True)
    files = sorted(data.glob("*_sb??.hdf5"))
    if marker.is_file() and marker.read_text() == want and len(files) == 32 and (data / products.TRUTH_JSON).is_file():
        return {"reused": True, "n_files": len(files), "bytes": sum(f.stat().st_size for f in files), "seconds": 0.0}
    data.mkdir(parents=True, exist_ok=True)
    for f in files:
        f.unlink()
    marker.unlink(missing_ok=True)
    summary = simulate.simulate_night(sc, data)
    marker.write_text(want)
    return dict(summary, reused=False)



# --------------------------------------------------------------------------- one run on a local cluster


def make_config(out: Path, data: Path, nodes: str, backend: str | None = None, imaging: list[str] | None = None,
                **pipeline):
    """Default configuration with roots under ``out``; ``nodes`` 1w (one node, 16 subbands) or 2w (default map);
    ``backend`` the imaging backend (default: the configuration's); ``imaging`` more ``KEY=VALUE`` settings."""
    from contimg import config

    env = {
        "CONTIMG_PATHS__DATA_ROOT": str(data),
        "CONTIMG_PATHS__PRODUCTS_ROOT": str(out / "products"),
        "CONTIMG_PATHS__ARCHIVE_ROOT": str(out / "archive"),
        "CONTIMG_PATHS__SCRATCH_ROOT": str(out / "scratch"),
    }
    env.update({f"CONTIMG_PIPELINE__{k.upper()}": str(v) for k, v in pipeline.items()})
    if backend:
        env["CONTIMG_IMAGING__BACKEND"] = backend
    for item in imaging or []:
        key, _, value = item.partition("=")
        env[f"CONTIMG_IMAGING__{key.strip().upper()}"] = value.strip()
    cfg = config.load(path=None, env=env)
    if nodes == "1w":
        cfg.nodes = {"node1": config.NodeConfig(name="node1", subbands=list(range(16)), imaging=True)}
    elif nodes != "2w":
        raise ValueError(f"unknown configuration {nodes!r}")
    config.validate(cfg)
    return cfg


def run_block(cfg, workdir: Path, block, data: Path) -> dict:
    """Process one block on a fresh LocalCluster; returns its record plus wall times."""
    from contimg import pipeline
    from contimg.cluster import LocalCluster

    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    with LocalCluster(cfg, workdir) as cl:
        t_ready = time.perf_counter()
        pipeline.submit(cl.config, [block], data, force=True)
        recs = pipeline.wait(cl.config, [block.block_id], timeout_s=7200)
        t_done = time.perf_counter()
        cl.wait_idle()
    rec = recs[0]
    rec["bench"] = {"cluster_start_s": t_ready - t0, "wall_s": t_done - t_ready,
                    "image_steps": image_steps_from_logs(workdir / "logs", block.block_id),
                    "subband_steps": subband_steps(cfg.database_url, block.block_id)}
    return rec


def image_steps_from_logs(logdir: Path, block_id: str) -> dict:
    """The imaging sub-steps (vp, tclean or wsclean, export, pb, measure) logged by the block's imaging."""
    marker = f"block {block_id}: image steps "
    for log in sorted(logdir.glob("worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if marker in line:
                return json.loads(line.split(marker, 1)[1])
    return {}


def subband_steps(url: str, block_id: str) -> list[dict]:
    """Per-subband node, seconds and step seconds (convert, flag, calibrate) from the products database."""
    from sqlalchemy import select

    from contimg import database as db

    with db.session(url) as s:
        rows = s.scalars(select(db.SubbandRow).where(db.SubbandRow.block_id == block_id)).all()
        return [{"subband": r.subband, "node": r.node, "state": r.state, "seconds": r.seconds,
                 "steps": dict((r.details or {}).get("steps_s", {})),
                 "calibration": ((r.details or {}).get("calibration") or {}).get("calibration")}
                for r in sorted(rows, key=lambda r: r.subband)]


def calibrated_subbands(cfg, block_id: str) -> set[int]:
    """Subbands of the calibrator block with caltables registered (a previous run's, reused)."""
    from sqlalchemy import select

    from contimg import database as db

    if not (cfg.paths.products_root / "contimg.sqlite").is_file():
        return set()
    with db.session(cfg.database_url) as s:
        rows = s.scalars(select(db.CaltableRow).where(db.CaltableRow.block_id == block_id)).all()
        return {r.subband for r in rows if all(Path(p).is_dir() for p in (r.bandpass, r.gain))}


def forced_photometry(rec: dict, truth: dict) -> dict:
    """Forced photometry of every truth source on the block's image.pbcor; accuracy against the truth."""
    import numpy as np

    from contimg import photometry, validation

    t0 = time.perf_counter()
    pbcor = photometry.load_image(rec["products"]["image_pbcor_fits"])
    pb = photometry.load_image(rec["products"]["pb_fits"])
    from astropy.io import fits

    nu = next(fits.getheader(rec["products"]["image_fits"])[f"CRVAL{i}"] for i in range(1, 5)
              if fits.getheader(rec["products"]["image_fits"]).get(f"CTYPE{i}") == "FREQ")
    index = validation.block_index_of(truth, rec["block_id"])
    rms = rec["image"]["rms_jy"]
    rows = []
    for src in truth["sources"]:
        m = photometry.measure_point(pbcor, src["ra_deg"], src["dec_deg"])
        if m.flags & photometry.OUTSIDE:
            continue
        s_true = src["flux_jy_per_block"][index] * (nu / validation.REFERENCE_FREQ_HZ) ** src["spectral_index"]
        x, y = (int(round(float(v))) for v in pb.wcs.world_to_pixel_values(src["ra_deg"], src["dec_deg"]))
        rows.append(dict(name=src["name"], s_true=s_true, s_meas=m.flux, flags=m.flags, pb=float(pb.data[y, x]),
                         snr=s_true * float(pb.data[y, x]) / rms))
    seconds = time.perf_counter() - t0
    good = [r for r in rows if r["snr"] >= 50 and r["pb"] >= 0.5 and not r["flags"] & ~photometry.PEAK_AT_EDGE]
    ratio = np.array([r["s_meas"] / r["s_true"] for r in good])
    return {"seconds": seconds, "n_measured": len(rows), "n_good": len(good),
            "flux_err_median": float(np.median(np.abs(ratio - 1))) if len(good) else math.nan,
            "flux_ratio_median": float(np.median(ratio)) if len(good) else math.nan}


# --------------------------------------------------------------------------- report


SUBBAND_STAGES = ("convert_s", "flag_s", "calibrate_s")


def stage_table(rec: dict, phot: dict) -> dict:
    """Seconds per stage: per-subband stages summed over subbands (CPU spent) and the slowest node's sum
    (wall, nodes run in parallel), block stages as recorded."""
    subs = rec["bench"]["subband_steps"]
    per_node: dict[str, dict[str, float]] = {}
    for r in subs:
        node = per_node.setdefault(r["node"], {k: 0.0 for k in SUBBAND_STAGES})
        for k in SUBBAND_STAGES:
            node[k] += r["steps"].get(k, 0.0)
    t = rec["timings"]
    img = rec["bench"]["image_steps"]
    return {
        "sum": {k: sum(r["steps"].get(k, 0.0) for r in subs) for k in SUBBAND_STAGES},
        "per_node": per_node,
        "subband_wall_s": t.get("subband_wall_s"),
        "concat_s": t.get("concat_s"),
        "image_s": t.get("image_s"),
        "imager": "wsclean" if "wsclean" in img else "tclean",
        "tclean_s": img.get("tclean", img.get("wsclean")),
        "pb_fits_s": sum(img.get(k, 0.0) for k in ("vp", "export", "pb", "measure")),
        "photometry_s": phot["seconds"],
        "block_wall_s": t.get("block_wall_s"),
    }


def project(stages: dict, n_sub_nodes: int, block_s: float = BLOCK_S) -> list[str]:
    """Throughput model from one block's measured stage seconds.

    Per block the work is (a) per-subband work W_s (convert + flag + calibrate,
    summed over the 16 subbands: it splits over the nodes that hold the files)
    and (b) per-block work W_b (concat + image + photometry, one process on one
    imaging node). With N nodes each holding 16/N subbands and imaging every
    N-th block, in steady state a node spends W_s / N + W_b / N seconds per
    block of the night, so the night's rate is N / (W_s + W_b) blocks per
    second of node time (one worker process per node, tclean using the node's
    cores; nodes of this machine's size). A single block's latency is
    W_s / N + W_b (the imaging does not split). Keeping up with one block per
    309 s needs N >= (W_s + W_b) / 309.
    """
    w_s = sum(stages["sum"].values())
    w_b = (stages["concat_s"] or 0) + (stages["image_s"] or 0) + stages["photometry_s"]
    lines = [f"# projection: W_s (16 subbands) = {w_s:.0f} s, W_b (concat + image + photometry) = {w_b:.0f} s; "
             f"one node keeps up with one block per {block_s:.0f} s when W_s + W_b <= {block_s:.0f} s",
             f"{'nodes':>5} {'blocks/h (night)':>17} {'blocks/h/node':>14} {'latency s':>10} {'keeps up':>9}"]
    for n in range(1, 9):
        rate = n / (w_s + w_b) * 3600
        latency = w_s / n + w_b
        lines.append(f"{n:5d} {rate:17.1f} {rate / n:14.1f} {latency:10.0f} {'yes' if rate >= 3600 / block_s else 'no':>9}")
    lines.append(f"# nodes needed to keep up with one block per {block_s:.0f} s: {math.ceil((w_s + w_b) / block_s)}")
    return lines


def print_run(name: str, rec: dict, phot: dict) -> dict:
    st = stage_table(rec, phot)
    b = rec["bench"]
    print(f"== {name}: block {rec['block_id']} {rec['state']} {rec.get('reason') or ''}")
    print(f"   wall (submit -> done, bench clock) {b['wall_s']:.1f} s; recorded block_wall_s {st['block_wall_s']}; "
          f"cluster start {b['cluster_start_s']:.1f} s; load average {os.getloadavg()[0]:.2f}")
    print("   per-subband stages, summed over 16 subbands: " +
          ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in st["sum"].items()))
    for node, d in sorted(st["per_node"].items()):
        print(f"   {node}: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in d.items()) + f" (sum {sum(d.values()):.1f} s)")
    print(f"   slowest subband {st['subband_wall_s']} s; concat {st['concat_s']} s; image {st['image_s']} s "
          f"({st['imager']} {st['tclean_s']} s, vp+export+pb+measure {st['pb_fits_s']:.1f} s: {b['image_steps']}); "
          f"photometry {st['photometry_s']:.1f} s")
    img = rec.get("image") or {}
    print(f"   image {img.get('imsize')}^2 at {img.get('cell_arcsec')} arcsec, beam "
          f"{img.get('beam_major_arcsec', 0):.1f}x{img.get('beam_minor_arcsec', 0):.1f} arcsec, rms "
          f"{1e3 * img.get('rms_jy', math.nan):.3f} mJy/beam, peak {img.get('peak_jy', math.nan):.3f} Jy/beam")
    print(f"   photometry: {phot['n_measured']} truth sources in the image, {phot['n_good']} above 50 sigma with "
          f"pb >= 0.5: median |S/S_true - 1| {phot['flux_err_median']:.4f}, median S/S_true {phot['flux_ratio_median']:.4f}")
    return st


def describe_data(data: Path, block) -> str:
    import h5py

    f = block.files[0].path
    with h5py.File(f, "r") as h:
        hd = h["Header"]
        nbls, nt, nf, npol = (int(hd[k][()]) for k in ("Nbls", "Ntimes", "Nfreqs", "Npols"))
    size = sum(bf.path.stat().st_size for bf in block.files.values())
    nvis = nbls * nt * nf * npol * len(block.files)
    return (f"block {block.block_id}: {len(block.files)} subbands, {size / 1e9:.2f} GB UVH5, {nbls} baselines x "
            f"{nt} integrations x {nf} channels x {npol} polarizations per subband = {nvis / 1e6:.0f} M visibilities")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="simulated blocks (made once, then reused)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/contimg-bench-block-run"), help="products and scratch")
    ap.add_argument("--configs", default="2w,1w", help="comma-separated: 2w (two worker processes), 1w (one)")
    ap.add_argument("--simulate-only", action="store_true")
    ap.add_argument("--backend", choices=("tclean", "wsclean"), default=None,
                    help="imaging backend (default: the configuration's)")
    ap.add_argument("--imaging", action="append", default=[], metavar="KEY=VALUE",
                    help="another [imaging] setting, e.g. wsclean_mgain=0.9 (repeatable)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from contimg import blocks, validation

    t0 = time.perf_counter()
    s = simulate_blocks(args.data)
    print(f"# data {args.data}: {s['n_files']} files, {s['bytes'] / 1e9:.2f} GB, "
          f"{'reused' if s['reused'] else f'simulated in {time.perf_counter() - t0:.0f} s'}", flush=True)
    if args.simulate_only:
        return
    found = blocks.discover(args.data)
    cal_block, target = found.blocks[0], found.blocks[1]
    truth = validation.load_truth(args.data)
    print(f"# {describe_data(args.data, target)}")
    print(f"# {os.cpu_count()} CPUs; load average at start {os.getloadavg()}", flush=True)
    configs = args.configs.split(",")
    have_cal = calibrated_subbands(make_config(args.out, args.data, configs[0], args.backend, args.imaging),
                                   cal_block.block_id)
    if len(have_cal) < 16:
        shutil.rmtree(args.out, ignore_errors=True)
    else:
        print(f"# reusing the caltables of calibrator block {cal_block.block_id} in {args.out}")
    results = {}
    for i, name in enumerate(configs):
        cfg = make_config(args.out, args.data, name, args.backend, args.imaging)
        print(f"# {name}: imaging backend {cfg.imaging.backend}, settings {args.imaging or 'default'}", flush=True)
        if i == 0 and len(have_cal) < 16:
            rec = run_block(cfg, args.out / f"cluster-{name}-cal", cal_block, args.data)
            phot = forced_photometry(rec, truth) if rec["state"] == "done" else None
            print(f"== calibrator block {rec['block_id']} ({name}): {rec['state']} {rec.get('reason') or ''}; "
                  f"wall {rec['bench']['wall_s']:.1f} s, timings {rec['timings']}", flush=True)
            if phot:
                print_run(f"{name} calibrator block", rec, phot)
        rec = run_block(cfg, args.out / f"cluster-{name}", target, args.data)
        if rec["state"] != "done":
            sys.exit(f"block {rec['block_id']} {rec['state']}: {rec.get('reason')}")
        phot = forced_photometry(rec, truth)
        results[name] = (rec, print_run(name, rec, phot))
        sys.stdout.flush()
    name = "2w" if "2w" in results else configs[0]
    rec, st = results[name]
    for line in project(st, 2):
        print(line)
    wall = rec["bench"]["wall_s"] + st["photometry_s"]
    print(f"block_wall_s={wall:.1f}")


if __name__ == "__main__":
    main()
