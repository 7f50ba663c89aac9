"""contimg.sourcefind against images of known sources and noise (contimg.images_sim).

Sources are placed at least 2 beam majors apart: closer pairs are blended
into one island and, below about one beam, into one component (a resolution
limit, not a finder fault; the test of two sources 1.5 beams apart checks
deblending).

Tolerances:
- completeness >= 95 % for sources of true SNR >= 7, false detections < 2 %;
- positions: median offset < 0.1 beam (SNR >= 7), every offset < 0.1 beam at SNR >= 20;
- errors calibrated: robust std of (measured - true) / error within 0.8-1.25
  (peak flux, RA, Dec) for SNR >= 7;
- bright sources (SNR >= 50): median peak and integrated flux within 1 % and 2 %,
  fitted major axis within 5 % of the beam, PA within 5 deg.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.wcs import WCS

from contimg import images_sim as sim
from contimg import mosaic, products, sourcefind
from contimg.errors import PermanentError

SIGMA = 1e-3
FLAT = sim.StripSpec(n_blocks=1, npix=512, pb_fwhm_deg=1e4, sigmas_jy=[SIGMA])  # flat pb: a plain image
BEAM_DEG = FLAT.beam_deg[0]
BEAM_PIX = BEAM_DEG / (FLAT.cell_arcsec / 3600)


def match(cat, ra, dec, radius_beams=0.5):
    """Index of the true source nearest each detection and whether it lies within ``radius_beams``."""
    c1 = SkyCoord(np.asarray(cat["ra"]) * u.deg, np.asarray(cat["dec"]) * u.deg)
    c0 = SkyCoord(ra * u.deg, dec * u.deg)
    idx, sep, _ = c1.match_to_catalog_sky(c0)
    return idx, sep.deg / BEAM_DEG, sep.deg < radius_beams * BEAM_DEG


def scored(cat, ra, dec, snr_true):
    """Completeness at SNR >= 7, false fraction, offsets (beams) of the matched detections."""
    idx, off, good = match(cat, ra, dec)
    found = np.zeros(len(ra), bool)
    found[idx[good]] = True
    complete = found[snr_true >= 7].mean()
    false = (~good).sum() / max(len(cat), 1)
    return idx, off, good, complete, false


def robust_std(x):
    x = np.asarray(x, float)
    return 1.4826 * np.median(np.abs(x - np.median(x)))


@pytest.fixture(scope="module")
def flat_field():
    rng = np.random.default_rng(11)
    h = sim.block_header(FLAT, 0)
    w = WCS(h).celestial
    n = 220
    # Uniform in pixels, 2 beams apart, 15 px from the edges.
    xy = []
    while len(xy) < n:
        p = rng.uniform(15, FLAT.npix - 16, 2)
        if all(np.hypot(*(p - q)) >= 2 * BEAM_PIX for q in xy):
            xy.append(p)
    xy = np.array(xy)
    ra, dec = w.wcs_pix2world(xy[:, 0], xy[:, 1], 0)
    flux = SIGMA * np.exp(rng.uniform(np.log(3), np.log(300), n))
    img, _, _ = sim.synth_block(FLAT, 0, ra, dec, flux, rng=rng)
    cat = sourcefind.find_sources(img, w, FLAT.beam_deg, SIGMA)
    return dict(cat=cat, ra=ra, dec=dec, flux=flux, image=img, wcs=w)


def test_flat_image_completeness_and_purity(flat_field):
    f = flat_field
    idx, off, good, complete, false = scored(f["cat"], f["ra"], f["dec"], f["flux"] / SIGMA)
    assert complete >= 0.95, complete
    assert false < 0.02, false
    snr = f["flux"][idx] / SIGMA
    assert np.median(off[good & (snr >= 7)]) < 0.1
    assert off[good & (snr >= 20)].max() < 0.1


def test_flat_image_errors_are_calibrated(flat_field):
    f = flat_field
    cat = f["cat"]
    idx, _, good, _, _ = scored(cat, f["ra"], f["dec"], f["flux"] / SIGMA)
    use = good & (f["flux"][idx] / SIGMA >= 7)
    t_ra, t_dec, t_flux = f["ra"][idx][use], f["dec"][idx][use], f["flux"][idx][use]
    c = cat[use]
    pulls = {
        "peak": (np.asarray(c["peak_flux"]) - t_flux) / np.asarray(c["peak_flux_err"]),
        "ra": (np.asarray(c["ra"]) - t_ra) * np.cos(np.radians(t_dec)) * 3600 / np.asarray(c["ra_err"]),
        "dec": (np.asarray(c["dec"]) - t_dec) * 3600 / np.asarray(c["dec_err"]),
    }
    for name, p in pulls.items():
        assert 0.8 < robust_std(p) < 1.25, (name, robust_std(p))
        assert abs(np.median(p)) < 0.3, (name, np.median(p))


def test_flat_image_bright_sources(flat_field):
    f = flat_field
    cat = f["cat"]
    idx, _, good, _, _ = scored(cat, f["ra"], f["dec"], f["flux"] / SIGMA)
    b = good & (f["flux"][idx] / SIGMA >= 50)
    assert b.sum() >= 30
    t = f["flux"][idx][b]
    assert abs(np.median(np.asarray(cat["peak_flux"][b]) / t) - 1) < 0.01
    assert abs(np.median(np.asarray(cat["int_flux"][b]) / t) - 1) < 0.02
    assert abs(np.median(np.asarray(cat["maj"][b])) / (BEAM_DEG * 3600) - 1) < 0.05
    assert abs(np.median(np.asarray(cat["pa"][b])) - FLAT.beam_deg[2]) < 5
    assert np.all(np.asarray(cat["local_rms"]) == SIGMA)
    np.testing.assert_allclose(cat["snr"], cat["peak_flux"] / cat["local_rms"])


def test_noise_only_image_has_no_detections():
    rng = np.random.default_rng(2)
    img, _, h = sim.synth_block(FLAT, 0, rng=rng)
    cat = sourcefind.find_sources(img, WCS(h).celestial, FLAT.beam_deg, SIGMA)
    assert len(cat) <= 1  # ~10^4 beams: expected false 5-sigma peaks ~ 0.003


def test_noise_map_is_used():
    """Right half four times noisier: the noise map keeps its noise peaks out; a flat sigma does not."""
    rng = np.random.default_rng(4)
    small = sim.StripSpec(n_blocks=1, npix=192, pb_fwhm_deg=1e4, sigmas_jy=[SIGMA])
    img, _, h = sim.synth_block(small, 0, rng=rng)
    noise = np.full(img.shape, SIGMA)
    noise[:, 96:] *= 4
    img = np.where(noise > SIGMA, img * 4, img)
    w = WCS(h).celestial
    with_map = sourcefind.find_sources(img, w, FLAT.beam_deg, noise)
    flat = sourcefind.find_sources(img, w, FLAT.beam_deg, SIGMA)
    assert len(with_map) <= 1
    assert len(flat) >= 5


def test_two_blended_sources_are_deblended():
    h = sim.block_header(FLAT, 0)
    w = WCS(h).celestial
    x = np.array([250.0, 250.0 + 1.5 * BEAM_PIX])
    y = np.array([260.0, 261.0])
    ra, dec = w.wcs_pix2world(x, y, 0)
    flux = np.array([0.05, 0.03])
    img, _, _ = sim.synth_block(FLAT, 0, ra, dec, flux, rng=np.random.default_rng(5))
    cat = sourcefind.find_sources(img, w, FLAT.beam_deg, SIGMA)
    assert len(cat) == 2
    assert len(set(cat["island_id"])) == 1 and np.all(cat["flags"] & sourcefind.MULTIPLE)
    idx, off, good = match(cat, ra, dec)
    assert good.all() and sorted(idx) == [0, 1] and off.max() < 0.1
    diff = np.asarray(cat["peak_flux"]) - flux[idx]
    assert np.all(np.abs(diff) < 3 * np.asarray(cat["peak_flux_err"])), (diff, cat["peak_flux_err"])


# -- (d) on a mosaic, from FITS ---------------------------------------------------------


@pytest.fixture(scope="module")
def strip_catalogue(tmp_path_factory):
    d = tmp_path_factory.mktemp("strip")
    spec = sim.StripSpec(n_blocks=6, sigmas_jy=[1e-3, 2e-3, 1e-3, 3e-3, 1.5e-3, 1e-3])
    rng = np.random.default_rng(21)
    ra, dec = sim.random_positions(spec, 150, rng, min_separation_deg=2 * BEAM_DEG)
    flux = np.exp(rng.uniform(np.log(2e-3), np.log(0.2), ra.size))
    paths = sim.write_strip(spec, d / "blocks", ra, dec, flux, seed=22)
    out = products.mosaic_products(d, products.mosaic_id(spec.dec_deg, spec.block_id(0), spec.block_id(5)))
    mosaic.make_mosaic(paths, out, png=False)
    cat = sourcefind.find_sources_fits(out.image_fits, out.noise_fits)
    m = mosaic.read_block(out.image_fits, out.noise_fits, sigma_jy=1.0)  # noise map as a plane + WCS
    x, y = m.wcs.wcs_world2pix(ra, dec, 0)
    noise_at = m.pb[np.round(y).astype(int), np.round(x).astype(int)]
    return dict(cat=cat, ra=ra, dec=dec, flux=flux, snr=flux / noise_at, out=out)


def test_mosaic_recovery(strip_catalogue):
    s = strip_catalogue
    idx, off, good, complete, false = scored(s["cat"], s["ra"], s["dec"], s["snr"])
    assert (s["snr"] >= 7).sum() >= 60
    assert complete >= 0.95, complete
    assert false < 0.02, false
    snr = s["snr"][idx]
    assert np.median(off[good & (snr >= 7)]) < 0.1
    assert off[good & (snr >= 20)].max() < 0.1
    assert s["cat"].meta["image"] == str(s["out"].image_fits)


def test_catalogue_export_round_trip(strip_catalogue, tmp_path):
    cat = strip_catalogue["cat"]
    out = products.MosaicProducts(tmp_path, strip_catalogue["out"].mosaic_id)
    paths = sourcefind.write_catalogues(cat, out)
    assert set(paths) == {"ecsv", "votable"}
    for fmt, path in paths.items():
        back = Table.read(path, format=sourcefind.ASTROPY_FORMATS[fmt])
        assert len(back) == len(cat) and back.colnames == cat.colnames
        assert back["peak_flux"].unit == u.Jy / u.beam and back["ra"].unit == u.deg
        np.testing.assert_allclose(back["ra"], cat["ra"])
    assert not list(tmp_path.glob(".*partial"))


def test_missing_fits_is_named(tmp_path):
    gone = tmp_path / "nope.image.fits"
    with pytest.raises(PermanentError) as e:
        sourcefind.find_sources_fits(gone)
    assert str(gone) in str(e.value) and "\n" not in str(e.value)


def test_bad_settings():
    with pytest.raises(ValueError, match="island_sigma"):
        sourcefind.FinderSettings(threshold_sigma=3, island_sigma=4)
