"""The block image with WSClean (``imaging.backend = "wsclean"``).

Same rules and products as the tclean path of :mod:`contimg.imaging`, with
these differences (see ``docs/imaging.md``):

- **Input**: the block's subband MSs directly (WSClean reads several MSs as
  one data set), so the block is never concatenated; they must share one
  phase centre, like the inputs of :func:`imaging.concat_subbands`.
- **Gridder**: the wgridder (``-use-wgridder``), which corrects the w-term
  (tclean's ``standard`` gridder ignores it) and grids on every core
  (``-j`` = the cores this process may use), to ``wgridder_accuracy``.
- **Channels**: every channel is gridded at its own frequency; nothing is
  averaged (``max_bandwidth_smearing`` does not apply).
- **Cleaning**: WSClean's hogbom-like clean to ``niter`` iterations; with
  ``threshold_jy = 0`` it cleans everywhere down to ``threshold_sigma`` times
  the noise it measures on the residual (``-auto-mask``), then only where it
  found components down to ``MASKED_CLEAN_SIGMA`` times the noise, measured
  again each major cycle (``-auto-threshold``); else down to ``threshold_jy``.
  Major cycles at ``wsclean_mgain``.
- **Products**: WSClean's image and residual become ``image.fits`` and
  ``residual.fits`` with the headers of :func:`imaging.complete_header`; pb and
  image.pbcor are computed exactly as for tclean
  (:func:`imaging.write_primary_beam_products`). WSClean's output goes to
  ``{block_id}.wsclean.log`` beside the products. The image is not masked
  outside ``pb_limit`` (tclean's is); image.pbcor is, in both.

WSClean runs as a child process (argument list, no shell); a non-zero exit
becomes :class:`TransientError` (disk full, out of memory) or
:class:`PermanentError` naming the block and the log.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import imaging, primary_beam
from .config import ImagingConfig
from .external import available_cores
from .errors import ContimgError, PermanentError, TransientError
from .products import BlockProducts, is_disk_error, remove_path, temporary_name

log = logging.getLogger(__name__)

EXECUTABLE = "wsclean"
OUTPUT_KINDS = {"image": "image", "residual": "residual"}
"""Our product kind -> WSClean's file suffix (``{name}-{suffix}.fits``)."""
_MEMORY_TEXT = ("bad_alloc", "out of memory", "cannot allocate memory")
_ITERATIONS_RE = re.compile(r"Performed (\d+) iterations in total")
_STOP_RE = re.compile(r"^\s*(Stopped on peak.*)$", re.MULTILINE)
MASKED_CLEAN_SIGMA = 1.0
"""Inside the auto-mask, clean down to this many times the noise (re-measured each major cycle)."""


def wsclean_command(
    ms_paths: list[Path], name: Path, settings: ImagingConfig, *, cell_arcsec: float, imsize: int,
    data_column: str, temp_dir: Path, threads: int, executable: str = EXECUTABLE,
    baseline_averaging: float = 0.0,
) -> list[str]:
    """The WSClean argument list of a block image (deterministic; no WSClean needed).

    Parameters
    ----------
    ms_paths : list of Path
        The MSs imaged together, in the order given.
    name : Path
        Output prefix; WSClean writes ``{name}-image.fits``, ``{name}-residual.fits``...
    settings : ImagingConfig
        weighting, robust, niter, threshold_jy / threshold_sigma, wsclean_mgain, wgridder_accuracy.
    cell_arcsec, imsize : float, int
        Pixel size and image side.
    data_column : str
        ``DATA`` or ``CORRECTED_DATA``.
    temp_dir : Path
        Where WSClean writes its reordered data (private to the run).
    threads : int
        ``-j``: the cores to grid and clean on.
    baseline_averaging : float
        ``-baseline-averaging`` in wavelengths (:func:`imaging.baseline_averaging_wavelengths`); 0: none.
    """
    cmd = [
        executable,
        "-name", str(name),
        "-size", str(imsize), str(imsize),
        "-scale", f"{cell_arcsec}asec",
        "-pol", "I",
        "-data-column", data_column,
        "-weight", settings.weighting,
    ]
    if settings.weighting == "briggs":
        cmd.append(f"{settings.robust}")
    cmd += [
        "-use-wgridder",
        "-wgridder-accuracy", f"{settings.wgridder_accuracy:g}",
        "-j", str(threads),
        "-niter", str(settings.niter),
        "-mgain", f"{settings.wsclean_mgain}",
    ]
    if baseline_averaging > 0:
        cmd += ["-baseline-averaging", f"{baseline_averaging:.4g}"]
    if settings.threshold_jy > 0:
        cmd += ["-threshold", f"{settings.threshold_jy}"]
    else:
        # Like tclean's nsigma, which re-measures the noise at every major cycle: clean
        # everywhere to threshold_sigma x the noise, then only where components were
        # found, deeper, re-measuring. -auto-threshold alone stops after one minor cycle
        # while sidelobes still dominate the first noise estimate (a sparse array's
        # bright source came out 30 % low).
        cmd += ["-auto-mask", f"{settings.threshold_sigma}",
                "-auto-threshold", f"{min(MASKED_CLEAN_SIGMA, settings.threshold_sigma / 2)}"]
    cmd += [
        "-temp-dir", str(temp_dir),
        "-no-update-model-required",  # the subband MSs stay as they are (no MODEL_DATA written)
        "-no-dirty",
    ]
    return cmd + [str(p) for p in ms_paths]


def failure(returncode: int, output: str, *, block_id: str, log_path: Path) -> ContimgError:
    """The pipeline error for a WSClean run that exited with ``returncode`` (pure).

    Disk full or out of memory (also a SIGKILL, the kernel's OOM killer) may
    pass on a retry: :class:`TransientError`. Anything else is a fact about the
    data or the settings: :class:`PermanentError`.
    """
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"error|exception|abort|what\(\)", ln, re.IGNORECASE)]
    last = (errors or lines or ["no output"])[-1][:200]
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit {returncode}"
    text = output.lower()
    if is_disk_error(RuntimeError(text)):
        return TransientError(f"block {block_id}: wsclean failed ({how}: {last}); free space in "
                              f"{log_path.parent} (its log: {log_path})")
    if any(s in text for s in _MEMORY_TEXT) or returncode == -signal.SIGKILL:
        return TransientError(f"block {block_id}: wsclean ran out of memory ({how}: {last}); retry on a less "
                              f"loaded node or lower imaging.max_imsize (its log: {log_path})")
    return PermanentError(f"block {block_id}: wsclean failed ({how}: {last}); read {log_path} and check the "
                          f"subband MSs and the [imaging] settings")


def run(cmd: list[str], log_path: Path, *, block_id: str) -> str:
    """Run WSClean, its output (stdout and stderr) into ``log_path``; return the output.

    The log is written under a temporary name and renamed into place when
    WSClean ends, whether it succeeded or not. The child is killed if this
    process is interrupted (a task's time limit), so no WSClean outlives it.
    """
    tmp = temporary_name(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            os.replace(tmp, log_path)  # what it did until then
            raise
    os.replace(tmp, log_path)
    output = log_path.read_text(errors="replace")
    if returncode != 0:
        raise failure(returncode, output, block_id=block_id, log_path=log_path)
    return output


def clean_summary(output: str) -> tuple[int, str]:
    """(iterations, stop reason) from WSClean's output; (-1, "") when it does not say."""
    counts = [int(n) for n in _ITERATIONS_RE.findall(output)]
    stops = _STOP_RE.findall(output)
    return (counts[-1] if counts else -1), (stops[-1].strip() if stops else "")


def image_block(
    ms_paths: list[str | os.PathLike],
    products: BlockProducts,
    settings: ImagingConfig,
    *,
    block_id: str,
    extra_header: dict | None = None,
) -> imaging.ImageResult:
    """Make, export and measure the Stokes I image of a block from its subband MSs with WSClean.

    Parameters, result and errors as :func:`imaging.image_block`; ``ms_paths``
    are the block's subband MSs (in any order), or one MS.

    Raises
    ------
    PermanentError
        No MS, a missing MS, MSs with different phase centres, some MSs
        calibrated and others not, WSClean missing or failing on the data.
    TransientError
        Lack of space or memory.
    """
    t0 = time.perf_counter()
    if block_id != products.block_id:
        raise ValueError(f"block id {block_id!r} differs from the products' {products.block_id!r}")
    paths = [Path(p) for p in ms_paths]
    if not paths:
        raise PermanentError(f"block {block_id}: no MS to image; convert the block's subbands first")
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise PermanentError(f"block {block_id}: MS {', '.join(missing)} does not exist; convert those subbands again")
    exe = shutil.which(EXECUTABLE)
    if exe is None:
        raise PermanentError(f"block {block_id}: wsclean is not installed on this node; install it "
                             "(apt-get install wsclean) or set imaging.backend = 'tclean'")
    products.directory.mkdir(parents=True, exist_ok=True)

    paths = sorted(paths, key=imaging._min_frequency)
    imaging._require_one_phase_center(paths, f"block {block_id}: cannot image the subband MSs together")
    parts = [imaging.summarize_ms(p) for p in paths]
    calibrated = [p.name for p, s in zip(paths, parts) if s.has_corrected]
    if calibrated and len(calibrated) != len(paths):
        bare = [p.name for p, s in zip(paths, parts) if not s.has_corrected]
        raise PermanentError(f"block {block_id}: {', '.join(bare)} have no CORRECTED_DATA while the other subbands "
                             "have; apply the caltables to every subband (or to none) and image again")
    summary = imaging.combine_summaries(parts)
    cell, imsize = imaging.image_geometry(summary, settings)
    imaging._check_free_space(products.directory, imsize, block_id)
    seconds: dict[str, float] = {}
    log_path = products.imaging_log("wsclean")
    with imaging.private_workdir(products) as workdir:  # the same private .{block_id}.partial/ directory
        t = time.perf_counter()
        beam_inputs = primary_beam.read_block_beam_inputs(paths)
        seconds["vp"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        bda = imaging.baseline_averaging_wavelengths(imaging.image_edge_radius_rad(cell, imsize),
                                                     settings.max_time_smearing)
        cmd = wsclean_command(
            paths, workdir / block_id, settings, cell_arcsec=cell, imsize=imsize,
            data_column="CORRECTED_DATA" if summary.has_corrected else "DATA", temp_dir=workdir,
            threads=available_cores(), executable=exe, baseline_averaging=bda,
        )
        log.info("block %s: wsclean cell %.3g arcsec, imsize %d, %d MSs, baseline averaging %.3g wavelengths",
                 block_id, cell, imsize, len(paths), bda)
        output = run(cmd, log_path, block_id=block_id)
        seconds["wsclean"] = round(time.perf_counter() - t, 3)
        fits_paths = imaging.finish_products(
            lambda header: export_products(workdir, products, header),
            products, summary, settings, beam_inputs, extra_header, seconds)
    stats = imaging.measure_products(fits_paths, block_id, seconds, t0)
    iterations, stop = clean_summary(output)
    return imaging.ImageResult(
        block_id=block_id,
        ms_path="",
        fits={k: str(v) for k, v in fits_paths.items()},
        cell_arcsec=cell,
        imsize=imsize,
        iterations=iterations,
        stop_reason=stop,
        seconds=seconds,
        primary_beam=settings.primary_beam,
        channel_average=1,
        bandwidth_hz=summary.bandwidth_hz,
        backend="wsclean",
        ms_paths=[str(p) for p in paths],
        **stats,
    )


def export_products(workdir: Path, products: BlockProducts, extra_header: dict) -> dict[str, Path]:
    """Move WSClean's image and residual into place as products, headers completed, atomically."""
    from astropy.io import fits

    block_id = products.block_id
    image = workdir / f"{block_id}-{OUTPUT_KINDS['image']}.fits"
    if not image.is_file():
        raise RuntimeError(f"block {block_id}: wsclean made no {image.name}; read {products.imaging_log('wsclean')}")
    h = fits.getheader(image)
    if "BMAJ" not in h:
        raise RuntimeError(f"block {block_id}: {image.name} has no restoring beam; the clean failed")
    beam = (float(h["BMAJ"]), float(h["BMIN"]), float(h["BPA"]))
    out: dict[str, Path] = {}
    for kind, suffix in OUTPUT_KINDS.items():
        src = workdir / f"{block_id}-{suffix}.fits"
        if not src.is_file():
            raise RuntimeError(f"block {block_id}: wsclean made no {src.name}; read {products.imaging_log('wsclean')}")
        final = products.fits(kind)
        tmp = temporary_name(final)
        remove_path(tmp)
        try:
            os.replace(src, tmp)  # same directory tree, same file system
            with fits.open(tmp, mode="update") as hdul:
                hdul[0].header["BUNIT"] = "Jy/beam"  # WSClean writes JY/BEAM, not a FITS unit string
            imaging.complete_header(tmp, kind=kind, block_id=block_id, beam=beam, extra=extra_header)
            os.replace(tmp, final)
        except BaseException:
            remove_path(tmp)
            raise
        out[kind] = final
    return out
