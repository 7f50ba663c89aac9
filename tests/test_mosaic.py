"""contimg.mosaic against synthetic block images of known sky and noise (contimg.images_sim).

The strip: 6 blocks of 256^2 pixels of 60 arcsec at dec 54.6, phase centres
309 s of sidereal time apart (1.29 deg of RA: each sky point is seen by 3-4
blocks), a Gaussian primary beam of FWHM 2.7 deg, a 4.8' x 4.0' restoring beam
at PA 30 deg, and block noises of 1, 2, 1, 3, 1.5, 1 mJy/beam (correlated over
the beam, as in an interferometric image).

Tolerances:
- noiseless sources: mosaic flux (beam fit) within 0.5 % of the truth (bicubic, SIN;
  1 % for CAR, measured 0.6 %; 4 % for bilinear and nearest);
- noisy sources at mosaic SNR >= 100: within 2 %, median within 0.5 %;
- noise map vs measured rms in source-free mosaics: within 15 % overall and
  in each third of the noise range;
- per-pixel weighting: measured rms at least 10 % below equal weighting.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from contimg import images_sim as sim
from contimg import mosaic, photometry, products
from contimg.errors import PermanentError

SIGMAS = [1e-3, 2e-3, 1e-3, 3e-3, 1.5e-3, 1e-3]
SPEC = sim.StripSpec(n_blocks=6, sigmas_jy=SIGMAS)
BEAM_PIX = SPEC.beam_deg[0] / (SPEC.cell_arcsec / 3600)
FIRST, LAST = SPEC.block_id(0), SPEC.block_id(SPEC.n_blocks - 1)


def bright_sources(n=30, flux=0.3, seed=1):
    rng = np.random.default_rng(seed)
    ra, dec = sim.random_positions(SPEC, n, rng, min_separation_deg=3 * SPEC.beam_deg[0])
    return ra, dec, np.full(n, flux)


def in_memory_blocks(ra=(), dec=(), flux=(), *, noise=True, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(SPEC.n_blocks):
        img, pb, h = sim.synth_block(SPEC, i, ra, dec, flux, rng=rng, noise=noise)
        out.append(mosaic.BlockImage(h["BLOCKID"], img, pb, WCS(h).celestial, SPEC.sigma(i), SPEC.freq_hz,
                                     SPEC.beam_deg, h["DATE-OBS"], h))
    return out


def beam_fit_fluxes(m: mosaic.Mosaic, ra, dec):
    """Point-source fluxes: the header beam fitted at each position (contimg.photometry)."""
    cell = abs(m.grid.wcs.wcs.cdelt[1])
    img = photometry.Image(m.image.astype(float), m.grid.wcs, m.beam_deg[0] / cell, m.beam_deg[1] / cell,
                           math.radians(m.beam_deg[2]), "")
    return np.array([photometry.measure_point(img, a, d).flux for a, d in zip(ra, dec)])


@pytest.fixture(scope="module")
def noisy_strip(tmp_path_factory):
    """Block FITS of the strip with 30 bright (0.3 Jy) sources, and the mosaic made from them."""
    d = tmp_path_factory.mktemp("strip")
    ra, dec, flux = bright_sources()
    paths = sim.write_strip(SPEC, d / "blocks", ra, dec, flux, seed=2)
    out = products.mosaic_products(d / "products", products.mosaic_id(SPEC.dec_deg, FIRST, LAST))
    result = mosaic.make_mosaic(list(reversed(paths)), out)  # any order
    return dict(paths=paths, out=out, result=result, ra=ra, dec=dec, flux=flux)


@pytest.fixture(scope="module")
def noise_only():
    return in_memory_blocks(noise=True, seed=5)


# -- (a) flux ----------------------------------------------------------------------


@pytest.mark.parametrize("interpolation, tol", [("bicubic", 0.005), ("bilinear", 0.04), ("nearest", 0.04)])
def test_noiseless_flux_is_kept(interpolation, tol):
    ra, dec, flux = bright_sources(flux=1.0)
    m = mosaic.combine(in_memory_blocks(ra, dec, flux, noise=False),
                       settings=mosaic.MosaicSettings(interpolation=interpolation))
    ratio = beam_fit_fluxes(m, ra, dec) / flux
    assert np.isfinite(ratio).all()
    assert np.abs(ratio - 1).max() < tol, (interpolation, ratio.min(), ratio.max())


def test_noiseless_flux_car_projection():
    """CAR pixels are square only at the strip's mean declination, so off it the beam in pixels is not
    the header's: a free Gaussian fit (contimg.sourcefind) still gives the peak (Jy/beam) = flux."""
    from contimg import sourcefind

    ra, dec, flux = bright_sources(flux=1.0)
    m = mosaic.combine(in_memory_blocks(ra, dec, flux, noise=False), settings=mosaic.MosaicSettings(projection="CAR"))
    assert m.grid.wcs.wcs.ctype[0] == "RA---CAR"
    cat = sourcefind.find_sources(m.image, m.grid.wcs, m.beam_deg, noise=1e-4)
    assert len(cat) == len(ra)
    assert np.abs(np.asarray(cat["peak_flux"]) - 1).max() < 0.01  # measured 0.6 %


def test_noisy_flux_within_two_percent(noisy_strip):
    out = noisy_strip["out"]
    m_img = photometry.load_image(out.image_fits)
    noise = fits.getdata(out.noise_fits)[0, 0]
    fluxes, snrs = [], []
    for a, d in zip(noisy_strip["ra"], noisy_strip["dec"]):
        p = photometry.measure_point(m_img, a, d)
        x, y = m_img.wcs.world_to_pixel_values(a, d)
        fluxes.append(p.flux)
        snrs.append(0.3 / noise[int(round(float(y))), int(round(float(x)))])
    ratio, snrs = np.array(fluxes) / 0.3, np.array(snrs)
    use = snrs >= 100
    assert use.sum() >= 20
    assert np.abs(ratio[use] - 1).max() < 0.02
    assert abs(np.median(ratio[use]) - 1) < 0.005


def test_identity_grid_returns_the_block():
    """One block onto its own grid: the map is exact and bicubic at integer pixels is the sample."""
    b = in_memory_blocks(noise=True, seed=3)[0]
    grid = mosaic.Grid(b.wcs, b.image.shape)
    m = mosaic.combine([b], grid)
    ok = np.isfinite(m.image)
    expect = b.image / b.pb
    assert ok.sum() > 0.5 * (b.pb >= 0.2).sum()
    np.testing.assert_allclose(m.image[ok], expect[ok], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(m.noise[ok], (b.sigma_jy / b.pb)[ok], rtol=1e-5)
    assert np.all(b.pb[ok] >= 0.2)


def test_pixel_map_matches_exact_transform():
    blocks = in_memory_blocks(noise=False)
    grid = mosaic.auto_grid(blocks)
    x, y = mosaic.pixel_map(grid.wcs, blocks[0].wcs, 0, grid.shape[0], 0, grid.shape[1])
    ex, ey = mosaic._exact_map(grid.wcs, blocks[0].wcs, np.arange(grid.shape[0]), np.arange(grid.shape[1]))
    assert np.nanmax(np.hypot(x - ex, y - ey)) < mosaic.MAX_MAP_ERROR_PIX * 1.5


# -- (b) noise map and (c) weighting ---------------------------------------------------


def test_noise_map_matches_measured_rms(noise_only):
    m = mosaic.combine(noise_only)
    ok = np.isfinite(m.image)
    z = m.image[ok] / m.noise[ok]
    assert abs(np.std(z) - 1) < 0.15
    edges = np.quantile(m.noise[ok], [0, 1 / 3, 2 / 3, 1])
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (m.noise[ok] >= lo) & (m.noise[ok] <= hi)
        measured = np.std(m.image[ok][sel])
        predicted = np.sqrt(np.mean(m.noise[ok][sel] ** 2))
        assert abs(measured / predicted - 1) < 0.15, (lo, hi, measured, predicted)


def test_per_pixel_weighting_beats_equal_weighting(noise_only):
    w = mosaic.combine(noise_only)
    e = mosaic.combine(noise_only, settings=mosaic.MosaicSettings(weighting="equal"))
    ok = np.isfinite(w.image) & np.isfinite(e.image)
    rms_w, rms_e = np.std(w.image[ok]), np.std(e.image[ok])
    assert rms_w < 0.9 * rms_e, (rms_w, rms_e)
    # Pixel by pixel, the predicted noise of per-pixel weighting is never worse.
    assert np.all(w.noise[ok] <= e.noise[ok] * (1 + 1e-5))
    # The equal-weight noise map is right too (within 15 %).
    assert abs(np.std(e.image[ok] / e.noise[ok]) - 1) < 0.15


def test_block_noise_measured_from_the_image(noisy_strip):
    blocks = [mosaic.read_block(*p) for p in noisy_strip["paths"]]
    for b, s in zip(blocks, SIGMAS):
        assert abs(b.sigma_jy / s - 1) < 0.05  # MAD rms despite the sources
    b = mosaic.read_block(*noisy_strip["paths"][0], sigma_jy=0.5)
    assert b.sigma_jy == 0.5


# -- products, headers, (e) quicklook ----------------------------------------------------


def test_products_and_headers(noisy_strip):
    out, result = noisy_strip["out"], noisy_strip["result"]
    assert result.n_blocks == 6 and result.block_ids == [SPEC.block_id(i) for i in range(6)]
    assert result.projection == "SIN"
    assert abs(result.cell_arcsec - SPEC.cell_arcsec) < 1e-6
    h = fits.getheader(out.image_fits)
    assert h["NAXIS"] == 4 and h["CTYPE4"] == "FREQ" and h["CRVAL4"] == SPEC.freq_hz
    assert h["BUNIT"] == "Jy/beam"
    assert (h["BMAJ"], h["BMIN"], h["BPA"]) == pytest.approx(SPEC.beam_deg)
    assert h["DATE-OBS"] == FIRST and h["NBLOCKS"] == 6
    assert [h[f"BLOCK{i:03d}"] for i in range(1, 7)] == result.block_ids
    assert sum("contimg mosaic: block" in str(c) for c in h["HISTORY"]) == 6
    assert h["PBCUT"] == 0.2 and h["WEIGHTNG"] == "pb2/sigma2"
    assert fits.getheader(out.noise_fits)["BUNIT"] == "Jy/beam"
    assert fits.getheader(out.weight_fits)["BUNIT"] == "beam2/Jy2"
    img, noise, weight = (fits.getdata(out.fits(k))[0, 0] for k in products.MOSAIC_KINDS)
    ok = np.isfinite(img)
    assert (np.isfinite(noise) == ok).all()
    np.testing.assert_allclose(noise[ok], 1 / np.sqrt(weight[ok]), rtol=1e-5)
    assert not list(out.directory.glob(".*partial"))


def test_quicklook_png_written(noisy_strip):
    png = noisy_strip["out"].quicklook_png
    assert noisy_strip["result"].paths["png"] == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_quicklook_downsamples_large_images(tmp_path):
    blocks = in_memory_blocks(noise=True, seed=4)[:2]
    m = mosaic.combine(blocks)
    path = mosaic.quicklook(m.image, m.grid.wcs, tmp_path / "q.png", noise=m.noise, max_side=100)
    assert path.stat().st_size > 5_000


def test_mosaic_names():
    mid = products.mosaic_id(54.6, FIRST, LAST)
    assert mid == f"dec+54.60_{FIRST}_{LAST}"
    assert products.parse_mosaic_id(mid) == (54.6, FIRST, LAST)
    assert products.parse_mosaic_id("dec54.6_x") is None
    mp = products.mosaic_products("/p", mid)
    assert mp.directory.as_posix() == f"/p/mosaics/2025-10-05/{mid}"
    assert mp.noise_fits.name == f"{mid}.noise.fits" and mp.catalogue("votable").name == f"{mid}.sources.vot"
    with pytest.raises(ValueError, match="not one of"):
        mp.fits("residual")


# -- (f) bad input -------------------------------------------------------------------------


def test_missing_fits_is_named(noisy_strip, tmp_path):
    paths = list(noisy_strip["paths"])
    gone = tmp_path / "2025-10-05T03:00:00.image.fits"
    paths[2] = (gone, paths[2][1])
    with pytest.raises(PermanentError) as e:
        mosaic.make_mosaic(paths, products.mosaic_products(tmp_path, products.mosaic_id(54.6, FIRST, LAST)))
    msg = str(e.value)
    assert str(gone) in msg and "\n" not in msg and "does not exist" in msg


def test_inconsistent_frequency_is_named(noisy_strip, tmp_path):
    import shutil

    paths = list(noisy_strip["paths"])
    odd = tmp_path / paths[3][0].name
    shutil.copy(paths[3][0], odd)
    with fits.open(odd, mode="update") as hdul:
        hdul[0].header["CRVAL4"] = 1.30e9
    paths[3] = (odd, paths[3][1])
    out = products.mosaic_products(tmp_path, products.mosaic_id(54.6, FIRST, LAST))
    with pytest.raises(PermanentError) as e:
        mosaic.make_mosaic(paths, out)
    msg = str(e.value)
    assert str(odd) in msg and "frequency" in msg and "\n" not in msg
    assert not out.directory.exists() or not any(out.directory.iterdir())


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="pb_cutoff"):
        mosaic.MosaicSettings(pb_cutoff=0)
    with pytest.raises(ValueError, match="interpolation 'cubic'"):
        mosaic.MosaicSettings(interpolation="cubic")
    with pytest.raises(PermanentError, match="no block image"):
        mosaic.combine([])
