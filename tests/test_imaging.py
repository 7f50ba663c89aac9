"""Tests of contimg.imaging: geometry rules, tclean parameters, concat, block images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from contimg import convert, imaging, phasing, telescope
from contimg.config import ImagingConfig
from contimg.errors import PermanentError
from contimg.products import BlockProducts, temporary_name

import synth_uvdata as synth

BLOCK_ID = "2025-10-05T03:12:45"
T0_JD = 2460953.6338541666  # BLOCK_ID as a Julian date
DEC = math.radians(54.6)
FLUX_JY = 5.0
# Small images keep tclean to seconds; the source lies well inside.
SETTINGS = ImagingConfig(niter=500, max_imsize=320)


# ---------------------------------------------------------------------------
# pure rules
# ---------------------------------------------------------------------------


def test_cell_is_a_fifth_of_the_finest_fringe():
    # 2.6 km at 1498.75 MHz: lambda/B = 15.87 arcsec.
    assert imaging.cell_from_baseline(2600.0, 1498.75e6) == pytest.approx(3.1, abs=1e-9)
    assert imaging.cell_from_baseline(470.0, 1.4e9) == pytest.approx(18.0, abs=1e-9)
    with pytest.raises(ValueError):
        imaging.cell_from_baseline(0.0, 1.4e9)


def test_pb_radius_matches_the_airy_beam():
    r = imaging.pb_radius_rad(0.5, 1.4e9)
    assert 2 * r == pytest.approx(telescope.primary_beam_fwhm_rad(1.4e9), rel=2e-3)
    assert telescope.airy_power_beam(np.array([imaging.pb_radius_rad(0.2, 1.4e9)]), 1.4e9)[0] == pytest.approx(0.2)


def test_good_fft_sizes():
    assert imaging.good_fft_size(750) == 750
    assert imaging.good_fft_size(751) == 768
    assert imaging.good_fft_size(4601) == 4608
    assert imaging.good_fft_size_below(4096) == 4096
    assert imaging.good_fft_size_below(4095) == 4050


def test_auto_imsize_covers_the_beam_and_is_capped():
    # Full DSA-110: 3.1 arcsec cells over a ~4 deg beam exceed the cap.
    assert imaging.auto_imsize(3.1, 0.2, 1405e6, 4096) == 4096
    n = imaging.auto_imsize(18.0, 0.2, 1405e6, 4096)
    radius_pix = math.degrees(imaging.pb_radius_rad(0.2, 1405e6)) * 3600 / 18.0
    assert 2 * radius_pix < n < 2 * radius_pix * 1.15 and imaging._is_5_smooth(n) and n % 2 == 0


def test_tclean_parameters_follow_settings():
    kw = dict(cell_arcsec=3.1, imsize=4096, vptable=Path("/x/dsa.vp"), datacolumn="data")
    p = imaging.tclean_parameters(Path("/b.ms"), Path("/p/b"), ImagingConfig(), **kw)
    assert p["nsigma"] == 4.0 and p["threshold"] == "0Jy" and p["niter"] == 2000
    assert p["stokes"] == "I" and p["specmode"] == "mfs" and p["pbcor"] and p["vptable"] == "/x/dsa.vp"
    assert p["imsize"] == [4096, 4096] and p["cell"] == "3.1arcsec" and p["weighting"] == "briggs"
    q = imaging.tclean_parameters(
        Path("/b.ms"), Path("/p/b"), ImagingConfig(threshold_jy=0.01, gridder="wproject", deconvolver="mtmfs"), **kw
    )
    assert q["threshold"] == "0.01Jy" and q["nsigma"] == 0.0 and q["wprojplanes"] == -1 and q["nterms"] == 2


# ---------------------------------------------------------------------------
# synthetic MSs
# ---------------------------------------------------------------------------


def _times(start_jd=T0_JD, n=6):
    return start_jd + np.arange(n) * telescope.INTEGRATION_S / 86400


@pytest.fixture(scope="module")
def sidereal_ms(tmp_path_factory):
    """A 5 Jy source off-centre (not on a pixel) in an MS phased at a sidereal position."""
    d = tmp_path_factory.mktemp("sidereal")
    center = (math.radians(150.0), math.radians(40.0))
    source = synth.offset_position(*center, math.radians(0.33), math.radians(-0.21))
    uvd = synth.phased_uvdata(
        center=center, sources=[(*source, FLUX_JY)], freqs_hz=synth.subband_freqs(7), times_jd=_times()
    )
    ms = d / "sidereal.ms"
    uvd.write_ms(str(ms))
    return ms, source


@pytest.fixture(scope="module")
def block_subbands(tmp_path_factory):
    """Two drift-scan subband files of one block, converted with the block's mid-time."""
    d = tmp_path_factory.mktemp("block")
    mid = float(_times(n=24).mean())
    center = phasing.block_phase_center(mid, DEC)
    source = synth.offset_position(*center, math.radians(-0.27), math.radians(0.18))
    out = []
    for sb, start in ((12, T0_JD), (3, T0_JD + 30 / 86400)):
        uvd = synth.phased_uvdata(
            center=center, sources=[(*source, FLUX_JY)], freqs_hz=synth.subband_freqs(sb), times_jd=_times(start)
        )
        synth.to_dsa_driftscan(uvd, DEC)
        raw = d / f"sb{sb:02d}.hdf5"
        synth.write_raw(uvd, raw)
        out.append(convert.convert_subband(raw, d / f"sb{sb:02d}.ms", block_mid_jd=mid).ms_path)
    return [Path(p) for p in out], source


def _separation_arcsec(ra1_deg, dec1_deg, ra2, dec2):
    sep = imaging._separation_rad(math.radians(ra1_deg), math.radians(dec1_deg), ra2, dec2)
    return math.degrees(float(sep)) * 3600


# ---------------------------------------------------------------------------
# imaging and concatenation (CASA)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_image_block_finds_the_source(sidereal_ms, tmp_path):
    from astropy.io import fits

    ms, (ra, dec) = sidereal_ms
    products = BlockProducts(tmp_path / "products", BLOCK_ID)
    result = imaging.image_block(ms, products, SETTINGS, block_id=BLOCK_ID, extra_header={"NSUBBAND": 1})

    assert _separation_arcsec(result.peak_ra_deg, result.peak_dec_deg, ra, dec) < result.beam_major_arcsec
    assert result.peak_pbcor_jy == pytest.approx(FLUX_JY, rel=0.10)
    assert result.peak_jy < result.peak_pbcor_jy  # off-centre: attenuated before correction
    assert 0 < result.rms_jy < 0.01 * result.peak_jy
    assert result.imsize == 320 and result.cell_arcsec > 0 and result.iterations > 0

    # Only the FITS products remain.
    names = sorted(p.name for p in products.directory.iterdir())
    assert names == sorted(products.fits(k).name for k in imaging.FITS_KINDS)
    for kind in imaging.FITS_KINDS:
        h = fits.getheader(products.fits(kind))
        for key in ("BMAJ", "BMIN", "BPA", "BUNIT", "DATE-OBS"):
            assert key in h, (kind, key)
        assert h["BLOCKID"] == BLOCK_ID and h["TELESCOP"] == "DSA-110" and h["NSUBBAND"] == 1
        assert "FREQ" in [h[f"CTYPE{i}"] for i in range(1, h["NAXIS"] + 1)]
    assert fits.getheader(products.fits("image"))["BUNIT"] == "Jy/beam"

    # The CASA primary beam is the Airy beam of telescope.py.
    pb = fits.getdata(products.fits("pb"))[0, 0]
    iy, ix = np.unravel_index(np.nanargmax(fits.getdata(products.fits("image"))[0, 0]), pb.shape)
    center = math.radians(result.phase_center_ra_deg), math.radians(result.phase_center_dec_deg)
    sep = math.radians(_separation_arcsec(result.peak_ra_deg, result.peak_dec_deg, *center) / 3600)
    assert pb[iy, ix] == pytest.approx(telescope.airy_power_beam(np.array([sep]), result.reffreq_hz)[0], abs=0.01)

    # A second run gives the same products.
    first = {k: fits.getdata(products.fits(k)) for k in imaging.FITS_KINDS}
    again = imaging.image_block(ms, products, SETTINGS, block_id=BLOCK_ID, extra_header={"NSUBBAND": 1})
    assert again.peak_jy == pytest.approx(result.peak_jy, rel=1e-5)
    for kind in imaging.FITS_KINDS:
        np.testing.assert_allclose(fits.getdata(products.fits(kind)), first[kind], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_concat_then_image_a_drift_scan_block(block_subbands, tmp_path):
    from contimg import casa_env

    subbands, (ra, dec) = block_subbands
    out = imaging.concat_subbands(subbands, tmp_path / f"{BLOCK_ID}.ms")
    assert out.is_dir() and not temporary_name(out).exists()
    md = casa_env.casatools().msmetadata()
    md.open(str(out))
    try:
        assert md.nfields() == 1 and md.nspw() == 2
        assert md.chanfreqs(0).max() < md.chanfreqs(1).min()  # sorted by frequency
    finally:
        md.close()

    # The source comes out at its ICRS position: the whole phasing chain is right.
    products = BlockProducts(tmp_path / "products", BLOCK_ID)
    result = imaging.image_block(out, products, SETTINGS, block_id=BLOCK_ID)
    assert _separation_arcsec(result.peak_ra_deg, result.peak_dec_deg, ra, dec) < result.beam_major_arcsec / 2
    assert result.peak_pbcor_jy == pytest.approx(FLUX_JY, rel=0.10)

    # Concatenating again replaces the block MS.
    imaging.concat_subbands(subbands, out)
    md.open(str(out))
    try:
        assert md.nfields() == 1 and md.nspw() == 2 and md.nrows() == 2 * 6 * 136
    finally:
        md.close()


def test_concat_refuses_different_phase_centers(block_subbands, tmp_path):
    subbands, _ = block_subbands
    # Converted without the block's mid-time, the second subband has its own centre.
    raw = subbands[1].with_suffix(".hdf5")
    own = convert.convert_subband(raw, tmp_path / "own.ms").ms_path
    with pytest.raises(PermanentError, match="block_mid_jd"):
        imaging.concat_subbands([subbands[0], own], tmp_path / "block.ms")
    assert not (tmp_path / "block.ms").exists()


def test_image_block_needs_an_ms(tmp_path):
    products = BlockProducts(tmp_path, BLOCK_ID)
    with pytest.raises(PermanentError, match="does not exist"):
        imaging.image_block(tmp_path / "none.ms", products, SETTINGS, block_id=BLOCK_ID)
