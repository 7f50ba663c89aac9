"""Each per-subband science stage on one full-preset subband, in seconds (issue 3); prints, never asserts.

    .venv/bin/python bench/stages.py [--data /tmp/contimg-bench-block] [--subband 7] [--out DIR] [--keep]
                                     [--backend tclean|wsclean] [--flagging STRATEGY] [--no-simulate] [--json]

Data: the two ``full``-preset blocks of ``bench/block.py`` (simulated by its
``simulate_blocks`` into ``--data`` when missing, ~14 GB; reused otherwise):
block 0 is the transit of the catalogued calibrator SIMCAL54, block 1 a
target block. One subband (``--subband``, the same number in both blocks:
117 stations, 165672 rows x 48 channels x 4 correlations, 429 MB of UVH5).
The whole block is ``bench/block.py``'s; this bench does not repeat it.

Stages: the pipeline's own functions with the default configuration
(``contimg.config``; ``--backend`` and ``--flagging`` override the imaging
backend and the flagging strategy), in one process, in the order a worker
runs them (``tasks/subband.py``, ``calibrate_step.py``, ``tasks/block.py``):

1. calibrator subband: convert (``pipeline.converter``: ``fast_convert`` or
   ``convert``), flag (``flagging.flag_subband``, ``flagging.strategy``),
   solve (``calibration.solve_subband``: the calibrator model with the drift
   primary beam written into MODEL_DATA, then ``bandpass`` and ``gaincal``,
   each timed), apply its own caltables (as a calibrator block does);
2. target subband: convert, flag, apply the calibrator's caltables
   (``select_caltables`` + ``apply_subband``), image it alone
   (``imaging.image_block`` with ``imaging.backend``; tclean gets the subband
   MS itself, there is nothing to concatenate).

The calibrator subband runs first, so its stages include the process's
one-time costs (imports, numba compiling, CASA start); the target subband's
are those of a long-lived worker. Both files are read once into the page
cache before anything is timed.

Baseline in the same run, on the same files: the pyuvdata converter
(``contimg.convert.convert_subband``: pyuvdata read, phasing, ``write_ms``;
what ``pipeline.converter = "pyuvdata"`` runs) and plain pyuvdata
(``UVData.from_file`` + ``write_ms``, ``bench/convert.py``'s
``plain_pyuvdata``). Each converts the calibrator file (cold: its first call
in the process) and the target file (warm), each right after the pipeline's
converter has, so that both see the same machine; the ratio is warm against
warm.

Peer figures (``/work/shared/FIELD-NOTES.md`` §5: the DSA-110 team's own
pipeline on a 40-thread Xeon with SSD, one real 16-subband block):
conversion of the block to an MS 128-264 s; bandpass solve about 31 s;
gaincal about 10 s; applycal about 4 s; imaging 1-5 min; whole chain 8-12 min
per block. Reading one subband with pyuvdata took about 4.5 s. Theirs are for
a whole block (except the pyuvdata read) on 40 threads, ours for one subband
on this machine; the table also gives ours times 16 (the block's subbands one
after another in one process: the CPU the block costs), which is what
compares with a block figure, and the peer's block figures over 16.

Output: sizes, one line per stage, the baseline and the ratio, the table
next to the peer figures, and last ``subband_chain_s=`` (convert + flag +
apply of the target subband: the per-subband work a target block pays).
With ``--json`` the same figures as one JSON object on stdout, and every
line above on stderr. CASA's warnings also go to stderr. Work goes into a new
directory under ``--out`` (default: the system's temporary directory),
removed at the end unless ``--keep``; it needs about 3.5 GB.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_SUBBAND = 7
PEER = {
    "source": "FIELD-NOTES.md §5: DSA-110 team's pipeline, 40-thread Xeon with SSD, one real 16-subband block",
    "convert_block_s": (128.0, 264.0),
    "bandpass_block_s": 31.0,
    "gaincal_block_s": 10.0,
    "applycal_block_s": 4.0,
    "image_block_s": (60.0, 300.0),
    "chain_block_s": (480.0, 720.0),
    "pyuvdata_read_subband_s": 4.5,
}
N_SUBBANDS = 16
SIMULATION_BYTES = 2 * N_SUBBANDS * 430e6 * 1.1
"""Free space bench/block.py's two full blocks need (429 MB a file, 10 % margin)."""
MS_BYTES_PER_VIS = 8 + 4 + 1
"""DATA (complex64), WEIGHT_SPECTRUM (float32), FLAG (bool) of a converted MS."""
IMAGE_BYTES = 10 * 4 * 4096 * 4096 * 1.2
"""Images of the largest automatic size at once (imaging._check_free_space's rule)."""


def bench_module(name: str):
    """Another bench script (``bench/{name}.py``) as a module: its functions are reused, not copied."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


class BenchError(Exception):
    """A one-line reason the bench cannot run, naming the thing and what to do."""


# --------------------------------------------------------------------------- data


def find_pair(cfg, data: Path, subband: int):
    """(calibrator block, calibrator, target block) of ``data`` holding ``subband``, or None.

    The calibrator block is the first block whose beam sees a catalogued
    calibrator as the pipeline decides it (``calibrators.calibrator_for_block``),
    the target the next block that sees none.
    """
    from contimg import blocks
    from contimg.calibrators import calibrator_for_block

    if not data.is_dir():
        return None
    found = [b for b in blocks.discover(data, cfg.pipeline.block_tolerance_s).blocks if subband in b.files]
    settings = cfg.calibration
    for i, cal_block in enumerate(found):
        dec = cal_block.pointing_dec_deg()
        if dec is None:
            continue
        cal = calibrator_for_block(cal_block.mid_jd, math.radians(dec), settings.min_apparent_jy,
                                   settings.max_offset_deg, include_synthetic=settings.include_synthetic_calibrators)
        if cal is None:
            continue
        for target in found[i + 1:]:
            tdec = target.pointing_dec_deg()
            if tdec is not None and calibrator_for_block(
                    target.mid_jd, math.radians(tdec), settings.min_apparent_jy, settings.max_offset_deg,
                    include_synthetic=settings.include_synthetic_calibrators) is None:
                return cal_block, cal, target
    return None


def ensure_data(cfg, data: Path, subband: int, simulate: bool, say) -> tuple:
    """The calibrator and target blocks; simulated with bench/block.py when missing and allowed."""
    pair = find_pair(cfg, data, subband)
    if pair is not None:
        return pair
    block = bench_module("block")
    # Simulate only where nothing else lives: a missing or empty directory, or bench/block.py's own.
    ours = not data.exists() or (data / "bench-scenario.json").is_file() or not any(data.iterdir())
    if not ours:
        raise BenchError(f"data directory {data} holds no calibrator block followed by a target block with "
                         f"sb{subband:02d}, and it holds other files, so it is not simulated into; pass --data of "
                         f"such blocks, e.g. bench/block.py's {block.DEFAULT_DATA}, or a new directory")
    if not simulate:
        raise BenchError(f"data directory {data} holds no calibrator block followed by a target block with "
                         f"sb{subband:02d} and --no-simulate was given; run `.venv/bin/python bench/block.py "
                         f"--simulate-only --data {data}` or drop --no-simulate")
    parent = next(p for p in [data, *data.parents] if p.exists())
    free = shutil.disk_usage(parent).free
    if free < SIMULATION_BYTES:
        raise BenchError(f"data directory {data}: only {free / 1e9:.1f} GB free on its disk, simulating the two "
                         f"full blocks needs about {SIMULATION_BYTES / 1e9:.0f} GB; free space or pass --data "
                         f"on a larger disk")
    say(f"# simulating bench/block.py's two full blocks into {data} (~100 s a block)")
    t0 = time.perf_counter()
    try:
        block.simulate_blocks(data)
    except OSError as e:
        raise BenchError(f"data directory {data} could not be simulated ({e}); pass --data somewhere writable") from e
    say(f"# simulated in {time.perf_counter() - t0:.0f} s")
    pair = find_pair(cfg, data, subband)
    if pair is None:
        raise BenchError(f"data directory {data}: bench/block.py's simulation holds no calibrator/target pair with "
                         f"sb{subband:02d}; pass --subband between 0 and 15")
    return pair


def check_free_space(work: Path, uvh5: Path) -> int:
    """Bytes the run needs in ``work``; raises when the disk has less."""
    conv = bench_module("convert")
    s = conv.describe(uvh5)
    nvis = s["Nblts"] * s["Nfreqs"] * s["Npols"]
    # calibrator MS (+ MODEL_DATA, CORRECTED_DATA), target MS (+ CORRECTED_DATA), one baseline MS at a time, images
    need = int(nvis * (3 * MS_BYTES_PER_VIS + 8 + 8 + 8) * 1.2 + IMAGE_BYTES)
    free = shutil.disk_usage(work).free
    if free < need:
        raise BenchError(f"working directory {work}: only {free / 1e9:.1f} GB free, the bench needs about "
                         f"{need / 1e9:.1f} GB; free space or pass --out on a larger disk")
    return need


def read_into_page_cache(path: Path) -> float:
    """Read a file once (the stages then all see a warm page cache); seconds."""
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    return time.perf_counter() - t0


def ms_sizes(ms: Path) -> dict:
    """Rows, channels, correlations, visibilities and bytes on disk of a Measurement Set."""
    from casacore import tables

    with tables.table(str(ms), ack=False) as tb:
        n_corr, n_chan = tb.getcell("DATA", 0).shape[::-1]
        rows = tb.nrows()
    return {"rows": rows, "channels": int(n_chan), "correlations": int(n_corr),
            "visibilities": int(rows * n_chan * n_corr), "ms_bytes": directory_bytes(ms)}


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --------------------------------------------------------------------------- the stages


class Clock:
    """Seconds of each timed stage and the 1-minute load average after it."""

    def __init__(self):
        self.load = [os.getloadavg()[0]]
        self.stages: dict[str, dict] = {}

    def time(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        self.load.append(os.getloadavg()[0])
        self.stages[name] = {"seconds": seconds, "load_1min_after": self.load[-1]}
        return out, seconds


def run_stages(cfg, cal_block, cal, target, subband: int, work: Path, clock: Clock, say) -> dict:
    """The calibrator subband, then the target subband; the baselines convert each file right after
    the pipeline's converter has (same conditions)."""
    from contimg.convert import convert_subband
    from contimg.fast_convert import convert_subband_fast

    convert = convert_subband_fast if cfg.pipeline.converter == "fast" else convert_subband  # as tasks/subband.py
    out: dict = {"baseline": {}}
    out["calibrator"], caltables = calibrator_subband(cfg, convert, cal_block, cal, subband, clock, say)
    out["baseline"]["cold"] = run_baselines(cal_block, subband, work, "cold", clock, say)
    out["target"], out["baseline"]["warm"] = target_subband(cfg, convert, target, subband, caltables, work, clock,
                                                           say)
    return out


def calibrator_subband(cfg, convert, blk, cal, subband: int, clock: Clock, say) -> tuple[dict, object]:
    """Convert, flag, solve (model, bandpass, gaincal), apply; the figures and the CaltableSet solved."""
    from contimg import products
    from contimg.calibration import apply_subband, solve_subband
    from contimg.flagging import flag_subband

    head = f"calibrator sb{subband:02d}"
    ms = products.subband_ms(cfg.scratch_root(cfg.node_for_subband(subband).name), blk.block_id, subband)
    res, t = clock.time("calibrator convert", convert, blk.files[subband].path, ms, block_mid_jd=blk.mid_jd)
    c = {"block_id": blk.block_id, "ms": str(ms), "calibrator": cal.calibrator.name, "apparent_jy": cal.apparent_jy,
         "convert_s": t, "convert_steps_s": res.seconds}
    say(f"{head} convert  {t:7.2f} s  (first in the process: imports, numba; {res.seconds})")
    flags, t = clock.time("calibrator flag", flag_subband, ms, cfg.flagging, date=blk.block_id[:10])
    c.update(flag_s=t, flag_steps_s=flags.seconds, flagged_fraction=flags.fraction_after)
    say(f"{head} flag     {t:7.2f} s  ({flags.seconds}; {100 * flags.fraction_after:.1f} % flagged)")
    # as calibrate_step.py: the pointing declination of the converted file, the drift beam in the model
    solved, t = clock.time("calibrator solve", solve_subband, ms, cal.calibrator, cfg.calibration,
                           cfg.paths.products_root, block_id=blk.block_id, subband=subband,
                           pointing_dec_rad=math.radians(res.pointing_dec_deg))
    s, model = solved.seconds, solved.model
    c.update(solve_s=t, model_s=s["model"], bandpass_s=s["bandpass"], gaincal_s=s["gaincal"], refant=solved.refant,
             flagged_solutions=solved.flagged_solutions, model_beam=[model["beam_min"], model["beam_max"]])
    flagged = {k: round(v, 4) for k, v in solved.flagged_solutions.items()}
    say(f"{head} solve    {t:7.2f} s  (model {s['model']:.2f} s with the drift beam {model['beam_min']:.3f}-"
        f"{model['beam_max']:.3f}, refant {solved.refant}; flagged solutions {flagged})")
    say(f"{head} bandpass {s['bandpass']:7.2f} s")
    say(f"{head} gaincal  {s['gaincal']:7.2f} s")
    applied, t = clock.time("calibrator apply", apply_subband, ms, solved.caltables, cfg.calibration)
    c.update(apply_s=t, apply_steps_s=applied.seconds)
    say(f"{head} apply    {t:7.2f} s  (its own caltables, as a calibrator block does)")
    c["chain_s"] = c["convert_s"] + c["flag_s"] + c["solve_s"] + c["apply_s"]
    return c, solved.caltables


def target_subband(cfg, convert, blk, subband: int, caltables, work: Path, clock: Clock, say) -> tuple[dict, dict]:
    """Convert, flag, apply ``caltables``, image the subband alone; the figures and the warm baselines
    (converted right after the pipeline's converter)."""
    from contimg import products
    from contimg.calibration import apply_subband, select_caltables
    from contimg.flagging import flag_subband
    from contimg.imaging import image_block

    head = f"target     sb{subband:02d}"
    ms = products.subband_ms(cfg.scratch_root(cfg.node_for_subband(subband).name), blk.block_id, subband)
    res, t = clock.time("target convert", convert, blk.files[subband].path, ms, block_mid_jd=blk.mid_jd)
    g = {"block_id": blk.block_id, "ms": str(ms), "convert_s": t, "convert_steps_s": res.seconds,
         "sizes": ms_sizes(ms)}
    say(f"{head} convert  {t:7.2f} s  ({cfg.pipeline.converter} converter, warm; {res.seconds})")
    baseline = run_baselines(blk, subband, work, "warm", clock, say)
    flags, t = clock.time("target flag", flag_subband, ms, cfg.flagging, date=blk.block_id[:10])
    g.update(flag_s=t, flag_steps_s=flags.seconds, flagged_fraction=flags.fraction_after)
    say(f"{head} flag     {t:7.2f} s  ({flags.seconds}; {100 * flags.fraction_after:.1f} % flagged)")
    # as calibrate_step.py, with the one set solved instead of the products database's
    window = cfg.calibration.validity_window_s
    sel = select_caltables([caltables], blk.mid_jd, window)
    if not sel:
        raise BenchError(f"block {blk.block_id}: the caltables of {caltables.block_id} are not valid for it "
                         f"(calibration.validity_window_s = {window:g}); pass --data of two consecutive blocks")
    applied, t = clock.time("target apply", apply_subband, ms, sel, cfg.calibration)
    g.update(apply_s=t, apply_steps_s=applied.seconds, flagged_after_apply=applied.fraction_flagged_after,
             ms_bytes_calibrated=directory_bytes(ms))
    say(f"{head} apply    {t:7.2f} s  ({applied.seconds})")
    # as tasks/block.py, with one subband: tclean images the subband MS itself (nothing to concatenate)
    prods = products.block_products(cfg.paths.products_root, blk.block_id)
    img, t = clock.time("target image", image_block, [ms], prods, cfg.imaging, block_id=blk.block_id,
                        extra_header={"NSUBBAND": 1})
    g.update(image_s=t, image_steps_s=img.seconds, image={k: getattr(img, k) for k in (
        "backend", "imsize", "cell_arcsec", "channel_average", "iterations", "stop_reason", "rms_jy", "peak_jy",
        "beam_major_arcsec", "beam_minor_arcsec")})
    say(f"{head} image    {t:7.2f} s  ({img.backend}, {img.imsize}^2 at {img.cell_arcsec:.2f} arcsec, "
        f"{img.iterations} iterations, rms {1e3 * img.rms_jy:.2f} mJy/beam, peak {img.peak_jy:.3f} Jy/beam; "
        f"{img.seconds})")
    g["chain_s"] = g["convert_s"] + g["flag_s"] + g["apply_s"]
    return g, baseline


def run_baselines(blk, subband: int, work: Path, when: str, clock: Clock, say) -> dict:
    """The pyuvdata converter and plain pyuvdata on one file; ``when`` cold (first call) or warm."""
    from contimg.convert import convert_subband

    plain = bench_module("convert").plain_pyuvdata
    out = {}
    for name, fn in (("pyuvdata_converter", lambda src, dst: convert_subband(src, dst, block_mid_jd=blk.mid_jd)),
                     ("plain_pyuvdata", plain)):
        dst = work / f"baseline-{name}-{when}.ms"
        res, t = clock.time(f"baseline {name} {when}", fn, blk.files[subband].path, dst)
        shutil.rmtree(dst, ignore_errors=True)
        out[name] = {"seconds": t, "steps_s": res.seconds if res is not None else None}
        say(f"baseline   {name:<18} {when}  {t:7.2f} s" + (f"  ({res.seconds})" if res is not None else ""))
    return out


# --------------------------------------------------------------------------- report


def peer_table(st: dict) -> list[str]:
    """Our one subband, our 16 subbands one after another, the peer's block and the peer's block / 16."""
    c, g, p = st["calibrator"], st["target"], PEER
    read = st["baseline"]["warm"]["pyuvdata_converter"]["steps_s"]["read"]

    def rng(v, scale=1.0):
        return f"{v[0] * scale:.0f}-{v[1] * scale:.0f}" if isinstance(v, tuple) else f"{v * scale:.1f}"

    rows = [
        ("convert (target, warm)", g["convert_s"], p["convert_block_s"]),
        ("flag", g["flag_s"], None),
        ("bandpass", c["bandpass_s"], p["bandpass_block_s"]),
        ("gaincal", c["gaincal_s"], p["gaincal_block_s"]),
        ("applycal (target)", g["apply_s"], p["applycal_block_s"]),
        ("image (one subband alone; a block: bench/block.py)", g["image_s"], p["image_block_s"]),
        ("convert + flag + apply (target)", g["chain_s"], None),
    ]
    w = 60
    lines = [f"# next to the peer ({p['source']}); x16: our 16 subbands one after another in one process",
             f"{'stage':<{w}} {'1 subband s':>11} {'x16 s':>8} {'peer block s':>13} {'peer /16 s':>11}"]
    for name, ours, peer in rows:
        per_block = name.startswith("image")  # one image a block, not one a subband
        lines.append(f"{name:<{w}} {ours:11.2f} {'-' if per_block else f'{16 * ours:.0f}':>8} "
                     f"{rng(peer) if peer else '-':>13} {rng(peer, 1 / 16) if peer and not per_block else '-':>11}")
    lines.append(f"{'pyuvdata read (pyuvdata converter, warm; peer: per subband)':<{w}} {read:11.2f} {16 * read:8.0f} {'-':>13} "
                 f"{p['pyuvdata_read_subband_s']:11.1f}")
    lines.append(f"# peer whole chain {rng(p['chain_block_s'])} s a block; ours for a block: bench/block.py")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    block = bench_module("block")
    ap.add_argument("--data", type=Path, default=block.DEFAULT_DATA,
                    help="bench/block.py's simulated blocks (simulated there when missing)")
    ap.add_argument("--subband", type=int, default=DEFAULT_SUBBAND, choices=range(N_SUBBANDS), metavar="0..15",
                    help=f"the subband timed (default {DEFAULT_SUBBAND})")
    ap.add_argument("--out", type=Path, default=None,
                    help="a new working directory is made under it (default: the temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory (MSs, caltables, images)")
    ap.add_argument("--backend", choices=("tclean", "wsclean"), default=None,
                    help="imaging backend (default: the configuration's)")
    ap.add_argument("--flagging", default=None, metavar="STRATEGY",
                    help="flagging strategy (default: the configuration's)")
    ap.add_argument("--no-simulate", dest="simulate", action="store_false",
                    help="fail instead of simulating missing data")
    ap.add_argument("--json", action="store_true",
                    help="the figures as one JSON object on stdout (the printed lines go to stderr)")
    args = ap.parse_args(argv)

    def say(line: str = "") -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    warnings.simplefilter("ignore")
    base = args.out or Path(tempfile.gettempdir())
    try:
        base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="contimg-bench-stages-", dir=base))
    except OSError as e:
        print(f"working directory under {base} could not be made ({e}); pass --out somewhere writable",
              file=sys.stderr)
        return 2
    try:
        return run(args, work, say)
    except BenchError as e:
        print(e, file=sys.stderr)
        return 2
    finally:
        if args.keep:
            say(f"# kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, say) -> int:
    from contimg import casa_env

    block = bench_module("block")
    cfg = block.make_config(work, args.data, "2w", args.backend)
    if args.flagging:
        from contimg import config

        cfg.flagging.strategy = args.flagging
        try:
            config.validate(cfg)
        except config.ConfigError as e:
            raise BenchError(f"--flagging {args.flagging}: {e}") from e
    casa_env.setup(log_dir=work / "logs")
    cal_block, cal, target = ensure_data(cfg, args.data, args.subband, args.simulate, say)
    sb = args.subband
    cal_file, target_file = cal_block.files[sb].path, target.files[sb].path
    need = check_free_space(work, target_file)
    started = datetime.now(UTC)
    load_start = os.getloadavg()
    say(f"# {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average {load_start[0]:.2f} "
        f"{load_start[1]:.2f} {load_start[2]:.2f}; work in {work} (needs ~{need / 1e9:.1f} GB)")
    say(f"# configuration: converter {cfg.pipeline.converter}, flagging {cfg.flagging.strategy}, imaging "
        f"{cfg.imaging.backend}; calibrator block {cal_block.block_id} ({cal.calibrator.name}, "
        f"{cal.apparent_jy:.1f} Jy apparent), target block {target.block_id}, sb{sb:02d}")
    cached = read_into_page_cache(cal_file) + read_into_page_cache(target_file)
    say(f"# both files read into the page cache in {cached:.1f} s")

    clock = Clock()
    stages = run_stages(cfg, cal_block, cal, target, sb, work, clock, say)
    load_end = os.getloadavg()

    g, c = stages["target"], stages["calibrator"]
    sizes = dict(g["sizes"], file_bytes=target_file.stat().st_size, ms_bytes_calibrated=g["ms_bytes_calibrated"])
    warm = stages["baseline"]["warm"]
    base_warm, plain_warm = warm["pyuvdata_converter"]["seconds"], warm["plain_pyuvdata"]["seconds"]
    result = {
        "started_utc": started.isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "load_average": {"start": list(load_start), "end": list(load_end),
                         "1min_min": min(clock.load), "1min_max": max(clock.load), "per_stage": clock.stages},
        "configuration": {"converter": cfg.pipeline.converter, "flagging_strategy": cfg.flagging.strategy,
                          "imaging_backend": cfg.imaging.backend},
        "data": str(args.data), "subband": sb, "sizes": sizes,
        "calibrator": c, "target": g, "baseline": stages["baseline"],
        "ratio_pyuvdata_converter": base_warm / g["convert_s"], "ratio_plain_pyuvdata": plain_warm / g["convert_s"],
        "peer": {k: list(v) if isinstance(v, tuple) else v for k, v in PEER.items()},
        "subband_chain_s": g["chain_s"],
    }
    say(f"# sizes sb{sb:02d}: {sizes['rows']} rows x {sizes['channels']} channels x {sizes['correlations']} "
        f"correlations = {sizes['visibilities'] / 1e6:.1f} M visibilities; file {sizes['file_bytes'] / 1e6:.0f} MB, "
        f"MS {sizes['ms_bytes'] / 1e6:.0f} MB converted, {sizes['ms_bytes_calibrated'] / 1e6:.0f} MB with "
        "CORRECTED_DATA")
    say(f"# load average (1 min) during the stages {min(clock.load):.2f}-{max(clock.load):.2f}; at the end "
        f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    say(f"# calibrator sb{sb:02d} chain (convert + flag + solve + apply, first in the process) {c['chain_s']:.1f} s")
    read = warm["pyuvdata_converter"]["steps_s"]["read"]
    say(f"# baseline: pyuvdata converter {base_warm:.2f} s (read {read:.2f} s), plain pyuvdata {plain_warm:.2f} s, "
        f"{cfg.pipeline.converter} converter {g['convert_s']:.2f} s (all warm): "
        f"ratio {result['ratio_pyuvdata_converter']:.1f} x against the pyuvdata converter, "
        f"{result['ratio_plain_pyuvdata']:.1f} x against plain pyuvdata")
    for line in peer_table(stages):
        say(line)
    say(f"subband_chain_s={g['chain_s']:.1f}")
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
