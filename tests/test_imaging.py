"""Tests of contimg.imaging and contimg.wsclean: geometry rules, tclean and WSClean parameters, concat, block images.

The block-image tests run with both backends (``imaging.backend``); the WSClean
ones are skipped, with the reason, where ``wsclean`` is not on PATH.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from contimg import convert, imaging, noise, phasing, primary_beam, telescope, wsclean
from contimg.config import ImagingConfig
from contimg.errors import PermanentError, TransientError
from contimg.products import BlockProducts, temporary_name

import synth_uvdata as synth

BLOCK_ID = "2025-10-05T03:12:45"
T0_JD = 2460953.6338541666  # BLOCK_ID as a Julian date
DEC = math.radians(54.6)
FLUX_JY = 5.0
# Small images keep tclean to seconds; the source lies well inside.
SETTINGS = ImagingConfig(niter=500, max_imsize=320)

needs_wsclean = pytest.mark.skipif(
    shutil.which("wsclean") is None, reason="wsclean is not on PATH (apt-get install wsclean; `make setup` does it)"
)
BACKENDS = [pytest.param("tclean", id="tclean"), pytest.param("wsclean", id="wsclean", marks=needs_wsclean)]


def _with_backend(settings: ImagingConfig, backend: str) -> ImagingConfig:
    # The sparse test array's PSF has sidelobes near half its peak: tclean's minor cycles
    # stop earlier there by themselves (cyclefactor x sidelobe level), WSClean's stop at
    # a fixed fraction of the peak (mgain). At 0.8 (the default is 0.9) its minor cycles
    # overshoot onto a sidelobe and the 5 Jy source came out 4.1-4.3 Jy after 500 iterations.
    return dataclasses.replace(settings, backend=backend, wsclean_mgain=0.5)


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


def test_wsclean_command_follows_settings():
    kw = dict(cell_arcsec=3.1, imsize=4096, data_column="CORRECTED_DATA", temp_dir=Path("/p/.b.partial"), threads=2)
    mss = [Path("/s/b_sb00.ms"), Path("/s/b_sb01.ms")]
    cmd = wsclean.wsclean_command(mss, Path("/p/.b.partial/b"), ImagingConfig(backend="wsclean"), **kw)
    assert cmd[0] == "wsclean" and cmd[-2:] == ["/s/b_sb00.ms", "/s/b_sb01.ms"]

    def value(flag, n=1):
        i = cmd.index(flag)
        return cmd[i + 1:i + 1 + n]

    assert value("-size", 2) == ["4096", "4096"] and value("-scale") == ["3.1asec"] and value("-pol") == ["I"]
    assert value("-weight", 2) == ["briggs", "0.0"] and value("-niter") == ["2000"] and value("-j") == ["2"]
    assert value("-auto-mask") == ["4.0"] and value("-auto-threshold") == ["1.0"] and value("-mgain") == ["0.9"]
    assert "-threshold" not in cmd
    assert value("-data-column") == ["CORRECTED_DATA"] and value("-temp-dir") == ["/p/.b.partial"]
    assert "-use-wgridder" in cmd and "-no-update-model-required" in cmd
    assert value("-wgridder-accuracy") == ["0.001"]
    precise = wsclean.wsclean_command(mss, Path("/p/b"), ImagingConfig(backend="wsclean", wgridder_accuracy=1e-5), **kw)
    assert precise[precise.index("-wgridder-accuracy") + 1] == "1e-05"
    natural = wsclean.wsclean_command(
        mss, Path("/p/b"), ImagingConfig(backend="wsclean", weighting="natural", threshold_jy=0.01), **kw
    )
    i = natural.index("-weight")
    assert natural[i + 1:i + 3] == ["natural", "-use-wgridder"]
    assert natural[natural.index("-threshold") + 1] == "0.01" and "-auto-threshold" not in natural
    assert "-auto-mask" not in natural


def test_baseline_averaging_keeps_the_edge_loss_at_the_limit():
    edge = imaging.image_edge_radius_rad(3.1, 4096)  # the full block's image: 1.76 deg
    size = imaging.baseline_averaging_wavelengths(edge, 0.01)
    assert imaging.time_smearing_loss(size, edge) == pytest.approx(0.01, rel=1e-6)
    assert size == pytest.approx(2.537, rel=1e-3)  # wavelengths of uv track per averaged sample
    assert imaging.baseline_averaging_wavelengths(edge, 0.0) == 0.0
    assert imaging.baseline_averaging_wavelengths(edge / 2, 0.01) == pytest.approx(2 * size)
    kw = dict(cell_arcsec=3.1, imsize=4096, data_column="DATA", temp_dir=Path("/t"), threads=1)
    cmd = wsclean.wsclean_command([Path("/s/a.ms")], Path("/t/b"), ImagingConfig(), baseline_averaging=size, **kw)
    assert cmd[cmd.index("-baseline-averaging") + 1] == "2.537"
    assert "-baseline-averaging" not in wsclean.wsclean_command([Path("/s/a.ms")], Path("/t/b"), ImagingConfig(), **kw)


def test_wsclean_failures_become_pipeline_errors(tmp_path):
    log = tmp_path / "b.wsclean.log"
    full = wsclean.failure(255, "Reordering...\nError writing: No space left on device\n", block_id="B", log_path=log)
    assert isinstance(full, TransientError) and "block B" in str(full) and "free space" in str(full)
    oom = wsclean.failure(-9, "Gridding...\n", block_id="B", log_path=log)
    assert isinstance(oom, TransientError) and "memory" in str(oom)
    bad = wsclean.failure(1, "Error: Table MAIN does not exist\nmore\n", block_id="B", log_path=log)
    assert isinstance(bad, PermanentError) and "Table MAIN does not exist" in str(bad) and str(log) in str(bad)
    assert "\n" not in str(bad)


def test_wsclean_clean_summary_reads_the_output():
    out = ("Performed 50 iterations in total, 50 in this major iteration with sub-minor optimization.\n"
           "Stopped on peak 948.52 mJy, because the threshold was reached.\n"
           "Performed 146 iterations in total, 96 in this major iteration with sub-minor optimization.\n"
           "Stopped on peak -156.26 mJy, because the threshold was reached.\n2 major iterations were performed.\n")
    assert wsclean.clean_summary(out) == (146, "Stopped on peak -156.26 mJy, because the threshold was reached.")
    assert wsclean.clean_summary("") == (-1, "")


def test_imaging_log_is_named_by_products():
    p = BlockProducts(Path("/p"), BLOCK_ID)
    assert p.imaging_log("wsclean") == Path(f"/p/{BLOCK_ID}.wsclean.log")
    with pytest.raises(ValueError):
        p.imaging_log("../x")


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


@pytest.fixture(scope="module")
def edge_source_ms(tmp_path_factory):
    """One drift-scan subband of a whole block (24 integrations), a 5 Jy source 0.6 deg north of the centre."""
    d = tmp_path_factory.mktemp("edge")
    times = _times(n=24)
    mid = float(times.mean())
    center = phasing.block_phase_center(mid, DEC)
    source = synth.offset_position(*center, 0.0, math.radians(0.6))
    uvd = synth.phased_uvdata(center=center, sources=[(*source, FLUX_JY)], freqs_hz=synth.subband_freqs(7),
                              times_jd=times)
    synth.to_dsa_driftscan(uvd, DEC)
    raw = d / "sb07.hdf5"
    synth.write_raw(uvd, raw)
    return Path(convert.convert_subband(raw, d / "sb07.ms", block_mid_jd=mid).ms_path)


def _separation_arcsec(ra1_deg, dec1_deg, ra2, dec2):
    sep = imaging._separation_rad(math.radians(ra1_deg), math.radians(dec1_deg), ra2, dec2)
    return math.degrees(float(sep)) * 3600


# ---------------------------------------------------------------------------
# imaging and concatenation (CASA)
# ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_image_block_finds_the_source(sidereal_ms, tmp_path, backend):
    from astropy.io import fits

    ms, (ra, dec) = sidereal_ms
    products = BlockProducts(tmp_path / "products", BLOCK_ID)
    settings = _with_backend(SETTINGS, backend)
    result = imaging.image_block(ms, products, settings, block_id=BLOCK_ID, extra_header={"NSUBBAND": 1})
    assert result.backend == backend and result.ms_paths == [str(ms)]

    assert _separation_arcsec(result.peak_ra_deg, result.peak_dec_deg, ra, dec) < result.beam_major_arcsec
    assert result.peak_pbcor_jy == pytest.approx(FLUX_JY, rel=0.10)
    assert result.peak_jy < result.peak_pbcor_jy  # off-centre: attenuated before correction
    assert 0 < result.rms_jy < 0.01 * result.peak_jy
    assert result.imsize == 320 and result.cell_arcsec > 0 and result.iterations > 0

    # Only the FITS products remain (and WSClean's log).
    names = sorted(p.name for p in products.directory.iterdir())
    logs = [products.imaging_log("wsclean").name] if backend == "wsclean" else []
    assert names == sorted([products.fits(k).name for k in imaging.FITS_KINDS] + logs)
    for kind in imaging.FITS_KINDS:
        h = fits.getheader(products.fits(kind))
        for key in ("BMAJ", "BMIN", "BPA", "BUNIT", "DATE-OBS"):
            assert key in h, (kind, key)
        assert h["BLOCKID"] == BLOCK_ID and h["TELESCOP"] == "DSA-110" and h["NSUBBAND"] == 1
        assert h["IMAGER"] == backend and h["BANDWID"] > 0
        assert "FREQ" in [h[f"CTYPE{i}"] for i in range(1, h["NAXIS"] + 1)]
    assert fits.getheader(products.fits("image"))["BUNIT"] == "Jy/beam"

    # The CASA primary beam is the Airy beam of telescope.py.
    pb = fits.getdata(products.fits("pb"))[0, 0]
    iy, ix = np.unravel_index(np.nanargmax(fits.getdata(products.fits("image"))[0, 0]), pb.shape)
    center = math.radians(result.phase_center_ra_deg), math.radians(result.phase_center_dec_deg)
    sep = math.radians(_separation_arcsec(result.peak_ra_deg, result.peak_dec_deg, *center) / 3600)
    assert pb[iy, ix] == pytest.approx(telescope.airy_power_beam(np.array([sep]), result.reffreq_hz)[0], abs=0.01)

    # A second run gives the same products. WSClean's threaded gridding adds in a
    # different order each run: pixels differ by up to ~4e-6 of the peak (1.7e-5 Jy seen).
    first = {k: fits.getdata(products.fits(k)) for k in imaging.FITS_KINDS}
    again = imaging.image_block(ms, products, settings, block_id=BLOCK_ID, extra_header={"NSUBBAND": 1})
    assert again.peak_jy == pytest.approx(result.peak_jy, rel=1e-5)
    atol = 1e-6 if backend == "tclean" else 2e-5 * result.peak_jy
    for kind in imaging.FITS_KINDS:
        np.testing.assert_allclose(fits.getdata(products.fits(kind)), first[kind], rtol=1e-5, atol=atol)


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


@pytest.mark.slow
@needs_wsclean
def test_wsclean_images_the_subband_mss_directly(block_subbands, tmp_path):
    subbands, (ra, dec) = block_subbands
    products = BlockProducts(tmp_path / "products", BLOCK_ID)
    settings = _with_backend(SETTINGS, "wsclean")
    result = imaging.image_block(subbands, products, settings, block_id=BLOCK_ID)
    assert _separation_arcsec(result.peak_ra_deg, result.peak_dec_deg, ra, dec) < result.beam_major_arcsec / 2
    assert result.peak_pbcor_jy == pytest.approx(FLUX_JY, rel=0.10)
    assert not products.concat_ms.exists() and result.ms_path == ""
    assert sorted(result.ms_paths) == sorted(str(p) for p in subbands) and result.iterations > 0
    assert "iterations in total" in products.imaging_log("wsclean").read_text()
    # The subband MSs are left as they were: no MODEL_DATA written into them.
    from casacore.tables import table

    for ms in subbands:
        with table(str(ms), ack=False) as t:
            assert "MODEL_DATA" not in t.colnames()

    # The same beam and noise inputs as from their concatenation.
    block_ms = imaging.concat_subbands(subbands, tmp_path / "block.ms")
    one, many = primary_beam.read_beam_inputs(block_ms), primary_beam.read_block_beam_inputs(subbands)
    np.testing.assert_allclose(many.times_jd, one.times_jd, rtol=0, atol=1e-8)
    np.testing.assert_allclose(many.freqs_hz, one.freqs_hz)
    np.testing.assert_allclose(many.weights, one.weights)
    kw = dict(cell_arcsec=result.cell_arcsec, imsize=result.imsize, weighting="briggs", robust=0.0)
    a, b = noise.expected_image_rms(block_ms, **kw), noise.expected_image_rms(subbands, **kw)
    assert b.n_samples == a.n_samples and b.natural_rms_jy == pytest.approx(a.natural_rms_jy)
    assert b.weighting_factor == pytest.approx(a.weighting_factor, rel=1e-6)


@pytest.mark.slow
@needs_wsclean
def test_wsclean_baseline_averaging_loses_what_the_rule_allows_at_the_edge(edge_source_ms, tmp_path):
    """A noiseless source 0.6 deg north (the uv tracks move north-south), 0.67 deg edge: its peak with averaging."""
    peaks = {}
    for loss in (0.0, 0.01, 0.1):
        settings = ImagingConfig(backend="wsclean", niter=200, wsclean_mgain=0.5, cell_arcsec=15.0, imsize=320,
                                 threshold_jy=0.01, max_time_smearing=loss)
        products = BlockProducts(tmp_path / f"p{loss}", BLOCK_ID)
        result = wsclean.image_block([edge_source_ms], products, settings, block_id=BLOCK_ID)
        peaks[loss] = result.peak_pbcor_jy
        averaged = "Baseline averaging reduced the number of rows" in products.imaging_log("wsclean").read_text()
        assert averaged == (loss > 0)
    lost = {k: 1 - v / peaks[0.0] for k, v in peaks.items()}
    print("peak loss against no averaging:", lost)
    # At 0.9 of the edge radius the bound is a bit below the limit; 0.002 for the clean's own scatter.
    assert lost[0.01] <= 0.01 + 0.002
    assert lost[0.1] <= 0.1 + 0.002
    assert lost[0.1] > lost[0.01] + 0.005  # the averaging is really on (and the rule is what limits it)


@needs_wsclean
def test_wsclean_refuses_different_phase_centers_and_reports_failures(block_subbands, tmp_path):
    subbands, _ = block_subbands
    settings = _with_backend(SETTINGS, "wsclean")
    raw = subbands[1].with_suffix(".hdf5")
    own = convert.convert_subband(raw, tmp_path / "own.ms").ms_path
    products = BlockProducts(tmp_path / "products", BLOCK_ID)
    with pytest.raises(PermanentError, match="block_mid_jd"):
        imaging.image_block([subbands[0], own], products, settings, block_id=BLOCK_ID)
    # A real failing run: WSClean's own error, its log beside the products, a one-line PermanentError.
    log = products.imaging_log("wsclean")
    with pytest.raises(PermanentError, match="wsclean failed") as err:
        wsclean.run(["wsclean", "-name", str(tmp_path / "x"), str(tmp_path / "not-an.ms")], log, block_id=BLOCK_ID)
    assert str(log) in str(err.value) and "\n" not in str(err.value) and log.is_file()


def test_concat_refuses_different_phase_centers(block_subbands, tmp_path):
    subbands, _ = block_subbands
    # Converted without the block's mid-time, the second subband has its own centre.
    raw = subbands[1].with_suffix(".hdf5")
    own = convert.convert_subband(raw, tmp_path / "own.ms").ms_path
    with pytest.raises(PermanentError, match="block_mid_jd"):
        imaging.concat_subbands([subbands[0], own], tmp_path / "block.ms")
    assert not (tmp_path / "block.ms").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_block_needs_an_ms(tmp_path, backend):
    products = BlockProducts(tmp_path, BLOCK_ID)
    with pytest.raises(PermanentError, match="does not exist"):
        imaging.image_block(tmp_path / "none.ms", products, _with_backend(SETTINGS, backend), block_id=BLOCK_ID)
