"""Tests of contimg.phasing and contimg.convert (UVH5 to MS)."""

from __future__ import annotations

import errno
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from contimg import convert, phasing, telescope
from contimg.errors import BadSubbandFile, TransientError
from contimg.products import temporary_name

import synth_uvdata as synth

DATA = Path(__file__).parent / "data"
ATA = DATA / "ata.LoA.C0352.uvh5_60647_62965_9760406_3c286_0001.uvh5"
ARCSEC = math.radians(1 / 3600)

T0_JD = 2460953.6338541666  # 2025-10-05T03:12:45 UTC
DEC = math.radians(54.6)


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


def _dsa_file(path: Path, subband: int, start_jd: float, n_times: int = 4) -> Path:
    """A tiny DSA-110-like drift-scan subband file with a 5 Jy source near the meridian."""
    times = start_jd + np.arange(n_times) * telescope.INTEGRATION_S / 86400
    center = phasing.block_phase_center(float(times.mean()), DEC)
    src = synth.offset_position(*center, math.radians(0.3), math.radians(0.1))
    uvd = synth.phased_uvdata(
        center=center, sources=[(*src, 5.0)], freqs_hz=synth.subband_freqs(subband), times_jd=times
    )
    synth.to_dsa_driftscan(uvd, DEC)
    synth.write_raw(uvd, path)
    return path


@pytest.fixture(scope="module")
def dsa_files(tmp_path_factory):
    """Two subbands of one block whose files start 40 s apart, like real correlator nodes."""
    d = tmp_path_factory.mktemp("raw")
    return {
        3: _dsa_file(d / "2025-10-05T03:12:45_sb03.hdf5", 3, T0_JD),
        12: _dsa_file(d / "2025-10-05T03:13:25_sb12.hdf5", 12, T0_JD + 40 / 86400),
    }


def _column(ms: Path, name: str, table: str = "") -> np.ndarray:
    from casacore import tables

    with tables.table(str(ms / table) if table else str(ms), ack=False) as t:
        return t.getcol(name)


# ---------------------------------------------------------------------------
# phasing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dec_deg", [16.3, 54.6, 65.7])
def test_meridian_icrs_is_on_the_meridian(dec_deg):
    from astropy import units as u
    from astropy.coordinates import AltAz, SkyCoord
    from astropy.time import Time

    ra, dec = phasing.meridian_icrs(T0_JD, math.radians(dec_deg))
    site = telescope.site_location()
    frame = AltAz(obstime=Time(T0_JD, format="jd"), location=site, pressure=0 * u.hPa)
    altaz = SkyCoord(ra=ra * u.rad, dec=dec * u.rad, frame="icrs").transform_to(frame)
    lat = telescope.SITE_LAT_DEG
    expected_az = 0.0 if dec_deg > lat else 180.0
    d_az = (altaz.az.deg - expected_az + 180) % 360 - 180
    assert abs(d_az) * 3600 * math.cos(altaz.alt.rad) < 1.0
    assert abs(altaz.alt.deg - (90 - abs(lat - dec_deg))) * 3600 < 1.0


@pytest.mark.parametrize("dec_deg", [16.3, 54.6, 65.7])
def test_meridian_icrs_differs_from_lst_by_precession(dec_deg):
    from astropy.time import Time

    t = Time(T0_JD, format="jd")
    ra, dec = phasing.meridian_icrs(T0_JD, math.radians(dec_deg))
    lst = t.sidereal_time("apparent", longitude=telescope.site_location().lon).rad
    # Precession since J2000 (Meeus): m = 3.075 s/yr, n = 1.336 s/yr in RA.
    years = (T0_JD - 2451545.0) / 365.25
    m, n = math.radians(46.12 / 3600), math.radians(20.04 / 3600)
    expected_dra = -(m + n * math.sin(ra) * math.tan(math.radians(dec_deg))) * years
    expected_ddec = -n * math.cos(ra) * years
    dra = math.remainder(ra - lst, 2 * math.pi)
    assert abs(expected_dra) > 100 * ARCSEC  # the test means something
    # Nutation and aberration (~20 arcsec each) remain.
    assert abs(dra - expected_dra) * math.cos(dec) < 60 * ARCSEC
    assert abs(dec - math.radians(dec_deg) - expected_ddec) < 60 * ARCSEC


def test_block_phase_center_round_trips_through_pyuvdata():
    """pyuvdata's ICRS-to-apparent step puts the centre back at HA 0, the pointing Dec."""
    from astropy.time import Time
    from pyuvdata.utils.phasing import transform_icrs_to_app

    ra, dec = phasing.block_phase_center(T0_JD, DEC)
    app_ra, app_dec = transform_icrs_to_app(
        time_array=np.array([T0_JD]), ra=np.array([ra]), dec=np.array([dec]),
        telescope_loc=telescope.site_location(),
    )
    lst = Time(T0_JD, format="jd").sidereal_time("apparent", longitude=telescope.site_location().lon).rad
    assert abs(math.remainder(app_ra[0] - lst, 2 * math.pi)) < 0.01 * ARCSEC
    assert abs(app_dec[0] - DEC) < 0.01 * ARCSEC


def test_phase_center_name():
    assert phasing.phase_center_name(math.radians(303.92878), math.radians(54.516537)) == "J201542.9+543100"
    assert phasing.phase_center_name(0.0, math.radians(-5.5)) == "J000000.0-053000"


def test_uvw_check_sees_untrusted_uvws(dsa_files):
    from pyuvdata import UVData

    raw = UVData.from_file(str(dsa_files[3]), file_type="uvh5", run_check=False)
    assert raw.uvw_array.dtype == np.float32  # like real DSA-110 files
    assert phasing.uvw_check(raw)["max_m"] > 0.01  # the synthetic file's stored UVWs are off


# ---------------------------------------------------------------------------
# conversion of the real ATA file
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ata_ms(tmp_path_factory):
    ms = tmp_path_factory.mktemp("ata") / "ata.ms"
    return ms, convert.convert_subband(ATA, ms)


def test_ata_converts(ata_ms):
    ms, result = ata_ms
    assert ms.is_dir() and not temporary_name(ms).exists()
    d = result.as_dict()
    assert d["n_antennas"] == 28 and d["n_baselines"] == 406 and d["n_times"] == 1 and d["n_channels"] == 16
    assert d["phase_center_rule"] == "kept" and d["phase_center_name"] == "3c286"
    assert d["phase_center_ra_deg"] == pytest.approx(202.784529, abs=1e-5)
    assert d["phase_center_dec_deg"] == pytest.approx(30.509155, abs=1e-5)
    assert 1.25e9 < d["freq_min_hz"] < d["freq_max_hz"] < 1.27e9
    assert d["uvw_check_max_m"] < 1e-3 and d["uvw_check_rms_m"] < 1e-3


def test_ata_ms_reads_in_casa(ata_ms):
    from contimg import casa_env

    ms, _ = ata_ms
    obs = casa_env.casatasks().listobs(vis=str(ms), listfile="", verbose=False)
    assert obs["nfields"] == 1 and obs["field_0"]["name"] == "3c286"
    assert obs["numrecords"] == 406
    assert list(obs["scan_1"]["0"]["SpwIds"]) == [0]
    md = casa_env.casatools().msmetadata()
    md.open(str(ms))
    try:
        assert len(md.antennasforscan(1)) == 28
        assert md.nspw() == 1 and md.nchan(0) == 16
    finally:
        md.close()


def test_convert_is_idempotent(ata_ms, tmp_path):
    ms, _ = ata_ms
    again = tmp_path / "again.ms"
    convert.convert_subband(ATA, again)
    convert.convert_subband(ATA, again)  # over an existing MS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.ms"]
    for col in ("DATA", "FLAG", "UVW", "TIME", "ANTENNA1", "ANTENNA2"):
        np.testing.assert_array_equal(_column(ms, col), _column(again, col), err_msg=col)
    np.testing.assert_array_equal(_column(ms, "PHASE_DIR", "FIELD"), _column(again, "PHASE_DIR", "FIELD"))


# ---------------------------------------------------------------------------
# bad input and failed writes
# ---------------------------------------------------------------------------


def test_truncated_file_is_bad(tmp_path):
    cut = tmp_path / "2025-10-05T03:12:45_sb07.hdf5"
    data = ATA.read_bytes()
    cut.write_bytes(data[: int(0.4 * len(data))])
    ms = tmp_path / "sb07.ms"
    with pytest.raises(BadSubbandFile, match=cut.name) as info:
        convert.convert_subband(cut, ms)
    assert "\n" not in str(info.value) and "re-transfer" in str(info.value)
    assert not ms.exists() and not temporary_name(ms).exists()


def test_missing_file_is_bad(tmp_path):
    ghost = tmp_path / "2025-10-05T03:12:45_sb09.hdf5"
    with pytest.raises(BadSubbandFile, match=ghost.name):
        convert.convert_subband(ghost, tmp_path / "sb09.ms")
    assert not (tmp_path / "sb09.ms").exists()


def test_not_hdf5_is_bad(tmp_path):
    junk = tmp_path / "2025-10-05T03:12:45_sb01.hdf5"
    junk.write_text("not a UVH5 file\n")
    with pytest.raises(BadSubbandFile, match=junk.name):
        convert.convert_subband(junk, tmp_path / "sb01.ms")


def test_hdf5_that_is_not_uvh5_is_bad(tmp_path):
    import h5py

    other = tmp_path / "2025-10-05T03:12:45_sb02.hdf5"
    with h5py.File(other, "w") as f:
        f["Header/whatever"] = np.arange(3)
    with pytest.raises(BadSubbandFile, match=other.name) as info:
        convert.convert_subband(other, tmp_path / "sb02.ms")
    assert "\n" not in str(info.value)


def test_disk_full_is_transient_and_keeps_old_ms(ata_ms, tmp_path, monkeypatch):
    from pyuvdata import UVData

    ms = tmp_path / "ata.ms"
    shutil.copytree(ata_ms[0], ms)
    before = _column(ms, "DATA")

    def full_disk(self, filename, **kwargs):
        Path(filename).mkdir()
        (Path(filename) / "table.f1").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(UVData, "write_ms", full_disk)
    with pytest.raises(TransientError, match="ata.ms"):
        convert.convert_subband(ATA, ms)
    assert not temporary_name(ms).exists()
    np.testing.assert_array_equal(_column(ms, "DATA"), before)


# ---------------------------------------------------------------------------
# DSA-110 drift-scan files
# ---------------------------------------------------------------------------


def test_dsa_file_is_phased_to_the_block_meridian(dsa_files, tmp_path):
    mid = T0_JD + 60 / 86400
    result = convert.convert_subband(dsa_files[3], tmp_path / "sb03.ms", block_mid_jd=mid)
    ra, dec = phasing.block_phase_center(mid, DEC)
    assert result.phase_center_rule == "block meridian"
    assert result.phase_center_ra_deg == pytest.approx(math.degrees(ra), abs=1e-9)
    assert result.phase_center_dec_deg == pytest.approx(math.degrees(dec), abs=1e-9)
    assert result.uvw_check_max_m < 1e-3  # recomputed, although the file's UVWs are off by cm
    ms = Path(result.ms_path)
    assert list(_column(ms, "TELESCOPE_NAME", "OBSERVATION")) == ["DSA-110"]
    freqs = _column(ms, "CHAN_FREQ", "SPECTRAL_WINDOW")[0]
    assert np.all(np.diff(freqs) > 0) and np.all(_column(ms, "CHAN_WIDTH", "SPECTRAL_WINDOW") > 0)
    np.testing.assert_allclose(_column(ms, "PHASE_DIR", "FIELD")[0, 0], [ra, dec], atol=1e-12)


def test_subbands_of_a_block_share_the_phase_center(dsa_files, tmp_path):
    mid = T0_JD + 150 / 86400
    a = convert.convert_subband(dsa_files[3], tmp_path / "a.ms", block_mid_jd=mid)
    b = convert.convert_subband(dsa_files[12], tmp_path / "b.ms", block_mid_jd=mid)
    assert (a.phase_center_ra_deg, a.phase_center_dec_deg, a.phase_center_name) == (
        b.phase_center_ra_deg, b.phase_center_dec_deg, b.phase_center_name,
    )
    # Without the block's mid-time each file uses its own: 40 s apart in RA.
    c = convert.convert_subband(dsa_files[12], tmp_path / "c.ms")
    assert abs(c.phase_center_ra_deg - a.phase_center_ra_deg) > 0.1


def test_explicit_phase_center_wins(dsa_files, tmp_path):
    target = (math.radians(304.0), math.radians(54.5))
    result = convert.convert_subband(dsa_files[3], tmp_path / "x.ms", phase_center=target)
    assert result.phase_center_rule == "given"
    assert result.phase_center_ra_deg == pytest.approx(304.0) and result.phase_center_dec_deg == pytest.approx(54.5)
    assert result.uvw_check_max_m < 1e-3
