"""The reference catalogue: names, cross-matching as the survey deepens, references, export."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from contimg import catalogue
from contimg import database as db
from contimg.config import SurveyConfig

BEAM = 4.8 / 60  # deg


def table(ra, dec, flux, err, snr=None, flags=None):
    n = len(ra)
    return Table({"ra": ra, "dec": dec, "ra_err": [2.0] * n, "dec_err": [2.0] * n, "peak_flux": flux,
                  "peak_flux_err": err, "snr": snr if snr is not None else np.array(flux) / np.array(err),
                  "flags": flags if flags is not None else [0] * n})


def test_names_are_truncated_iau_style():
    assert catalogue.source_name(149.99999, 54.599999) == "J095959.9+543559"
    assert catalogue.source_name(0.0, -0.5) == "J000000.0-003000"
    assert catalogue.source_name(359.99999, 89.9999999) == "J235959.9+895959"


def test_merge_matches_adds_and_keeps_the_better_measurement(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sv = SurveyConfig()
    ra = [150.0, 150.5, 151.0]
    dec = [54.6, 54.9, 54.2]
    up = catalogue.merge_detections(url, table(ra, dec, [0.5, 0.2, 0.004], [0.005, 0.005, 0.001]), "m1", BEAM, sv)
    assert (up.n_new, up.n_matched) == (2, 0)  # the 4-sigma one is left out
    names = [s["name"] for s in db.catalogue_sources(url)]
    # A deeper mosaic: the same two sources moved by 0.2 beam, more precise, and a new faint one.
    shift = 0.2 * BEAM
    deep = table([150.0 + shift, 150.5, 152.0], [54.6, 54.9 - shift, 54.0], [0.49, 0.21, 0.01], [0.002, 0.002, 0.001])
    up = catalogue.merge_detections(url, deep, "m2", BEAM, sv)
    assert (up.n_new, up.n_matched, up.n_improved) == (1, 2, 2)
    cat = db.catalogue_sources(url)
    assert [s["name"] for s in cat[:2]] == names  # stable names
    assert cat[0]["flux_jy"] == 0.49 and cat[0]["best_mosaic"] == "m2" and cat[0]["first_seen"] == "m1"
    assert [s["n_detections"] for s in cat] == [2, 2, 1]
    # The same mosaic again changes nothing; a far detection (1 beam) is a new source.
    up = catalogue.merge_detections(url, deep, "m2", BEAM, sv)
    assert up.n_new == 0 and [s["n_detections"] for s in db.catalogue_sources(url)] == [2, 2, 1]
    up = catalogue.merge_detections(url, table([150.0], [54.6 + BEAM], [0.1], [0.002]), "m3", BEAM, sv)
    assert up.n_new == 1


def test_references_are_bright_clean_isolated_and_steady(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sv = SurveyConfig()
    t = table([150.0, 150.5, 150.5 + BEAM / np.cos(np.radians(54.9)), 151.0, 151.5],
              [54.6, 54.9, 54.9, 54.2, 54.0], [0.5, 0.3, 0.3, 0.4, 0.05], [0.001] * 5,
              flags=[0, 0, 0, 4, 0])
    up = catalogue.merge_detections(url, t, "m", BEAM, sv)
    refs = [s["is_reference"] for s in db.catalogue_sources(url)]
    assert refs == [True, False, False, False, True]  # blended pair, multi-component fit are not references
    assert up.n_references == 2
    first = db.catalogue_sources(url)[0]["name"]
    assert catalogue.mark_variable(url, [first]) == 1
    with pytest.raises(KeyError, match="J000000.0"):
        catalogue.mark_variable(url, ["J000000.0+000000"])


def test_export_round_trips(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    catalogue.merge_detections(url, table([150.0, 150.5], [54.6, 54.9], [0.5, 0.2], [0.005, 0.005]), "m", BEAM)
    for fmt, astropy_fmt in (("ecsv", "ascii.ecsv"), ("votable", "votable")):
        path = catalogue.export(url, tmp_path / f"c.{fmt}", fmt)
        t = Table.read(path, format=astropy_fmt)
        assert list(t["flux"]) == [0.5, 0.2] and t["ra"].unit == "deg"


def test_noise_map_that_underestimates_the_scatter_is_scaled(tmp_path):
    """Blocks of one field at one LST share their residual sidelobes: the mosaic's map is then too low."""
    from astropy.io import fits

    from contimg import images_sim

    spec = images_sim.StripSpec(n_blocks=1, sigmas_jy=[3e-3])
    image, _, h = images_sim.synth_block(spec, 0, [150.0], [54.6], [0.3], rng=2)
    fits.PrimaryHDU(image.reshape(1, 1, *image.shape), header=h).writeto(tmp_path / "m.image.fits")
    fits.PrimaryHDU(np.full((1, 1, *image.shape), 1e-3, np.float32), header=h).writeto(tmp_path / "m.noise.fits")
    assert catalogue.noise_map_factor(tmp_path / "m.image.fits", tmp_path / "m.noise.fits") == pytest.approx(3, rel=0.1)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    up = catalogue.build_from_mosaic(url, tmp_path / "m.image.fits", tmp_path / "m.noise.fits")
    assert up.noise_factor == pytest.approx(3, rel=0.1)
    assert up.n_new == 1  # the one source; no noise peaks at "5 sigma" of the too-low map
