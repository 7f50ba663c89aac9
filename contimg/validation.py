"""Measure block images against the truth of a simulated night.

Used by ``tests/test_accuracy.py`` and ``bench/accuracy.py``. The chain is
the pipeline's, as plain functions (no Celery): group the files
(:func:`blocks.discover`), convert every subband with the block's mid-time,
concatenate (tclean only; WSClean images the subband MSs), optionally
calibrate (``calibrate(ms) -> None`` on each MS imaged, a hook that writes
CORRECTED_DATA, which :func:`imaging.image_block` then images),
image, then measure each truth source with :func:`photometry.measure_point`.

Accuracy figures (:func:`summarize`):

- flux: ``S_measured / S_true`` on the primary-beam corrected image, with
  ``S_true = flux_jy_per_block[block] * (nu_ref / 1.4 GHz) ** alpha`` at the
  image reference frequency;
- position: fitted-position offset from the truth in units of the restoring
  beam's major axis;
- noise: the image rms over the radiometer expectation
  (:func:`noise.expected_image_rms`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import blocks, convert, imaging, noise, photometry, phasing
from .config import ImagingConfig
from .products import BlockProducts

REFERENCE_FREQ_HZ = 1.4e9


@dataclass
class BlockRun:
    """One processed block: its products and what the chain reported."""

    block_id: str
    block_index: int
    mid_jd: float
    image: imaging.ImageResult
    converts: list[convert.ConvertResult]
    noise: noise.NoiseExpectation
    seconds: dict[str, float] = field(default_factory=dict)


def bright_sources_near_meridian(
    scenario_start_jd: float, dec_deg: float, offsets_deg: list[tuple[float, float]], fluxes_jy: list[float],
    *, prefix: str = "BRT",
) -> list[dict]:
    """Source dicts (for ``sky.Source(**d)``) at (east, north) offsets from a block's mid-time meridian.

    ``scenario_start_jd`` is the mid-time of the block (its meridian point is
    the phase centre of its image).
    """
    ra0, dec0 = phasing.meridian_icrs(scenario_start_jd, math.radians(dec_deg))
    out = []
    for i, ((east, north), flux) in enumerate(zip(offsets_deg, fluxes_jy)):
        dec = dec0 + math.radians(north)
        ra = ra0 + math.radians(east) / math.cos(dec)
        out.append(dict(name=f"{prefix}{i:02d}", ra_deg=math.degrees(ra) % 360, dec_deg=math.degrees(dec),
                        flux_jy=flux, spectral_index=-0.7))
    return out


def process_block(
    data_dir: Path, block_id: str, work_dir: Path, settings: ImagingConfig,
    calibrate: Callable[[Path], None] | None = None,
) -> BlockRun:
    """Convert, concatenate (tclean), (calibrate,) image one block and compute its noise expectation."""
    t0 = time.perf_counter()
    block = blocks.discover(data_dir).block(block_id)
    scratch = work_dir / "scratch" / block_id
    results = [
        convert.convert_subband(f.path, scratch / f"{block_id}_sb{sb:02d}.ms", block_mid_jd=block.mid_jd)
        for sb, f in sorted(block.files.items())
    ]
    t_convert = time.perf_counter()
    products = BlockProducts(work_dir / "products", block_id)
    subband_mss = [Path(r.ms_path) for r in results]
    if imaging.needs_concat(settings):
        mss = [imaging.concat_subbands(subband_mss, products.concat_ms)]
    else:  # wsclean images the subband MSs directly
        mss = subband_mss
    t_concat = time.perf_counter()
    if calibrate is not None:
        for ms in mss:
            calibrate(ms)
    image = imaging.image_block(mss, products, settings, block_id=block_id)
    t_image = time.perf_counter()
    expect = noise.expected_image_rms(
        mss, cell_arcsec=image.cell_arcsec, imsize=image.imsize, weighting=settings.weighting, robust=settings.robust
    )
    return BlockRun(
        block_id=block_id, block_index=-1, mid_jd=block.mid_jd, image=image, converts=results, noise=expect,
        seconds={"convert": round(t_convert - t0, 2), "concat": round(t_concat - t_convert, 2),
                 "image": round(t_image - t_concat, 2), "noise": round(time.perf_counter() - t_image, 2)},
    )


def block_index_of(truth: dict, block_id: str) -> int:
    """Index in ``truth['blocks']`` of the block whose earliest subband starts at ``block_id``."""
    for b in truth["blocks"]:
        starts = [s["start"][:19] for s in b["subbands"] if s["status"] != "dropped"]
        if starts and min(starts) == block_id:
            return int(b["index"])
    raise KeyError(f"block {block_id} is not in the truth; simulate and process the same directory")


def measure_sources(run: BlockRun, truth: dict) -> list[dict]:
    """One row per truth source inside the image: truth, measurement, beam radius, S/N."""
    pbcor = photometry.load_image(run.image.fits["image.pbcor"])
    pb = photometry.load_image(run.image.fits["pb"])
    nu = run.image.reffreq_hz
    centre = math.radians(run.image.phase_center_ra_deg), math.radians(run.image.phase_center_dec_deg)
    hpbw_radius = math.degrees(imaging.pb_radius_rad(0.5, nu))
    rows = []
    for src in truth["sources"]:
        s_true = src["flux_jy_per_block"][run.block_index] * (nu / REFERENCE_FREQ_HZ) ** src["spectral_index"]
        m = photometry.measure_point(pbcor, src["ra_deg"], src["dec_deg"])
        if m.flags & photometry.OUTSIDE:
            continue
        x, y = (int(round(float(v))) for v in pb.wcs.world_to_pixel_values(src["ra_deg"], src["dec_deg"]))
        pb_value = float(pb.data[y, x])
        sep = imaging._separation_rad(math.radians(src["ra_deg"]), math.radians(src["dec_deg"]), *centre)
        offset = imaging._separation_rad(math.radians(m.ra_deg), math.radians(m.dec_deg),
                                         math.radians(src["ra_deg"]), math.radians(src["dec_deg"]))
        rows.append(dict(
            name=src["name"], s_true=s_true, s_meas=m.flux, err=m.err, flags=m.flags, pb=pb_value,
            radius_deg=math.degrees(float(sep)), radius_hpbw=math.degrees(float(sep)) / hpbw_radius,
            snr=s_true * pb_value / run.image.rms_jy,
            offset_beam=math.degrees(float(offset)) * 3600 / run.image.beam_major_arcsec,
        ))
    return rows


def summarize(rows: list[dict], runs: list[BlockRun], *, min_snr: float = 50.0) -> dict:
    """The three accuracy figures over sources above ``min_snr`` inside the half-power beam."""
    good = [r for r in rows if r["snr"] >= min_snr and r["pb"] >= 0.5 and not r["flags"] & ~photometry.PEAK_AT_EDGE]
    ratio = np.array([r["s_meas"] / r["s_true"] for r in good])
    offsets = np.array([r["offset_beam"] for r in good])
    noise_ratio = [run.image.rms_jy / run.noise.rms_jy for run in runs]
    natural_ratio = [run.image.rms_jy / run.noise.natural_rms_jy for run in runs]
    return dict(
        n_sources=len(good),
        flux_err_median=float(np.median(np.abs(ratio - 1))) if len(good) else math.nan,
        flux_ratio_median=float(np.median(ratio)) if len(good) else math.nan,
        position_offset_median_beam=float(np.median(offsets)) if len(good) else math.nan,
        noise_ratio_max=float(max(noise_ratio)),
        noise_ratio=noise_ratio,
        noise_ratio_natural_max=float(max(natural_ratio)),
    )


def load_truth(data_dir: Path) -> dict:
    path = Path(data_dir) / "truth.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; simulate the night with contimg.simulate first")
    return json.loads(path.read_text())


def run_night(data_dir: Path, work_dir: Path, settings: ImagingConfig,
              calibrate: Callable[[Path], None] | None = None, max_blocks: int | None = None):
    """Process every (or the first ``max_blocks``) complete block of a simulated night.

    Returns
    -------
    runs : list of BlockRun
    rows : list of dict
        :func:`measure_sources` rows of every block, with ``block`` added.
    """
    truth = load_truth(data_dir)
    found = blocks.discover(data_dir)
    runs, rows = [], []
    for block in found.blocks[:max_blocks]:
        run = process_block(Path(data_dir), block.block_id, Path(work_dir), settings, calibrate)
        run.block_index = block_index_of(truth, block.block_id)
        runs.append(run)
        rows += [dict(r, block=block.block_id) for r in measure_sources(run, truth)]
    return runs, rows


__all__ = ["BlockRun", "process_block", "measure_sources", "summarize", "run_night", "load_truth",
           "bright_sources_near_meridian"]
