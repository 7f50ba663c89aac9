"""Speed and memory of UVH5-to-MS conversion of one full subband (issue 7); prints, never asserts.

    .venv/bin/python bench/convert.py [--file F] [--out DIR] [--repeat 3] [--rounds 2] [--block]

Three methods on the same file, each in its own fresh process, in one run,
``--rounds`` times in turn (plain, contimg, fast, plain, ...: a slow spell of
the shared VM then falls on every method, not on one):

- ``plain``: pyuvdata alone, ``UVData.from_file`` then ``write_ms``, no contimg
  phasing or checks. pyuvdata refuses to write the raw files' altaz driftscan
  centre, so its catalogue entry is relabelled ICRS first (metadata only, the
  data are untouched): the cost measured is pyuvdata's read and write.
- ``contimg``: :func:`contimg.convert.convert_subband` (pyuvdata path).
- ``fast``: :func:`contimg.fast_convert.convert_subband_fast`.

Each process converts the file ``--repeat`` times to the same MS: the first
call is *cold* (numba compiles pyuvdata's baseline functions, astropy loads
its tables; a fresh worker process pays this once; the best of the rounds
is shown), the best of the others over all rounds is *warm* (a long-lived
worker; for the fast path that includes the subtables it keeps per process,
``mstables.write_or_reuse``, as a worker converting the same subbands block
after block does). Seconds and MB/s (file bytes / seconds) for both, peak RSS
of each process against the file size, the ratio of each round and the
warm medians, and last ``speedup=X.X``: warm fast against warm plain. Without
``--file`` one ``full``-preset subband is simulated into ``--out`` first.

A fourth baseline bounds what any converter can reach: ``raw copy`` reads the
file and writes its bytes to a new file through the page cache (16 MB at a time,
no ``copy_file_range`` or reflink), ``--repeat`` times, best kept. A converter
reads at least the data and writes at least as many bytes (DATA, FLAG, WEIGHT_SPECTRUM
hold ~the file's size), so ``copy_ceiling`` = warm plain / raw copy is the largest
speedup over plain that writing the data allows on this machine.

Every conversion starts with no dirty pages of an earlier one to flush
(``os.sync()`` before it, outside the timing). The run ends with the fast MS
compared with the pyuvdata path's (``contimg.ms``): how many DATA values
differ and by how many units in the last place, and which other columns are
identical.

``--block`` also simulates one full block (16 subbands, ~7 GB) and converts
all of it with the fast path in one process, printing the total seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

METHODS = ("plain", "contimg", "fast")
SUBBAND = 7


def simulate_subband(out: Path, subband: int = SUBBAND) -> Path:
    """One full-preset subband file of a simulated block (gains, noise, 20 sources)."""
    from contimg import simulate

    sc = simulate.Scenario(n_blocks=1, preset="full", n_random_sources=20, catalogue_calibrators=False, seed=3)
    plan = simulate.plan_night(sc)
    planned = plan.files[0][subband]
    uvd = simulate.subband_uvdata(plan, planned, simulate.block_directions(plan, 0)[:, subband])
    path = out / planned.filename
    simulate.write_subband_file(uvd, path)
    return path


def describe(path: Path) -> dict:
    """Sizes of a UVH5 file from its header."""
    import h5py

    with h5py.File(path, "r") as f:
        h = f["Header"]
        sizes = {k: int(h[k][()]) for k in ("Nbls", "Ntimes", "Nfreqs", "Npols", "Nblts")}
    sizes["bytes"] = path.stat().st_size
    return sizes


def plain_pyuvdata(uvh5: Path, ms: Path) -> None:
    """pyuvdata's own read and write, nothing else."""
    from pyuvdata import UVData

    uvd = UVData.from_file(str(uvh5), file_type="uvh5", run_check=False)
    for entry in uvd.phase_center_catalog.values():
        # write_ms has no MS frame for an altaz driftscan centre; relabel it.
        if entry["cat_type"] in ("driftscan", "unprojected"):
            entry.update(cat_type="sidereal", cat_frame="icrs", cat_epoch=2000.0)
    uvd.uvw_array = uvd.uvw_array.astype("float64")
    uvd.write_ms(str(ms), clobber=True, run_check=False)


def worker(method: str, uvh5: Path, ms: Path, repeat: int) -> None:
    """Convert ``repeat`` times in this process; print one JSON line."""
    import shutil

    from contimg import convert, fast_convert

    warnings.simplefilter("ignore")
    run = {
        "plain": lambda: plain_pyuvdata(uvh5, ms),
        "contimg": lambda: convert.convert_subband(uvh5, ms),
        "fast": lambda: fast_convert.convert_subband_fast(uvh5, ms),
    }[method]
    seconds = []
    for _ in range(repeat):
        shutil.rmtree(ms, ignore_errors=True)  # every method writes a new MS, none replaces one
        os.sync()  # and starts with no dirty pages of an earlier conversion to flush
        t0 = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - t0)
    steps = result.seconds if hasattr(result, "seconds") else None
    peak = peak_rss_bytes()
    print(json.dumps({"method": method, "seconds": seconds, "peak_rss_bytes": peak, "steps": steps}))


def compare(ref: Path, fast: Path) -> None:
    """Print how the fast MS of the run compares with the pyuvdata path's, column by column."""
    import numpy as np
    from casacore import tables

    with tables.table(str(ref), ack=False) as r, tables.table(str(fast), ack=False) as f:
        a, b = r.getcol("DATA"), f.getcol("DATA")
        ulps = max(float(np.max(np.abs(part(a) - part(b)) / np.spacing(np.maximum(np.abs(part(a)), np.abs(part(b))))))
                   for part in (np.real, np.imag))
        print(f"# fast MS against the pyuvdata path's: DATA {int(np.sum(a != b))} of {a.size} values differ, "
              f"by at most {ulps:.0f} unit(s) in the last place", end="")
        same = [c for c in ("FLAG", "WEIGHT_SPECTRUM", "WEIGHT", "UVW", "ANTENNA1", "ANTENNA2", "TIME")
                if np.array_equal(r.getcol(c), f.getcol(c))]
        print(f"; identical: {', '.join(same)}")


def raw_copy_seconds(src: Path, dst: Path, repeat: int) -> list[float]:
    """Seconds to read ``src`` and write its bytes to ``dst`` through the page cache, ``repeat`` times."""
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    out = []
    for _ in range(repeat):
        dst.unlink(missing_ok=True)
        os.sync()
        t0 = time.perf_counter()
        with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
            while n := fi.readinto(buf):
                fo.write(view[:n])
        out.append(time.perf_counter() - t0)
    dst.unlink(missing_ok=True)
    return out


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started.

    ``getrusage``'s ``ru_maxrss`` survives fork and exec, so a worker started by
    a parent that simulated the file would report the parent's peak;
    ``VmHWM`` belongs to the process's own address space.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: kB, may include the parent's


def run_worker(method: str, uvh5: Path, ms: Path, repeat: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--file", str(uvh5), "--ms", str(ms), "--repeat", str(repeat)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def convert_block(out: Path) -> None:
    """Simulate one full block and convert its 16 subbands with the fast path (one process)."""
    from contimg import fast_convert, simulate, telescope

    data = out / "block"
    t0 = time.perf_counter()
    sc = simulate.Scenario(n_blocks=1, preset="full", n_random_sources=20, catalogue_calibrators=False, seed=3)
    summary = simulate.simulate_night(sc, data)
    print(f"# block: simulated {summary['n_files']} files, {summary['bytes'] / 1e9:.2f} GB in "
          f"{time.perf_counter() - t0:.0f} s")
    files = sorted(data.glob("*_sb??.hdf5"))
    mid = sc.block_start(0).jd + telescope.BLOCK_DURATION_S / 2 / 86400
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    for f in files:
        fast_convert.convert_subband_fast(f, out / "block_ms" / (f.stem + ".ms"), block_mid_jd=mid)
    total = time.perf_counter() - t0
    print(f"block_fast_seconds={total:.1f} ({len(files)} subbands, {summary['bytes'] / total / 1e6:.0f} MB/s; "
          f"the first includes numba's compilation)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=None, help="a UVH5 subband file (default: simulate one)")
    ap.add_argument("--out", type=Path, default=None, help="working directory (default: a new temporary one)")
    ap.add_argument("--repeat", type=int, default=3, help="conversions per method and round; the first is cold")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the three methods in turn (default 2)")
    ap.add_argument("--block", action="store_true", help="also convert a whole simulated block, fast path")
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--ms", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.file, args.ms, args.repeat)
        return
    if args.repeat < 2:
        ap.error("--repeat must be at least 2 (one cold, one warm conversion)")

    out = args.out or Path(tempfile.mkdtemp(prefix="contimg-convert-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.file is None:
        t0 = time.perf_counter()
        uvh5 = simulate_subband(out)
        print(f"# simulated {uvh5} in {time.perf_counter() - t0:.0f} s")
    else:
        uvh5 = args.file
        if not uvh5.is_file():
            sys.exit(f"{uvh5} does not exist")
    size = describe(uvh5)
    print(f"# file {uvh5.name}: {size['bytes']} bytes ({size['bytes'] / 1e6:.0f} MB), Nbls {size['Nbls']}, "
          f"Ntimes {size['Ntimes']}, Nfreqs {size['Nfreqs']}, Npols {size['Npols']}, rows {size['Nblts']}")
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.rounds} rounds of the methods in "
          f"turn, each in a fresh process, {args.repeat} conversions (first cold)")

    # Rounds of the three methods in turn, so that a slow spell of the VM falls on all of them.
    rounds = [{m: run_worker(m, uvh5, out / f"{m}.ms", args.repeat) for m in METHODS} for _ in range(args.rounds)]
    results = {m: {"seconds": [x for r in rounds for x in r[m]["seconds"][1:]],
                   "cold": min(r[m]["seconds"][0] for r in rounds),
                   "peak_rss_bytes": max(r[m]["peak_rss_bytes"] for r in rounds),
                   "steps": min((r[m] for r in rounds), key=lambda x: min(x["seconds"][1:]))["steps"]}
               for m in METHODS}
    mb = size["bytes"] / 1e6
    print(f"{'method':>8} {'cold s':>7} {'warm s':>7} {'warm MB/s':>9} {'peak RSS MB':>11} {'RSS/file':>8}  warm steps")
    for m, r in results.items():
        cold, warm = r["cold"], min(r["seconds"])
        steps = r["steps"] or {}
        print(f"{m:>8} {cold:7.2f} {warm:7.2f} {mb / warm:9.0f} {r['peak_rss_bytes'] / 1e6:11.0f} "
              f"{r['peak_rss_bytes'] / size['bytes']:8.2f}  {steps}")
    fast, plain = results["fast"]["seconds"], results["plain"]["seconds"]
    copy = raw_copy_seconds(uvh5, out / "raw-copy.bin", args.repeat)
    print(f"{'raw copy':>8} {copy[0]:7.2f} {min(copy[1:]):7.2f} {mb / min(copy[1:]):9.0f} {'-':>11} {'-':>8}  "
          f"(read the file, write its bytes; every pass {', '.join(f'{c:.2f}' for c in copy)} s)")
    per_round = [min(r["plain"]["seconds"][1:]) / min(r["fast"]["seconds"][1:]) for r in rounds]
    print(f"# warm fast against warm plain, round by round: {', '.join(f'{x:.1f}' for x in per_round)} "
          f"(median {statistics.median(per_round):.1f}); fast warm median {statistics.median(fast):.3f} s, "
          f"plain warm median {statistics.median(plain):.3f} s")
    print(f"copy_ceiling={min(plain) / min(copy[1:]):.1f} (warm plain / raw copy: the most any converter "
          f"that writes the data can gain over plain here)")
    print(f"fast_peak_rss_over_file={results['fast']['peak_rss_bytes'] / size['bytes']:.2f}")
    print(f"cold_speedup={results['plain']['cold'] / results['fast']['cold']:.1f} contimg_warm_speedup="
          f"{min(results['contimg']['seconds']) / min(fast):.1f}")
    compare(out / "contimg.ms", out / "fast.ms")
    if args.block:
        convert_block(out)
    print(f"speedup={min(plain) / min(fast):.1f}")


if __name__ == "__main__":
    main()
