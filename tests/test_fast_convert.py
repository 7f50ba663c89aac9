"""Tests of contimg.fast_convert: the same MS as contimg.convert, column by column."""

from __future__ import annotations

import errno
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import ATA_UVH5, require

from contimg import convert, fast_convert, mswrite, telescope
from contimg import simulate as sim
from contimg.errors import BadSubbandFile, TransientError
from contimg.products import temporary_name

SUBBAND = 7
# Subtables the MS must hold the same way; HISTORY differs only by its timestamps.
SUBTABLES = ("ANTENNA", "FIELD", "SPECTRAL_WINDOW", "POLARIZATION", "DATA_DESCRIPTION", "OBSERVATION",
             "FEED", "SOURCE", "POINTING", "PROCESSOR", "STATE")
EXACT_ROW_COLUMNS = ("FLAG", "WEIGHT_SPECTRUM", "WEIGHT", "ANTENNA1", "ANTENNA2", "TIME",
                     "TIME_CENTROID", "INTERVAL", "EXPOSURE", "SCAN_NUMBER", "FIELD_ID", "DATA_DESC_ID",
                     "ARRAY_ID", "OBSERVATION_ID", "FEED1", "FEED2", "FLAG_ROW", "STATE_ID", "PROCESSOR_ID")


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


def _simulated_subband(out: Path, preset: str = "small") -> Path:
    """One subband file of a simulated block (gains, noise, a few sources), via contimg.simulate."""
    scenario = sim.Scenario(preset=preset, n_blocks=1, n_random_sources=5, catalogue_calibrators=False, seed=5)
    plan = sim.plan_night(scenario)
    planned = plan.files[0][SUBBAND]
    uvd = sim.subband_uvdata(plan, planned, sim.block_directions(plan, 0)[:, SUBBAND])
    path = out / planned.filename
    sim.write_subband_file(uvd, path)
    return path


def _awkward_variant(raw: Path, out: Path) -> Path:
    """The same data as a real correlator might order it.

    Descending channels (real DSA-110 subbands run downwards), AIPS
    polarization order (XX YY XY YX), a third of the baselines stored
    ant1 > ant2, and flags and varying sample counts: every reordering and
    the median WEIGHT have something to do.
    """
    from pyuvdata import UVData

    uvd = UVData.from_file(str(raw), file_type="uvh5", run_check=False)
    uvd.uvw_array = uvd.uvw_array.astype(np.float64)
    uvd.reorder_freqs(channel_order="-freq")
    uvd.channel_width = -np.abs(uvd.channel_width)  # as a descending file may carry them
    uvd.reorder_pols(order="AIPS")
    cross = np.nonzero(uvd.ant_1_array != uvd.ant_2_array)[0]
    uvd.conjugate_bls(convention=cross[::3])
    rng = np.random.default_rng(3)
    uvd.flag_array = rng.random(uvd.flag_array.shape) < 0.05
    uvd.nsample_array = rng.choice(np.array([0.0, 0.5, 1.0], dtype=np.float32), size=uvd.nsample_array.shape,
                                   p=[0.02, 0.1, 0.88]).astype(np.float32)
    path = out / raw.name.replace(f"sb{SUBBAND:02d}", "sb08")
    sim.write_subband_file(uvd, path)
    return path


@pytest.fixture(scope="module")
def raw_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    plain = _simulated_subband(d)
    return {"simulated": plain, "awkward": _awkward_variant(plain, d), "ata": require(ATA_UVH5)}


CASES = {
    # name: (file, keyword arguments of the conversion)
    "block meridian": ("simulated", {"block_mid_jd": 2460953.6260}),
    "own mid-time": ("simulated", {}),
    "reordered, conjugated, flagged": ("awkward", {"block_mid_jd": 2460953.6260}),
    "given centre": ("simulated", {"phase_center": (math.radians(300.5), math.radians(54.2))}),
    "kept centre (ATA)": ("ata", {}),
}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, raw_files, tmp_path_factory):
    """(reference MS, its result, fast MS, its result) of one case."""
    which, kwargs = CASES[request.param]
    d = tmp_path_factory.mktemp("pair")
    ref = convert.convert_subband(raw_files[which], d / "ref.ms", **kwargs)
    fast = fast_convert.convert_subband_fast(raw_files[which], d / "fast.ms", **kwargs)
    return Path(ref.ms_path), ref, Path(fast.ms_path), fast


def _table(path: Path, sub: str = ""):
    from casacore import tables

    return tables.table(str(path / sub) if sub else str(path), ack=False)


def _column(ms: Path, name: str, sub: str = "") -> np.ndarray:
    with _table(ms, sub) as t:
        return t.getcol(name)


def _same(a, b) -> bool:
    """Equality of table keywords and cells: nested dicts, arrays, scalars."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def _cells(t, col: str) -> list:
    """Every cell of a column; None where undefined (getcol fails on those)."""
    return [t.getcell(col, i) if t.iscelldefined(col, i) else None for i in range(t.nrows())]


# ---------------------------------------------------------------------------
# equivalence with the pyuvdata path
# ---------------------------------------------------------------------------


def test_same_result(pair):
    _, ref, _, fast = pair
    a, b = ref.as_dict(), fast.as_dict()
    for d in (a, b):
        d.pop("seconds"), d.pop("ms_path")
    assert a == b
    assert fast.uvw_check_max_m < 1e-3


def test_main_table_columns_identical(pair, request):
    ref, _, fast, _ = pair
    # The ATA file's sample counts are invalid: the pyuvdata path writes its MS.
    fallback = request.node.callspec.params["pair"] == "kept centre (ATA)"
    with _table(ref) as r, _table(fast) as f:
        assert f.nrows() == r.nrows()
        assert set(f.colnames()) == set(r.colnames())
        for col in EXACT_ROW_COLUMNS:
            # Same rows in the same order: row by row, bit for bit.
            np.testing.assert_array_equal(f.getcol(col), r.getcol(col), err_msg=col)
        # DATA bit for bit too: the recurrent phasors of fast_convert._data_kernel
        # are checked against every float32 rounding boundary.
        fd, rd = f.getcol("DATA"), r.getcol("DATA")
        assert np.array_equal(fd.view(np.uint64), rd.view(np.uint64)), (
            f"DATA: {np.count_nonzero(fd != rd)} of {fd.size} values differ")
        weight = r.getcol("WEIGHT")
        ok = weight != 0  # pyuvdata leaves SIGMA undefined where WEIGHT is 0
        np.testing.assert_array_equal(f.getcol("SIGMA")[ok], r.getcol("SIGMA")[ok])
        assert np.all(f.getcol("SIGMA")[~ok] == 0)
        uvw_diff = np.abs(f.getcol("UVW") - r.getcol("UVW"))
        assert uvw_diff.max() < 1e-3, f"UVW differs by up to {uvw_diff.max()} m"
        for col in r.colnames():
            assert _same(f.getcolkeywords(col), r.getcolkeywords(col)), f"{col} keywords"
        # Subtable keywords hold the tables' paths; the rest must be equal.
        fk, rk = f.getkeywords(), r.getkeywords()
        assert fk.keys() == rk.keys()
        assert all(_same(fk[k], rk[k]) for k in rk if not isinstance(rk[k], str) or not rk[k].startswith("Table:"))
        # pyuvdata's data managers, except that the per-row arrays have a fixed
        # shape in a TiledColumnStMan and the times are in a StandardStMan
        # (contimg.mswrite.main_table_layout).
        fixed = set(mswrite.fixed_shape_columns(1, 1))
        times = {"TIME", "TIME_CENTROID"}

        def manager(m):
            if fallback:
                return m["TYPE"]
            if set(m["COLUMNS"]) <= fixed:
                return "TiledColumnStMan"
            return "StandardStMan" if set(m["COLUMNS"]) <= times else m["TYPE"]

        expected = {m["NAME"]: (manager(m), sorted(m["COLUMNS"])) for m in r.getdminfo().values()}
        assert {m["NAME"]: (m["TYPE"], sorted(m["COLUMNS"])) for m in f.getdminfo().values()} == expected
        for col in set() if fallback else fixed:
            assert f.getcoldesc(col)["shape"].tolist() == list(r.getcell(col, 0).shape), col


@pytest.mark.parametrize("sub", SUBTABLES)
def test_subtables_identical(pair, sub):
    ref, _, fast, _ = pair
    with _table(ref, sub) as r, _table(fast, sub) as f:
        assert f.nrows() == r.nrows(), sub
        assert sorted(f.colnames()) == sorted(r.colnames()), sub
        for col in r.colnames():
            for i, (a, b) in enumerate(zip(_cells(f, col), _cells(r, col), strict=True)):
                assert _same(a, b), f"{sub}.{col}[{i}]: {a!r} != {b!r}"
            assert _same(f.getcolkeywords(col), r.getcolkeywords(col)), f"{sub}.{col} keywords"
        assert _same(f.getkeywords(), r.getkeywords()), f"{sub} keywords"


def test_dsa110_conventions(pair):
    _, _, fast_ms, fast = pair
    if fast.telescope != telescope.TELESCOPE_NAME:
        pytest.skip("not a DSA-110 file")
    assert list(_column(fast_ms, "TELESCOPE_NAME", "OBSERVATION")) == ["DSA-110"]
    np.testing.assert_array_equal(_column(fast_ms, "DISH_DIAMETER", "ANTENNA")[1:], telescope.DISH_DIAMETER_M)
    freqs = _column(fast_ms, "CHAN_FREQ", "SPECTRAL_WINDOW")[0]
    assert np.all(np.diff(freqs) > 0) and np.all(_column(fast_ms, "CHAN_WIDTH", "SPECTRAL_WINDOW") > 0)
    assert np.all(_column(fast_ms, "ANTENNA1") <= _column(fast_ms, "ANTENNA2"))
    assert list(_column(fast_ms, "NAME", "FIELD")) == [fast.phase_center_name]
    np.testing.assert_allclose(
        _column(fast_ms, "PHASE_DIR", "FIELD")[0, 0],
        [math.radians(fast.phase_center_ra_deg), math.radians(fast.phase_center_dec_deg)], atol=1e-12,
    )


def _pyuvdata_rotation(vis, dw_m, freq_hz):
    """DATA rotated as pyuvdata's ``UVData._apply_w_proj`` does it (on its complex128 data_array), as complex64."""
    data_array = vis.astype(np.complex128)
    delta_w_lambda = dw_m.reshape(-1, 1) * (1.0 / 299792458.0) * freq_hz.reshape(1, -1)
    data_array *= np.exp((-1j * 2 * np.pi) * delta_w_lambda[:, :, None])
    return data_array.astype(np.complex64)


@pytest.mark.parametrize("case", ["dsa110", "ascending", "conjugated rows", "complex128", "long baselines",
                                  "zeros and tiny", "off grid"])
def test_data_kernel_is_pyuvdata_bit_for_bit(case):
    """The recurrent phasors give pyuvdata's complex64 values exactly, in every layout the kernel takes.

    500 rows x 48 channels x 4 polarizations of Gaussian visibilities (the
    "long baselines" case: changes of w up to 10 km); reference: numpy as
    pyuvdata's _apply_w_proj computes it, then the conjugation and
    reordering written out by hand. Tolerance: none (bits compared).
    """
    rng = np.random.default_rng(7)
    n, n_freqs, n_pols = 500, 48, 4
    freq = 1.3114e9 + np.arange(n_freqs) * 244140.625
    dtype = np.complex128 if case == "complex128" else np.complex64
    vis = (rng.standard_normal((n, n_freqs, n_pols)) + 1j * rng.standard_normal((n, n_freqs, n_pols))).astype(dtype)
    dw_m = rng.uniform(-1e4 if case == "long baselines" else -2600, 1e4 if case == "long baselines" else 2600, n)
    if case == "zeros and tiny":
        vis[:20] = 0
        vis[20:40] *= 1e-36
        vis[40:60] *= 1e30
    if case == "off grid":
        freq = freq + rng.uniform(-1e-7, 1e-7, n_freqs)
        dw_m = dw_m / 1e3
    conj = rng.random(n) < 0.5 if case == "conjugated rows" else np.zeros(n, bool)
    reversed_channels = case != "ascending"
    chan_dst = (np.arange(n_freqs)[::-1] if reversed_channels else np.arange(n_freqs)).copy()
    pol_src = np.arange(n_pols)
    pol_src_conj = np.array([0, 2, 1, 3])  # XX, YX, XY, YY: the cross-hands swap on conjugated rows
    dw_over_c = dw_m * (1.0 / 299792458.0)
    recurrence = fast_convert._evenly_spaced(freq, dw_over_c)
    assert recurrence, "the recurrence should apply to every case here"

    out = np.empty((n, n_freqs, n_pols), dtype=np.complex64)
    exact = fast_convert._data_kernel(vis, out, fast_convert._flat(vis), fast_convert._flat(out), dw_over_c, freq,
                                      True, recurrence, conj, chan_dst, pol_src, pol_src_conj,
                                      fast_convert.numpy_product_formula())

    rotated = _pyuvdata_rotation(vis, dw_m, freq)
    expected = np.empty_like(out)
    for r in range(n):
        pols = pol_src_conj if conj[r] else pol_src
        row = rotated[r][:, pols]
        expected[r, chan_dst] = row if conj[r] else np.conj(row)
    differ = np.count_nonzero(out.view(np.uint64) != expected.view(np.uint64))
    assert differ == 0, f"{differ} of {out.size} values differ from pyuvdata's"
    # The check did pick channels to recompute (a few per thousand), and not most of them.
    assert 0 < exact < 0.05 * n * n_freqs


def test_numpy_product_formula_is_found_and_told_apart():
    """The probe finds how numpy multiplies complex numbers here, and the other formulas give other bits.

    The formulas differ only where products nearly cancel (1 visibility in
    ~3e7 of the bench file); without telling them apart, DATA could not be
    pyuvdata's bit for bit.
    """
    formula = fast_convert.numpy_product_formula()
    assert formula in (0, 1, 2), "numpy's complex product is none of the known formulas on this machine"
    rng = np.random.default_rng(3)
    a = rng.standard_normal((8, 8, 4)) + 1j * rng.standard_normal((8, 8, 4))
    phasor = np.exp(1j * rng.uniform(-np.pi, np.pi, (8, 8)))
    # Cancelling products: b = conj(a) scaled, so re(a b) = |a|^2 and im(a b) nearly cancels; and the other way.
    a[..., 1] = np.conj(phasor) * (1 + 1e-12j) * 1j
    data = a * phasor[:, :, None]
    assert fast_convert._products_match(a, phasor, data, formula)
    others = [f for f in (0, 1, 2) if f != formula]
    assert not all(fast_convert._products_match(a, phasor, data, f) for f in others)


def test_a_real_rotation_happened(raw_files, tmp_path):
    """Guard against a vacuous comparison: the rephasing changes DATA by a lot."""
    import h5py

    res = fast_convert.convert_subband_fast(raw_files["simulated"], tmp_path / "x.ms", block_mid_jd=2460953.6260)
    with h5py.File(raw_files["simulated"], "r") as f:
        raw = f["Data/visdata"][()]
    data = np.conj(_column(Path(res.ms_path), "DATA"))  # MS holds the conjugate (pyuvdata's flip_conj)
    cross = _column(Path(res.ms_path), "ANTENNA1") != _column(Path(res.ms_path), "ANTENNA2")
    dphi = np.angle(data[cross] * np.conj(raw[cross]))
    assert np.median(np.abs(dphi)) > 0.1
    np.testing.assert_allclose(np.abs(data), np.abs(raw), rtol=1e-5)


# ---------------------------------------------------------------------------
# idempotence, bad input and failed writes
# ---------------------------------------------------------------------------


def test_convert_is_idempotent(raw_files, tmp_path):
    ms = tmp_path / "again.ms"
    first = fast_convert.convert_subband_fast(raw_files["simulated"], ms)
    data = _column(ms, "DATA")
    second = fast_convert.convert_subband_fast(raw_files["simulated"], ms)  # over an existing MS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.ms"]
    np.testing.assert_array_equal(_column(ms, "DATA"), data)
    assert first.phase_center_name == second.phase_center_name


def test_truncated_file_is_bad(raw_files, tmp_path):
    data = raw_files["simulated"].read_bytes()
    for fraction in (0.4, 0.95):  # inside the header; inside the data sets
        cut = tmp_path / f"2025-10-05T03:12:45_sb{int(fraction * 10):02d}.hdf5"
        cut.write_bytes(data[: int(fraction * len(data))])
        ms = tmp_path / f"{cut.stem}.ms"
        with pytest.raises(BadSubbandFile, match=cut.name) as info:
            fast_convert.convert_subband_fast(cut, ms)
        assert "\n" not in str(info.value) and "re-transfer" in str(info.value)
        assert not ms.exists() and not temporary_name(ms).exists()


def test_missing_file_is_bad(tmp_path):
    ghost = tmp_path / "2025-10-05T03:12:45_sb09.hdf5"
    with pytest.raises(BadSubbandFile, match=ghost.name) as info:
        fast_convert.convert_subband_fast(ghost, tmp_path / "sb09.ms")
    assert "does not exist" in str(info.value)
    assert not (tmp_path / "sb09.ms").exists()


def test_not_uvh5_is_bad(tmp_path):
    import h5py

    junk = tmp_path / "2025-10-05T03:12:45_sb01.hdf5"
    junk.write_text("not a UVH5 file\n")
    other = tmp_path / "2025-10-05T03:12:45_sb02.hdf5"
    with h5py.File(other, "w") as f:
        f["Header/whatever"] = np.arange(3)
    for path in (junk, other):
        with pytest.raises(BadSubbandFile, match=path.name) as info:
            fast_convert.convert_subband_fast(path, tmp_path / "x.ms")
        assert "\n" not in str(info.value)
    assert not (tmp_path / "x.ms").exists()


def test_data_shape_mismatch_is_bad(raw_files, tmp_path):
    import h5py

    bad = tmp_path / "2025-10-05T03:12:45_sb03.hdf5"
    shutil.copy(raw_files["simulated"], bad)
    with h5py.File(bad, "r+") as f:
        flags = f["Data/flags"][()]
        del f["Data/flags"]
        f["Data/flags"] = flags[:-1]
    with pytest.raises(BadSubbandFile, match="Data/flags"):
        fast_convert.convert_subband_fast(bad, tmp_path / "x.ms")


def test_disk_full_is_transient_and_keeps_old_ms(raw_files, tmp_path, monkeypatch):
    from pyuvdata.utils.io import ms as ms_utils

    ms = tmp_path / "sb.ms"
    fast_convert.convert_subband_fast(raw_files["ata"], ms)
    before = _column(ms, "DATA")

    def full_disk(filepath, **kwargs):
        Path(filepath).mkdir()
        (Path(filepath) / "table.f1").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ms_utils, "init_ms_file", full_disk)
    with pytest.raises(TransientError, match="sb.ms"):
        fast_convert.convert_subband_fast(raw_files["ata"], ms)
    assert not temporary_name(ms).exists()
    np.testing.assert_array_equal(_column(ms, "DATA"), before)


def test_blocks_smaller_than_the_file(raw_files, tmp_path, monkeypatch):
    """Several blocks, the last one partial, give the same MS as one block."""
    whole = fast_convert.convert_subband_fast(raw_files["awkward"], tmp_path / "whole.ms")
    monkeypatch.setattr(fast_convert, "ROWS_PER_BLOCK", 1000)
    parts = fast_convert.convert_subband_fast(raw_files["awkward"], tmp_path / "parts.ms")
    for col in ("DATA", "FLAG", "WEIGHT_SPECTRUM", "WEIGHT", "UVW"):
        np.testing.assert_array_equal(_column(Path(parts.ms_path), col), _column(Path(whole.ms_path), col))


@pytest.mark.parametrize("which", ["simulated", "awkward"])
def test_blocks_turned_by_two_threads(raw_files, tmp_path, monkeypatch, which):
    """Blocks taken in turn by two threads and written in place: the MS of one block, bit for bit."""
    one = fast_convert.convert_subband_fast(raw_files[which], tmp_path / "one.ms", block_mid_jd=2460953.6260)
    monkeypatch.setattr(fast_convert, "ROWS_PER_BLOCK", 999)  # several blocks, the last one short
    threads = []
    data_pass = fast_convert._data_pass
    monkeypatch.setattr(fast_convert, "_data_pass",
                        lambda *a: threads.append(threading.get_ident()) or data_pass(*a))
    two = fast_convert.convert_subband_fast(raw_files[which], tmp_path / "two.ms", block_mid_jd=2460953.6260)
    assert len(set(threads)) == 2, "the DATA pass did not run on two threads"
    for col in ("DATA", "FLAG", "WEIGHT_SPECTRUM", "WEIGHT", "SIGMA", "UVW"):
        a, b = _column(Path(two.ms_path), col), _column(Path(one.ms_path), col)
        assert a.tobytes() == b.tobytes(), col


def test_wrong_preset_guess_is_written_over(raw_files, tmp_path, monkeypatch):
    """A template preset with values the file does not have: those columns are written, the MS is the same."""
    right = fast_convert.convert_subband_fast(raw_files["simulated"], tmp_path / "right.ms")
    with _table(Path(right.ms_path)) as t:
        assert len(set(t.getcol("INTERVAL"))) == 1 and set(t.getcol("SCAN_NUMBER")) == {1}
    monkeypatch.setattr(fast_convert, "_likely_constants",
                        lambda uvd: {"INTERVAL": 1.5, "EXPOSURE": 2.5, "SCAN_NUMBER": 7, "FIELD_ID": 3})
    wrong = fast_convert.convert_subband_fast(raw_files["simulated"], tmp_path / "wrong.ms")
    for col in ("INTERVAL", "EXPOSURE", "SCAN_NUMBER", "FIELD_ID", "DATA_DESC_ID", "TIME"):
        np.testing.assert_array_equal(_column(Path(wrong.ms_path), col), _column(Path(right.ms_path), col))


def test_fixed_subtables_written_once_per_inputs(raw_files, tmp_path, monkeypatch):
    """ANTENNA, DATA_DESCRIPTION, POLARIZATION, SPECTRAL_WINDOW: laid out again for the same inputs only."""
    import collections

    from pyuvdata import UVData
    from pyuvdata.utils.io import ms as ms_utils

    from contimg import mstables

    monkeypatch.setattr(mstables, "_written", collections.OrderedDict())
    calls = []
    for name in ("write_ms_antenna", "write_ms_data_description", "write_ms_polarization",
                 "write_ms_spectral_window"):
        monkeypatch.setattr(ms_utils, name, lambda *a, _f=getattr(ms_utils, name), _n=name, **k:
                            calls.append(_n) or _f(*a, **k))
    first = fast_convert.convert_subband_fast(raw_files["simulated"], tmp_path / "first.ms")
    assert len(calls) == 4
    # AIPS polarization order: POLARIZATION's inputs differ; the same channels, one window.
    fast_convert.convert_subband_fast(raw_files["awkward"], tmp_path / "awkward.ms")
    awkward = calls[4:]
    assert "write_ms_polarization" in awkward
    assert "write_ms_spectral_window" not in awkward and "write_ms_data_description" not in awkward
    again = fast_convert.convert_subband_fast(raw_files["simulated"], tmp_path / "again.ms")
    assert len(calls) == 4 + len(awkward)  # all four laid out again
    for sub in ("ANTENNA", "DATA_DESCRIPTION", "POLARIZATION", "SPECTRAL_WINDOW"):
        with _table(Path(first.ms_path), sub) as a, _table(Path(again.ms_path), sub) as b:
            assert a.nrows() == b.nrows() and a.colnames() == b.colnames(), sub
            for col in a.colnames():
                assert all(_same(x, y) for x, y in zip(_cells(a, col), _cells(b, col), strict=True)), f"{sub}.{col}"
    # Any input changed, another entry.
    uvd = UVData.from_file(str(raw_files["simulated"]), file_type="uvh5", read_data=False, run_check=False)
    before = {n: mstables.subtable_inputs(uvd, n) for n in ("ANTENNA", "SPECTRAL_WINDOW")}
    uvd.telescope.antenna_positions = uvd.telescope.antenna_positions + 1e-9
    uvd.freq_array = uvd.freq_array + 1.0
    assert all(mstables.subtable_inputs(uvd, n) != before[n] for n in before)
    with pytest.raises(ValueError, match="FIELD"):
        mstables.subtable_inputs(uvd, "FIELD")


# ---------------------------------------------------------------------------
# the metadata checks: header, and the MS as written
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("defect", ["auto with a uvw", "unknown antenna"])
@pytest.mark.filterwarnings("ignore:The uvw_array does not match")  # pyuvdata's check, on the pyuvdata path
def test_inconsistent_header_is_bad_for_both_converters(raw_files, tmp_path, defect):
    """The fast path's header check (less pyuvdata's geometry recomputation) rejects what pyuvdata's rejects."""
    import h5py

    bad = tmp_path / "2025-10-05T03:12:45_sb04.hdf5"
    shutil.copy(raw_files["simulated"], bad)
    with h5py.File(bad, "r+") as f:
        if defect == "auto with a uvw":
            auto = int(np.flatnonzero(f["Header/ant_1_array"][()] == f["Header/ant_2_array"][()])[0])
            f["Header/uvw_array"][auto] = [2.0, 0.0, 0.0]
        else:
            ants = f["Header/ant_1_array"][()]
            ants[ants == ants[0]] = 1000  # not one of the telescope's antennas
            f["Header/ant_1_array"][...] = ants
    for converter in (fast_convert.convert_subband_fast, convert.convert_subband):
        with pytest.raises(BadSubbandFile, match="not a consistent UVH5 data set") as info:
            converter(bad, tmp_path / "x.ms")
        assert "\n" not in str(info.value)
    assert not (tmp_path / "x.ms").exists()


def test_uvw_check_sees_wrong_per_time_uvws(raw_files, tmp_path, monkeypatch):
    """The UVW check recomputes a sample of rows independently of the per-time geometry."""
    from contimg import phasing

    spread = phasing.spread_geometry

    def off_by_a_centimetre(uvd, small, index):
        spread(uvd, small, index)
        uvd.uvw_array = uvd.uvw_array + [0.0, 0.0, 0.01]

    monkeypatch.setattr(phasing, "spread_geometry", off_by_a_centimetre)
    res = fast_convert.convert_subband_fast(raw_files["simulated"], tmp_path / "x.ms", block_mid_jd=2460953.6260)
    assert res.uvw_check_max_m == pytest.approx(0.01) and res.uvw_check_rms_m == pytest.approx(0.01)


def test_written_ms_check_reads_the_ms_back(raw_files, tmp_path):
    from casacore import tables

    src = raw_files["simulated"]
    ms = Path(fast_convert.convert_subband_fast(src, tmp_path / "x.ms").ms_path)
    f = fast_convert._open(src)
    try:
        uvd, _ = fast_convert._read_header(f, src)
        _, center = convert.choose_phase_center(uvd, src, phase_center=None, block_mid_jd=None)
        fast_convert._geometry(uvd, center)
    finally:
        f.close()
    assert fast_convert._check_written_ms(ms, uvd, final=ms) == {"max_m": 0.0, "rms_m": 0.0}
    with tables.table(str(ms), readonly=False, ack=False) as t:
        middle = t.nrows() // 2  # not a row of the recomputed sample
        t.putcell("UVW", middle, t.getcell("UVW", middle) + 1e-6)
    with pytest.raises(RuntimeError, match="does not hold the UVWs"):
        fast_convert._check_written_ms(ms, uvd, final=ms)


# ---------------------------------------------------------------------------
# the ways the big columns are read and written
# ---------------------------------------------------------------------------


def _all_columns(ms: Path) -> dict[str, np.ndarray]:
    with _table(ms) as t:
        return {c: t.getcol(c) for c in t.colnames() if c != "FLAG_CATEGORY"}


@pytest.mark.parametrize("which", ["simulated", "awkward"])
def test_direct_writes_equal_putcol_and_h5py_reads_equal_mapped(raw_files, tmp_path, monkeypatch, which):
    """The four ways (file mapped or read with h5py; columns written directly or through putcol): one MS."""
    from contimg import mswrite

    kwargs = {"block_mid_jd": 2460953.6260}
    ref = fast_convert.convert_subband_fast(raw_files[which], tmp_path / "mapped-direct.ms", **kwargs)
    with _table(Path(ref.ms_path)) as t:
        # The reference really is direct: its DATA is a TiledColumnStMan.
        assert {m["TYPE"] for m in t.getdminfo().values() if "DATA" in m["COLUMNS"]} == {"TiledColumnStMan"}
    want = _all_columns(Path(ref.ms_path))
    mapped = []
    monkeypatch.setattr(fast_convert, "_map_datasets", lambda data, path: mapped.append(path) or (None, None))
    monkeypatch.setattr(fast_convert, "ROWS_PER_BLOCK", 1000)  # several blocks, both buffers in turn
    h5py_direct = fast_convert.convert_subband_fast(raw_files[which], tmp_path / "h5py-direct.ms", **kwargs)
    assert mapped, "the h5py reader was not used"
    monkeypatch.setattr(mswrite, "_template", lambda *shape: None)
    h5py_putcol = fast_convert.convert_subband_fast(raw_files[which], tmp_path / "h5py-putcol.ms", **kwargs)
    for res in (h5py_direct, h5py_putcol):
        got = _all_columns(Path(res.ms_path))
        assert got.keys() == want.keys()
        for col in want:
            np.testing.assert_array_equal(got[col], want[col], err_msg=f"{res.ms_path}: {col}")


def test_direct_layout_self_test_and_probes(tmp_path):
    """The self-test passes here, and a direct write that casacore reads differently is caught."""
    from contimg import mswrite

    assert mswrite._direct_layout_works(48, 4)
    n = 1000
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(n, 48, 4)) + 1j * rng.normal(size=(n, 48, 4))).astype(np.complex64)
    table = mswrite.MainTable(tmp_path / "x.ms", n, 48, 4)
    assert table.direct
    table.put_spectra(0, data, np.zeros(data.shape, bool), np.ones(data.shape, np.float32))
    for name, cell in (("WEIGHT", (4,)), ("SIGMA", (4,)), ("UVW", (3,))):
        table.put_column(name, np.zeros((n, *cell)))
    table.close_table()
    table._probes["DATA", n // 2] = table._probes["DATA", n // 2] + 1  # as if casacore read other bytes
    with pytest.raises(RuntimeError, match="row 500 of DATA"):
        table.finish()


@pytest.mark.parametrize("where", ["template", "FLAG", "DATA", "h5py blocks"])
def test_disk_full_while_writing_directly(raw_files, tmp_path, monkeypatch, request, where):
    """A full disk while the big columns are written: TransientError, no temporary MS, the old MS kept.

    ``FLAG`` and ``DATA``: the tile file's writes in the passes without the
    GIL go to ``/dev/full`` (every write fails with ENOSPC).
    """
    from contimg import mswrite

    ms = tmp_path / "sb.ms"
    fast_convert.convert_subband_fast(raw_files["simulated"], ms)
    before = _column(ms, "DATA")
    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "template":
        def no_space(self, path):
            path.mkdir()
            raise full
        monkeypatch.setattr(mswrite._Template, "write", no_space)
    elif where == "h5py blocks":
        as_bytes = mswrite._as_bytes
        calls = []

        def no_space(name, block):
            calls.append(name)
            if len(calls) > 7:  # some blocks are written first
                raise full
            return as_bytes(name, block)
        monkeypatch.setattr(mswrite, "_as_bytes", no_space)
        monkeypatch.setattr(fast_convert, "_map_datasets", lambda data, path: (None, None))
        monkeypatch.setattr(fast_convert, "ROWS_PER_BLOCK", 1000)  # several blocks
    else:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full on this system to fail writes with ENOSPC")
        dev_full = os.open("/dev/full", os.O_WRONLY)
        request.addfinalizer(lambda: os.close(dev_full))
        direct_files = mswrite.MainTable.direct_files

        def to_dev_full(self):
            fds = direct_files(self)
            return None if fds is None else {**fds, where: dev_full}
        monkeypatch.setattr(mswrite.MainTable, "direct_files", to_dev_full)
        monkeypatch.setattr(fast_convert, "ROWS_PER_BLOCK", 1000)  # several blocks
    with pytest.raises(TransientError, match="sb.ms"):
        fast_convert.convert_subband_fast(raw_files["simulated"], ms)
    assert not temporary_name(ms).exists()
    np.testing.assert_array_equal(_column(ms, "DATA"), before)
