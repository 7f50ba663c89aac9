"""Fast conversion of one subband file (UVH5) to a Measurement Set.

:func:`convert_subband_fast` writes the same Measurement Set as
:func:`contimg.convert.convert_subband` (the pyuvdata path) in a fraction of
the time and memory. The split of the work:

- **Metadata through pyuvdata.** The file is opened once with h5py; pyuvdata
  reads only its ``Header`` (``read_data=False``) from that open handle, and
  the phase-centre rule, the UVW recomputation from antenna positions and the
  rephasing run on that metadata-only object through the very functions the
  pyuvdata path calls (:func:`convert.choose_phase_center`,
  :func:`phasing.recompute_geometry`, :func:`convert.apply_phase_center`,
  :func:`convert.prepare_for_ms`). The geometry is therefore the pyuvdata
  path's by construction, not a re-derivation that could drift from it.
- **Visibilities streamed.** ``Data/visdata``, ``flags`` and ``nsamples`` are
  read in blocks of rows, rotated by the change of w (the same float64
  arithmetic as pyuvdata's ``_apply_w_proj``, so DATA is bit-identical),
  conjugated as pyuvdata's ``write_ms`` does (``flip_conj``), reordered
  (ascending channels, CASA polarization order, ant1 < ant2) and written with
  ``putcol``. Each byte of the file is read once and no full-size copy of the
  visibilities is ever held, so the peak memory is a few blocks of rows.
- **Skeleton and subtables by pyuvdata.** The main table is pyuvdata's
  skeleton (``init_ms_file``: same columns and storage managers) and the
  ANTENNA, FIELD, SPECTRAL_WINDOW, POLARIZATION... subtables are written by
  the pyuvdata functions ``write_ms`` itself calls, from the same metadata.

Rows are in the file's order, as in the pyuvdata path. SIGMA, which pyuvdata
leaves undefined where WEIGHT is 0, is 0 there. The MS is written to a
temporary sibling, checked (row count, antennas, and the UVWs read back
against UVWs recomputed from antenna positions: :func:`phasing.uvw_check`)
and renamed into place.

Files the fast path does not cover (more than one spectral window) are
handed to :func:`convert.convert_subband`; docs/conversion.md lists the
guarantees and the measured speed.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import convert, phasing
from .convert import ConvertResult
from .errors import BadSubbandFile

log = logging.getLogger(__name__)

ROWS_PER_BLOCK = 171 * 48
"""Rows read, rotated and written at a time: 8208 rows of the full preset
(48 channels x 4 polarizations) are 12.6 MB of visibilities. A multiple of
the 171-row tiles casacore picks for a (4, 48) cell, so that a block never
leaves a tile half written; large enough that per-call overheads vanish,
small enough to stay in the CPU caches' neighbourhood and keep memory flat."""

_C_M_S = 299792458.0  # astropy's constants.c, the value pyuvdata's rotation uses

# Messages of pyuvdata that are expected for raw DSA-110 data (see convert.py).
_UNITS_WARNING = "Writing in the MS file that the units"


@dataclass
class _Plan:
    """How each block of file rows becomes MS rows (all arrays per file row).

    Attributes
    ----------
    delta_w_m : ndarray of float64, shape (Nblts,) or None
        New minus old w of each row (metres), before any conjugation; None
        when the centre is kept (no rotation).
    freq_hz : ndarray of float64, shape (Nfreqs,)
        Channel frequencies in the file's order (the rotation's frequencies).
    chan_order : ndarray of int or None
        File channel of each MS channel; None when already ascending.
    conj_rows : ndarray of bool, shape (Nblts,)
        Rows pyuvdata conjugates to ant1 < ant2 (their XY and YX swap).
    conj_pol_order : ndarray of int
        Polarization permutation of a conjugated row.
    pol_order : ndarray of int or None
        File polarization of each MS correlation (CASA order); None when the
        file is already in that order.
    pol_order_pyuvdata : ndarray of int or slice
        The same as pyuvdata's ``write_ms`` computes it, for the POLARIZATION table.
    """

    delta_w_m: np.ndarray | None
    freq_hz: np.ndarray
    chan_order: np.ndarray | None
    conj_rows: np.ndarray
    conj_pol_order: np.ndarray
    pol_order: np.ndarray | None
    pol_order_pyuvdata: np.ndarray | slice


def convert_subband_fast(
    uvh5_path: str | os.PathLike,
    ms_path: str | os.PathLike,
    *,
    phase_center: tuple[float, float] | None = None,
    block_mid_jd: float | None = None,
) -> ConvertResult:
    """Convert one subband UVH5 file to a Measurement Set, fast.

    Same arguments, result, phase-centre rule and errors as
    :func:`contimg.convert.convert_subband`, and the same MS (see the module
    docstring for what is identical and docs/conversion.md for the figures).

    Parameters
    ----------
    uvh5_path : path
        The raw subband file.
    ms_path : path
        The MS to write; replaced atomically if it exists.
    phase_center : (float, float), optional
        ICRS (RA, Dec) in radians to phase to; overrides the rule.
    block_mid_jd : float, optional
        UTC Julian date of the block's middle; the phase centre of a
        drift-scan file is the meridian point at this time (default: the
        file's own mid-time).

    Returns
    -------
    ConvertResult
        ``seconds`` has ``read`` (header), ``phase`` (geometry), ``write``
        (visibilities read, rotated and written, subtables, check) and
        ``total``.

    Raises
    ------
    BadSubbandFile
        The file is missing, truncated, not UVH5 or inconsistent.
    TransientError
        Writing failed for lack of space or permission; retrying may help.
    """
    t0 = time.perf_counter()
    src, dst = Path(uvh5_path), Path(ms_path)
    f = _open(src)
    try:
        # ``meta`` owns the handle (pyuvdata closes it when ``meta`` is
        # collected), so it lives until the conversion is done.
        uvd, meta = _read_header(f, src)
        if int(uvd.Nspws) != 1:
            # pyuvdata writes several windows scan by scan; not worth a second
            # writer for a layout the DSA-110 never produces.
            log.info("%s has %d spectral windows; converting it with pyuvdata", src, uvd.Nspws)
            f.close()
            return convert.convert_subband(src, dst, phase_center=phase_center, block_mid_jd=block_mid_jd)
        data = _data_datasets(meta, uvd, src)
        t_read = time.perf_counter()

        rule, center = convert.choose_phase_center(uvd, src, phase_center=phase_center, block_mid_jd=block_mid_jd)
        plan = _geometry(uvd, center)
        t_phase = time.perf_counter()

        try:
            check = _write_ms_atomically(uvd, data, plan, src, dst)
        except _InvalidSampleCounts:
            # Rare and never a DSA-110 file: the pyuvdata path repairs them (convert._repair_nsamples).
            log.info("%s has invalid sample counts; converting it with pyuvdata", src)
            f.close()
            return convert.convert_subband(src, dst, phase_center=phase_center, block_mid_jd=block_mid_jd)
        t_write = time.perf_counter()
    finally:
        if f.id.valid:
            f.close()

    return convert.conversion_result(uvd, src, dst, rule, check, (t0, t_read, t_phase, t_write))


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _open(path: Path):
    """Open the file once for the whole conversion; failures are :class:`BadSubbandFile`."""
    import h5py

    if not path.is_file():
        raise BadSubbandFile(f"{path} does not exist; check the path, or leave this subband out of the block")
    try:
        return h5py.File(path, "r")
    except PermissionError as e:
        raise BadSubbandFile(f"{path} cannot be read ({e.strerror}); fix its permissions and resubmit the block") from e
    except OSError as e:
        # h5py raises OSError for truncated and non-HDF5 files alike.
        raise _not_uvh5(path, e) from e


def _not_uvh5(path: Path, e: BaseException) -> BadSubbandFile:
    return BadSubbandFile(
        f"{path} is truncated or not a valid UVH5 file ({convert._first_line(e)}); "
        "re-transfer it or leave it out of the block"
    )


def _read_header(f, path: Path):
    """pyuvdata's metadata-only UVData of an open file, checked as :func:`convert.read_subband` does.

    Returns
    -------
    uvd : pyuvdata.UVData
        Metadata only.
    meta : pyuvdata.uvdata.uvh5.FastUVH5Meta
        pyuvdata's view of the open file; its ``datagrp`` holds the data sets.
    """
    from pyuvdata import UVData
    from pyuvdata.uvdata.uvh5 import FastUVH5Meta

    try:
        meta = FastUVH5Meta(f)
        uvd = UVData()
        # Read from the open handle: the header is read once, here, and the
        # data sets later, block by block, from the same handle.
        uvd.read(meta, file_type="uvh5", read_data=False, run_check=False)
    except (OSError, KeyError, AttributeError, ValueError, TypeError, IndexError, RuntimeError) as e:
        raise _not_uvh5(path, e) from e
    # As in convert.read_subband: widen the float32 UVWs (recomputed anyway)
    # so that pyuvdata's check accepts them.
    uvd.uvw_array = np.asarray(uvd.uvw_array, dtype=np.float64)
    try:
        uvd.check()
    except ValueError as e:
        raise BadSubbandFile(
            f"{path} is not a consistent UVH5 data set ({convert._first_line(e)}); "
            "fix the writer or leave it out of the block"
        ) from e
    return uvd, meta


@dataclass
class _Data:
    """The three data sets of the file and how to read blocks of rows from them."""

    visdata: object
    flags: object
    nsamples: object
    spw_axis: bool
    """Old UVH5 files carry a length-1 spectral-window axis: (Nblts, 1, Nfreqs, Npols)."""
    vis_dtype: np.dtype
    """complex64 or complex128 in memory (integer data sets are read as complex128, as pyuvdata does)."""


def _data_datasets(meta, uvd, path: Path) -> _Data:
    """The file's Data sets, checked against the header before anything is written."""
    shape = (int(uvd.Nblts), int(uvd.Nfreqs), int(uvd.Npols))
    try:
        grp = meta.datagrp
        dsets = [grp[name] for name in ("visdata", "flags", "nsamples")]
    except (KeyError, OSError) as e:
        raise _not_uvh5(path, e) from e
    spw_axis = dsets[0].ndim == 4
    for d in dsets:
        got = d.shape[:1] + d.shape[2:] if spw_axis and d.ndim == 4 and d.shape[1] == 1 else d.shape
        if tuple(got) != shape:
            raise BadSubbandFile(
                f"{path}: Data/{d.name.rsplit('/', 1)[-1]} has shape {d.shape}, the header says {shape}; "
                "re-transfer it or leave it out of the block"
            )
    vis_dtype = dsets[0].dtype
    if vis_dtype == np.complex64 or vis_dtype == np.complex128:
        mem_dtype = np.dtype(vis_dtype)
    else:
        from pyuvdata.utils.io import hdf5 as hdf5_utils

        try:
            hdf5_utils._check_complex_dtype(vis_dtype)
        except ValueError as e:
            raise _not_uvh5(path, e) from e
        mem_dtype = np.dtype(np.complex128)  # pyuvdata's default data_array_dtype
    return _Data(*dsets, spw_axis=spw_axis, vis_dtype=mem_dtype)


class _BlockReader:
    """Reads blocks of rows into buffers reused from block to block.

    Reusing the buffers spares the page faults of a fresh allocation per block
    (a measurable cost at hundreds of MB/s); h5py's ``read_direct`` fills them
    without an intermediate copy.
    """

    def __init__(self, data: _Data, n_rows: int, n_freqs: int, n_pols: int, path: Path):
        self.data, self.path = data, path
        shape = (n_rows, n_freqs, n_pols)
        self.vis = np.empty(shape, dtype=data.vis_dtype)
        self.flags = np.empty(shape, dtype=bool)
        self.nsamples = np.empty(shape, dtype=np.float32)
        self._compound = data.visdata.dtype not in (np.complex64, np.complex128)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = stop - start
        out = (self.vis[:n], self.flags[:n], self.nsamples[:n])
        src = np.s_[start:stop, 0] if self.data.spw_axis else np.s_[start:stop]
        try:
            if self._compound:
                # As pyuvdata's _read_complex_astype: integers upcast on assignment.
                out[0].view([("r", "f8"), ("i", "f8")])[...] = self.data.visdata[src]
            else:
                self.data.visdata.read_direct(out[0], source_sel=src)
            self.data.flags.read_direct(out[1], source_sel=src)
            self.data.nsamples.read_direct(out[2], source_sel=src)
        except (OSError, ValueError, TypeError) as e:
            # A file cut short after its header fails here, not at opening.
            raise _not_uvh5(self.path, e) from e
        return out


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------


def _geometry(uvd, center: tuple[float, float] | None) -> _Plan:
    """Recompute UVWs, rephase and prepare the metadata exactly as the pyuvdata path.

    ``uvd`` (metadata only) ends as the pyuvdata path's object ends before
    ``write_ms``; the returned plan says what that path did to the data.
    """
    from pyuvdata import utils as uvutils

    freq_hz = np.asarray(uvd.freq_array, dtype=np.float64).ravel().copy()
    if center is None:
        convert.apply_phase_center(uvd, None)  # geometry only; the data keep their centre
        delta_w = None
    else:
        # What convert.apply_phase_center does, with the "old" w of pyuvdata's
        # rotation taken in between: the w recomputed from antenna positions
        # for the centre the correlator fringe-stopped at (zero for
        # unprojected rows). The phase() arguments are apply_phase_center's;
        # tests/test_fast_convert.py holds the two paths to the same MS.
        phasing.recompute_geometry(uvd)
        old_w = uvd.uvw_array[:, 2].copy()
        old_w[uvd._check_for_cat_type("unprojected")] = 0.0
        ra, dec = center
        uvd.phase(
            lon=ra,
            lat=dec,
            epoch="J2000",
            phase_frame="icrs",
            cat_type="sidereal",
            cat_name=phasing.phase_center_name(ra, dec),
            use_ant_pos=True,
            cleanup_old_sources=True,
        )
        delta_w = uvd.uvw_array[:, 2] - old_w

    conj_rows = np.asarray(uvd.ant_1_array > uvd.ant_2_array)
    conj_pol_order = np.argsort(uvutils.pol.reorder_conj_pols(uvd.polarization_array))
    convert.prepare_for_ms(uvd)

    after = np.asarray(uvd.freq_array, dtype=np.float64).ravel()
    chan_order = None
    if not np.array_equal(after, freq_hz):
        chan_order = np.argsort(freq_hz, kind="stable")
        if not np.array_equal(freq_hz[chan_order], after):
            raise RuntimeError("pyuvdata reordered the channels in an unexpected way; use the pyuvdata path")
    pol_index = np.asarray(uvutils.pol.determine_pol_order(uvd.polarization_array, order="CASA"))
    pol_order = None if np.array_equal(pol_index, np.arange(pol_index.size)) else pol_index
    pol_order_pyuvdata = uvutils.tools.slicify(pol_index, allow_empty=True)
    return _Plan(delta_w, freq_hz, chan_order, conj_rows, conj_pol_order, pol_order, pol_order_pyuvdata)


def _rotate_and_flip(vis: np.ndarray, plan: _Plan, rows: slice) -> np.ndarray:
    """One block of rows as DATA: rotated, conjugated to ant1 < ant2, flipped, reordered.

    Parameters
    ----------
    vis : ndarray, shape (n, Nfreqs, Npols)
        The file's visibilities of ``rows``; modified in place.

    Returns
    -------
    ndarray of complex64, C-contiguous
    """
    if plan.delta_w_m is not None:
        # pyuvdata's _apply_w_proj: data *= exp(-2 pi i dw nu / c), the same
        # float64 products in the same order; exp of a purely imaginary
        # argument is cos + i sin, bit for bit, at half the cost of exp.
        dw_lambda = plan.delta_w_m[rows].reshape(-1, 1) * (1.0 / _C_M_S) * plan.freq_hz.reshape(1, -1)
        arg = (-2 * np.pi) * dw_lambda
        phasor = np.empty(arg.shape, dtype=np.complex128)
        np.cos(arg, out=phasor.real)
        np.sin(arg, out=phasor.imag)
        vis *= phasor[:, :, None]
    conj = plan.conj_rows[rows]
    if conj.any():
        # pyuvdata's conjugate_bls("ant1<ant2"): conjugate, swap XY and YX.
        vis[conj] = np.conj(vis[conj][:, :, plan.conj_pol_order])
    # pyuvdata's write_ms (flip_conj=True) writes the conjugate: CASA's sign
    # convention for the visibility phase is the opposite of pyuvdata's.
    np.conjugate(vis, out=vis)
    return _reorder_axes(vis, plan, np.complex64)


def _conjugate_rows(arr: np.ndarray, plan: _Plan, rows: slice) -> np.ndarray:
    """FLAG or nsamples of a block of rows with the conjugated rows' XY and YX swapped, in place."""
    conj = plan.conj_rows[rows]
    if conj.any():
        arr[conj] = arr[conj][:, :, plan.conj_pol_order]
    return arr


def _reorder_axes(arr: np.ndarray, plan: _Plan, dtype) -> np.ndarray:
    if plan.chan_order is not None:
        arr = arr[:, plan.chan_order]
    if plan.pol_order is not None:
        arr = arr[:, :, plan.pol_order]
    return np.ascontiguousarray(arr, dtype=dtype)


def _band_weights(nsamples: np.ndarray) -> np.ndarray:
    """WEIGHT as pyuvdata writes it: the median over channels of the sample counts.

    pyuvdata takes that median in the file's polarization order, before the
    reordering to CASA's; the caller passes the block in that order, so
    WEIGHT is pyuvdata's even for files whose order is not CASA's (the DSA-110
    order XX XY YX YY is CASA's, where the question does not arise).

    A median is expensive (a partition per row and polarization); where all
    samples of the block are equal (nearly always: raw files carry 1.0) the
    median is that value exactly, and a min and a max over the contiguous
    block cost a hundredth of it.
    """
    lo, hi = nsamples.min(), nsamples.max()
    if lo == hi:
        return np.full((nsamples.shape[0], nsamples.shape[2]), lo, dtype=nsamples.dtype)
    return np.median(nsamples, axis=1)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def _write_ms_atomically(uvd, data: _Data, plan: _Plan, src: Path, ms_path: Path) -> dict[str, float]:
    """Write the MS at a temporary sibling, check it, then rename it in place.

    Returns
    -------
    dict
        :func:`phasing.uvw_check` of the UVWs as written (read back).

    Raises
    ------
    TransientError
        Lack of space or permission while writing; nothing is left behind.
    BadSubbandFile
        The file's data sets cannot be read (a file cut short after its
        header); nothing is left behind.
    """

    def write(tmp: Path) -> dict[str, float]:
        _write_ms(uvd, data, plan, src, tmp)
        return _check_written_ms(tmp, uvd, final=ms_path)

    return convert.atomic_ms(uvd, ms_path, write)


class _InvalidSampleCounts(Exception):
    """The file has sample counts below zero or not finite (see ``convert._repair_nsamples``)."""


def _write_ms(uvd, data: _Data, plan: _Plan, src: Path, path: Path) -> None:
    """Write the main table block by block, then the subtables, as pyuvdata's ``write_ms`` does."""
    from astropy.time import Time
    from pyuvdata.utils.io import ms as ms_utils

    n_rows, n_freqs, n_pols = int(uvd.Nblts), int(uvd.Nfreqs), int(uvd.Npols)
    if uvd.scan_number_array is None:
        uvd._set_scan_numbers()  # as write_ms: one scan per contiguous run of a field
    weights = np.empty((n_rows, n_pols), dtype=np.float32)
    reader = _BlockReader(data, min(ROWS_PER_BLOCK, n_rows), n_freqs, n_pols, src)

    ms = ms_utils.init_ms_file(str(path))  # pyuvdata's skeleton: same columns and storage managers
    try:
        ms.addrows(n_rows)
        for start in range(0, n_rows, ROWS_PER_BLOCK):
            stop = min(start + ROWS_PER_BLOCK, n_rows)
            rows = slice(start, stop)
            vis, flags, nsamples = reader.read(start, stop)
            if not np.all(nsamples >= 0):  # NaN fails too
                raise _InvalidSampleCounts(src)
            ms.putcol("DATA", _rotate_and_flip(vis, plan, rows), start, stop - start)
            ms.putcol("FLAG", _reorder_axes(_conjugate_rows(flags, plan, rows), plan, bool), start, stop - start)
            nsamples = _conjugate_rows(nsamples, plan, rows)
            # Before the polarization reordering: pyuvdata's WEIGHT keeps the
            # file's polarization order (the same as CASA's for DSA-110 files).
            weights[rows] = _band_weights(nsamples)
            ms.putcol("WEIGHT_SPECTRUM", _reorder_axes(nsamples, plan, np.float32), start, stop - start)

        ms.putcolkeyword("DATA", "QuantumUnits", uvd.vis_units)
        ms.putcol("WEIGHT", weights)
        # pyuvdata leaves SIGMA undefined where WEIGHT is 0; we write 0 there.
        with np.errstate(invalid="ignore"):  # negative weights (flagged data of some writers) give NaN, as in pyuvdata
            sigma = np.power(weights, -0.5, where=weights != 0, out=np.zeros_like(weights))
        ms.putcol("SIGMA", sigma)
        ms.putcol("ANTENNA1", uvd.ant_1_array)
        ms.putcol("ANTENNA2", uvd.ant_2_array)
        # INTERVAL and EXPOSURE: UVData has one integration time for both.
        ms.putcol("INTERVAL", uvd.integration_time)
        ms.putcol("EXPOSURE", uvd.integration_time)
        ms.putcol("DATA_DESC_ID", np.zeros(n_rows, dtype=np.int32))
        ms.putcol("SCAN_NUMBER", uvd.scan_number_array)
        # MS time is MJD seconds (UTC); astropy once per distinct time.
        times, index = np.unique(uvd.time_array, return_inverse=True)
        mjd_s = (Time(times, format="jd", scale="utc").mjd * 86400.0)[index]
        ms.putcol("TIME", mjd_s)
        ms.putcol("TIME_CENTROID", mjd_s)
        ms.putcol("UVW", -uvd.uvw_array)  # the flip_conj convention of the DATA above
        field_ids = np.empty_like(uvd.phase_center_id_array)
        for idx, cat_id in enumerate(uvd.phase_center_catalog):
            field_ids[uvd.phase_center_id_array == cat_id] = idx
        ms.putcol("FIELD_ID", field_ids)
        if uvd.extra_keywords:
            ms.putkeyword("pyuvdata_extra", uvd.extra_keywords)
        if uvd.pol_convention is not None:
            ms.putkeyword("pyuvdata_polconv", uvd.pol_convention)
        ms.putkeyword("pyuvdata_flip_conj", True)
    finally:
        ms.close()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_UNITS_WARNING)
        target = str(path)
        ms_utils.write_ms_antenna(target, uvobj=uvd)
        ms_utils.write_ms_data_description(target, uvobj=uvd)
        ms_utils.write_ms_feed(target, uvobj=uvd)
        ms_utils.write_ms_field(target, uvobj=uvd)
        ms_utils.write_ms_history(target, uvobj=uvd)
        ms_utils.write_ms_observation(target, uvobj=uvd)
        ms_utils.write_ms_pointing(target, uvobj=uvd)
        ms_utils.write_ms_polarization(target, pol_order=plan.pol_order_pyuvdata, uvobj=uvd)
        ms_utils.write_ms_source(target, uvobj=uvd)
        ms_utils.write_ms_spectral_window(target, uvobj=uvd)


def _check_written_ms(ms: Path, uvd, *, final: Path) -> dict[str, float]:
    """Read the written rows' antennas and UVWs back and check them.

    The UVWs read back are compared with UVWs recomputed from antenna
    positions (:func:`phasing.uvw_check`), as the pyuvdata path checks its MS.
    """
    from casacore import tables

    with tables.table(str(ms), ack=False) as t:
        n_rows = t.nrows()
        if n_rows != uvd.Nblts:
            raise RuntimeError(f"the MS written for {final} has {n_rows} rows instead of {uvd.Nblts}")
        ant1, ant2, uvw = t.getcol("ANTENNA1"), t.getcol("ANTENNA2"), t.getcol("UVW")
    if not (np.array_equal(ant1, uvd.ant_1_array) and np.array_equal(ant2, uvd.ant_2_array)):
        raise RuntimeError(f"the MS written for {final} does not hold the antennas of its rows")
    kept = uvd.uvw_array
    uvd.uvw_array = -uvw  # back to pyuvdata's sign
    try:
        return phasing.uvw_check(uvd)
    finally:
        uvd.uvw_array = kept
