"""Speed of mosaicking a strip of realistic block images, and of the source finder on the result.

Writes N_BLOCKS synthetic blocks of NPIX^2 pixels (contimg.images_sim: dec 54.6,
phase centres 309 s of sidereal time apart, cell 7.2 arcsec so the image
reaches the pb = 0.2 contour, a 29" x 24" beam, 200 sources per block) as
image and pb FITS into a temporary directory, then times
:func:`contimg.mosaic.make_mosaic` (read, reproject, combine, write FITS and
PNG) and compares it with two baselines measured in the same run:

- the same code with equal weights (the per-pixel weights' cost);
- a naive per-pixel Python loop (astropy WCS per pixel, bilinear by hand) on
  N_NAIVE output pixels, extrapolated to the whole grid.

    .venv/bin/python bench/mosaic.py [N_BLOCKS NPIX]

Last line: ``ms_per_block=...`` (make_mosaic from FITS, per block).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from contimg import images_sim as sim
from contimg import mosaic, products, sourcefind

N_BLOCKS = int(sys.argv[1]) if len(sys.argv) > 1 else 12
NPIX = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
N_NAIVE = 2000
SOURCES_PER_BLOCK = 200


def naive_pixel(blocks, grid, iy, ix, cutoff):
    """One output pixel the straightforward way: per block, WCS per pixel and bilinear by hand."""
    ra, dec = grid.wcs.pixel_to_world_values(ix, iy)
    sw = swv = 0.0
    for b in blocks:
        x, y = b.wcs.world_to_pixel_values(ra, dec)
        j, i = int(math.floor(x)), int(math.floor(y))
        if not (0 <= i < b.image.shape[0] - 1 and 0 <= j < b.image.shape[1] - 1):
            continue
        tx, ty = x - j, y - i
        val = pbv = 0.0
        for di, dj, wgt in ((0, 0, (1 - ty) * (1 - tx)), (0, 1, (1 - ty) * tx), (1, 0, ty * (1 - tx)), (1, 1, ty * tx)):
            val += wgt * b.image[i + di, j + dj]
            pbv += wgt * b.pb[i + di, j + dj]
        if pbv < cutoff:
            continue
        w = pbv * pbv / b.sigma_jy**2
        sw += w
        swv += w * val / pbv
    return swv / sw if sw else math.nan


def main():
    spec = sim.StripSpec(n_blocks=N_BLOCKS, npix=NPIX, cell_arcsec=7.2 * 2048 / NPIX,
                         beam_deg=(28.8 / 3600, 24.0 / 3600, 30.0),
                         sigmas_jy=[1e-3, 1.5e-3, 1e-3, 2e-3])
    rng = np.random.default_rng(1)
    ra, dec = sim.random_positions(spec, SOURCES_PER_BLOCK * N_BLOCKS, rng)
    flux = np.exp(rng.uniform(math.log(3e-3), math.log(0.3), ra.size))
    with tempfile.TemporaryDirectory(prefix="contimg-bench-mosaic-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = sim.write_strip(spec, tmp / "blocks", ra, dec, flux, seed=2)
        print(f"synthesise and write {N_BLOCKS} blocks of {NPIX}^2: {time.perf_counter() - t0:.1f} s "
              f"({sum(p.stat().st_size for pair in paths for p in pair) / 1e6:.0f} MB of FITS)")

        out = products.mosaic_products(tmp / "products", products.mosaic_id(spec.dec_deg, spec.block_id(0),
                                                                             spec.block_id(N_BLOCKS - 1)))
        t0 = time.perf_counter()
        result = mosaic.make_mosaic(paths, out)
        t_mosaic = time.perf_counter() - t0
        ny, nx = result.shape
        print(f"make_mosaic: {t_mosaic:.1f} s for a {ny} x {nx} grid ({ny * nx / 1e6:.1f} Mpix, "
              f"covered {result.covered_fraction:.0%}); steps {result.seconds}")

        blocks = [mosaic.read_block(*p) for p in paths]
        grid = mosaic.auto_grid(blocks)
        t0 = time.perf_counter()
        mosaic.combine(blocks, grid)
        t_comb = time.perf_counter() - t0
        t0 = time.perf_counter()
        mosaic.combine(blocks, grid, mosaic.MosaicSettings(weighting="equal"))
        t_equal = time.perf_counter() - t0
        print(f"combine in memory: per-pixel weights {t_comb:.1f} s, equal weights {t_equal:.1f} s")

        pick = np.random.default_rng(3)
        iy = pick.integers(0, ny, N_NAIVE)
        ix = pick.integers(0, nx, N_NAIVE)
        t0 = time.perf_counter()
        for a, b in zip(iy, ix):
            naive_pixel(blocks, grid, int(a), int(b), 0.2)
        t_naive = (time.perf_counter() - t0) / N_NAIVE * ny * nx
        print(f"naive per-pixel loop: {N_NAIVE} pixels, extrapolated to the grid: {t_naive:.0f} s "
              f"(speedup of combine {t_naive / t_comb:.0f}x)")

        t0 = time.perf_counter()
        cat = sourcefind.find_sources_fits(out.image_fits, out.noise_fits)
        t_find = time.perf_counter() - t0
        print(f"find_sources on the mosaic: {len(cat)} sources in {t_find:.1f} s "
              f"({1e3 * t_find / max(len(cat), 1):.1f} ms per source; {ra.size} injected, many below 5 sigma)")
    print(f"ms_per_block={1e3 * t_mosaic / N_BLOCKS:.0f}")


if __name__ == "__main__":
    main()
