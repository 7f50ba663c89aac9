"""Fast conversion of one subband file (UVH5) to a Measurement Set.

:func:`convert_subband_fast` writes the Measurement Set of
:func:`contimg.convert.convert_subband` (the pyuvdata path) in a fraction of
the time and memory. The split of the work:

- **Metadata through pyuvdata.** The file is opened once with h5py; pyuvdata
  reads only its ``Header`` (``read_data=False``) from that open handle and
  checks it (:func:`_check_header`). The phase-centre rule, the UVW
  recomputation from antenna positions and the rephasing run through the very
  functions the pyuvdata path calls (:func:`convert.choose_phase_center`,
  :func:`phasing.recompute_geometry`, pyuvdata's ``phase()`` with the
  arguments of :func:`convert.apply_phase_center`,
  :func:`convert.prepare_for_ms`), on one row per time
  (:func:`phasing.rows_per_time`), and the result is spread to every row
  (:func:`phasing.spread_geometry`): the UVWs are bit for bit the per-row
  ones.
- **Visibilities streamed.** ``Data/visdata``, ``flags`` and ``nsamples`` are
  read in blocks of rows (views of the file mapped in memory when it is
  stored plainly, else h5py reads), rotated by the change of w (pyuvdata's
  ``_apply_w_proj`` in float64, with one cos and sin per row and channel
  step, and pyuvdata's complex64 values bit for bit: :func:`_data_kernel`), conjugated as pyuvdata's ``write_ms`` does
  (``flip_conj``) and reordered (ascending channels, CASA polarization
  order, ant1 < ant2) by numba kernels, and written straight into the
  table's tile files (:class:`mswrite.MainTable`). Two passes over the rows,
  each a numba call per thread that never takes the GIL
  (:class:`_VisibilityWriter`): FLAG, WEIGHT_SPECTRUM and WEIGHT while this
  thread computes the geometry, then DATA on two threads, while this one
  writes the other columns and the subtables through casacore. Each byte of
  the file is read once and no full-size copy of the visibilities is ever
  held.
- **Skeleton and subtables as pyuvdata's.** The main table has pyuvdata's
  columns and data managers, except fixed-shape tiled DATA, FLAG,
  WEIGHT_SPECTRUM, WEIGHT and SIGMA and plain TIME and TIME_CENTROID
  (:func:`mswrite.main_table_layout`); the subtables are written by the
  pyuvdata functions ``write_ms`` itself calls, from the same metadata, except
  POINTING (:func:`mstables.write_pointing`, the same cells); those the
  telescope and the subband fix are laid out again from the first write
  (:func:`mstables.write_or_reuse`).

Rows are in the file's order, as in the pyuvdata path. SIGMA, which pyuvdata
leaves undefined where WEIGHT is 0, is 0 there. The MS is written to a
temporary sibling, checked (:func:`_check_written_ms`, and the direct
writes' read-back in :meth:`mswrite.MainTable.finish`) and renamed into
place.

Files the fast path does not cover (more than one spectral window, invalid
sample counts) are handed to :func:`convert.convert_subband`;
docs/conversion.md lists the guarantees and the measured speed.
"""

from __future__ import annotations

import errno
import functools
import gc
import logging
import math
import mmap
import os
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numba
import numba.extending
import numpy as np

from . import convert, mswrite, phasing
from .convert import ConvertResult
from .errors import BadSubbandFile

log = logging.getLogger(__name__)

ROWS_PER_BLOCK = 171 * 48
"""Rows read, rotated and written at a time: 8208 rows of the full preset
(48 channels x 4 polarizations) are 12.6 MB of visibilities, 48 of the
171-row tiles of a (4, 48) cell; large enough that per-call overheads
vanish, small enough to keep memory flat (two blocks of each column are
held: one being computed, one being written)."""

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
        chosen = {}

        def geometry() -> _Plan:
            # Run by _write_ms once FLAG and WEIGHT_SPECTRUM are under way.
            t = time.perf_counter()
            rule, center = convert.choose_phase_center(uvd, src, phase_center=phase_center,
                                                       block_mid_jd=block_mid_jd)
            plan = _geometry(uvd, center)
            chosen.update(rule=rule, seconds=time.perf_counter() - t)
            return plan

        try:
            check = _write_ms_atomically(uvd, data, geometry, src, dst)
        except _InvalidSampleCounts:
            # Rare and never a DSA-110 file: the pyuvdata path repairs them (convert._repair_nsamples).
            log.info("%s has invalid sample counts; converting it with pyuvdata", src)
            f.close()
            return convert.convert_subband(src, dst, phase_center=phase_center, block_mid_jd=block_mid_jd)
        t_write = time.perf_counter()
    finally:
        if f.id.valid:
            f.close()

    t_phase = t_read + chosen["seconds"]  # the geometry ran while the first columns were written
    return convert.conversion_result(uvd, src, dst, chosen["rule"], check, (t0, t_read, t_phase, t_write))


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
        # Without the LST check (run_check_acceptability): it only warns, and the
        # stored LSTs are discarded and recomputed (see _check_header).
        uvd.read(meta, file_type="uvh5", read_data=False, run_check=False, run_check_acceptability=False)
    except (OSError, KeyError, AttributeError, ValueError, TypeError, IndexError, RuntimeError) as e:
        raise _not_uvh5(path, e) from e
    # As in convert.read_subband: widen the float32 UVWs (recomputed anyway)
    # so that pyuvdata's check accepts them.
    uvd.uvw_array = np.asarray(uvd.uvw_array, dtype=np.float64)
    try:
        _check_header(uvd)
    except ValueError as e:
        raise BadSubbandFile(
            f"{path} is not a consistent UVH5 data set ({convert._first_line(e)}); "
            "fix the writer or leave it out of the block"
        ) from e
    return uvd, meta


def _check_header(uvd) -> None:
    """pyuvdata's ``UVData.check``, less its recomputation of the file's geometry.

    Kept, as ``check`` does them: every parameter set, of its shape and type;
    Nbls, Ntimes and Nants_data equal to what the rows hold; the rows'
    antennas among the telescope's and their phase centres in the catalogue;
    the polarizations; every value in its acceptable range (``UVBase.check``);
    the auto-correlations' UVWs zero (pyuvdata's one value check that raises);
    the antenna positions near the Earth's surface (a warning).

    Left out: the comparisons of the stored LSTs with the times and of the
    stored UVWs with the antenna positions. pyuvdata only warns when they
    disagree, the conversion discards both and recomputes them
    (:func:`_geometry`), and they recompute the geometry row by row: 0.08 s
    of the 0.09 s ``check`` takes on a full DSA-110 file, against 0.01 s for
    the rest.

    Raises
    ------
    ValueError
        pyuvdata's message for the first failed check.
    """
    from pyuvdata import utils as uvutils
    from pyuvdata.uvbase import UVBase

    uvd.check(run_check_acceptability=False)
    UVBase.check(uvd, run_check_acceptability=True)
    uvutils.coordinates.check_surface_based_positions(
        antenna_positions=uvd.telescope.antenna_positions, telescope_loc=uvd.telescope.location, raise_error=False
    )
    autos = uvd.ant_1_array == uvd.ant_2_array
    rtol, atol = uvd._uvw_array.tols
    if not np.all(np.isclose(uvd.uvw_array[autos], 0.0, rtol=rtol, atol=atol)):
        raise ValueError("Some auto-correlations have non-zero uvw_array coordinates.")


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
    """Reads blocks of rows: views of the file mapped in memory, or copies into reused buffers.

    When the three data sets are stored plainly (contiguous, unfiltered,
    little-endian complex64, bool and float32; what pyuvdata writes by
    default and the simulator writes), the file is mapped and a block is a
    view of it: the kernels read the page cache directly, and nothing is
    copied. The pages of each block are let go once it is written
    (``MADV_DONTNEED``; they stay in the page cache), so the mapping never
    holds more than a block in the process's memory. Otherwise h5py's
    ``read_direct`` fills two sets of buffers in turn.
    """

    def __init__(self, data: _Data, n_rows: int, n_freqs: int, n_pols: int, path: Path):
        self.data, self.path = data, path
        self._map, self._mapped = _map_datasets(data, path)
        if self._mapped is not None:
            return
        # Two sets in turn: a block as read may still be being written (see _VisibilityWriter).
        shape = (n_rows, n_freqs, n_pols)
        self._buffers = [
            (np.empty(shape, dtype=data.vis_dtype), np.empty(shape, dtype=bool), np.empty(shape, dtype=np.float32))
            for _ in range(2)
        ]
        self._turn = {self.DATA: 0, self.SAMPLES: 0}  # each pass over the rows uses the two sets in turn
        self._compound = data.visdata.dtype not in (np.complex64, np.complex128)

    def release(self) -> None:
        """Let every mapped page and read buffer go now, whoever still holds this reader.

        Exceptions that astropy keeps while guessing time formats hold the
        frames of the conversion (and so this reader) in reference cycles
        until the next full collection; the pages and buffers need not wait.
        """
        if self._mapped is not None:
            self._map.madvise(mmap.MADV_DONTNEED)
        self._buffers = []

    @property
    def mapped(self) -> bool:
        """Whether blocks are views of the mapped file."""
        return self._mapped is not None

    DATA = (0,)
    """:meth:`read` the visibilities."""
    SAMPLES = (1, 2)
    """:meth:`read` the flags and the sample counts."""

    def read(self, start: int, stop: int, which: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """Rows ``start`` to ``stop`` of the data sets ``which`` (0 visdata, 1 flags, 2 nsamples)."""
        if self._mapped is not None:
            return tuple(self._mapped[k][0][start:stop] for k in which)
        n = stop - start
        turn = self._turn[which]
        buffers, self._turn[which] = self._buffers[turn], 1 - turn
        src = np.s_[start:stop, 0] if self.data.spw_axis else np.s_[start:stop]
        out = []
        try:
            for k in which:
                b = buffers[k][:n]
                if k == 0 and self._compound:
                    # As pyuvdata's _read_complex_astype: integers upcast on assignment.
                    b.view([("r", "f8"), ("i", "f8")])[...] = self.data.visdata[src]
                else:
                    (self.data.visdata, self.data.flags, self.data.nsamples)[k].read_direct(b, source_sel=src)
                out.append(b)
        except (OSError, ValueError, TypeError) as e:
            # A file cut short after its header fails here, not at opening.
            raise _not_uvh5(self.path, e) from e
        return tuple(out)

    def whole(self, which: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """The data sets ``which``, whole, as views of the mapped file (only when :attr:`mapped`)."""
        return tuple(self._mapped[k][0] for k in which)

    def done(self, start: int, stop: int, which: tuple[int, ...]) -> None:
        """Rows ``start`` to ``stop`` of the data sets ``which`` are written: let their mapped pages go."""
        if self._mapped is None:
            return
        page = mmap.PAGESIZE
        for a, offset in (self._mapped[k] for k in which):
            row_bytes = a.strides[0]
            lo = (offset + start * row_bytes) // page * page
            hi = (offset + stop * row_bytes) // page * page  # the partial last page goes with the next block
            if hi > lo:
                self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


_PLAIN_DTYPES = (np.dtype("<c8"), np.dtype(bool), np.dtype("<f4"))
"""The stored types of visdata, flags and nsamples that a block can be a view of."""


def _map_datasets(data: _Data, path: Path):
    """The file mapped read-only and its three data sets as (rows, Nfreqs, Npols) views, or (None, None).

    Only for data sets stored contiguously without filters in the plain
    types (:data:`_PLAIN_DTYPES`); a file shorter than its data sets say is
    :class:`BadSubbandFile`.
    """
    dsets = (data.visdata, data.flags, data.nsamples)
    for d, dtype in zip(dsets, _PLAIN_DTYPES, strict=True):
        if d.dtype != dtype or d.chunks is not None or d.compression is not None or d.id.get_offset() is None:
            return None, None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    views = []
    for d in dsets:
        offset, count = d.id.get_offset(), int(np.prod(d.shape))
        if offset + count * d.dtype.itemsize > size:
            raise _not_uvh5(path, ValueError(f"Data/{d.name.rsplit('/', 1)[-1]} runs past the end of the file"))
        a = np.frombuffer(mapping, dtype=d.dtype, count=count, offset=offset)
        shape = (d.shape[0],) + d.shape[2:] if data.spw_axis else d.shape
        views.append((a.reshape(shape), offset))
    return mapping, views


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
    # What convert.apply_phase_center does, on one row per time (pyuvdata's
    # own calls, on a small copy: phasing.rows_per_time), then spread to every
    # row with UVWs from antenna positions, bit for bit pyuvdata's.
    small, index = phasing.rows_per_time(uvd)
    phasing.recompute_geometry(small)
    if center is None:
        delta_w = None  # geometry only; the data keep their centre
    else:
        # The "old" w of pyuvdata's rotation, taken in between: the w
        # recomputed from antenna positions for the centre the correlator
        # fringe-stopped at (zero for unprojected rows). The phase() arguments
        # are apply_phase_center's; tests/test_fast_convert.py holds the two
        # paths to the same MS.
        old_w = phasing.antenna_uvws(small, index, uvd.ant_1_array, uvd.ant_2_array)[:, 2]
        old_w[small._check_for_cat_type("unprojected")[index]] = 0.0
        ra, dec = center
        small.phase(
            lon=ra,
            lat=dec,
            epoch="J2000",
            phase_frame="icrs",
            cat_type="sidereal",
            cat_name=phasing.phase_center_name(ra, dec),
            use_ant_pos=True,
            cleanup_old_sources=True,
        )
    phasing.spread_geometry(uvd, small, index)
    if center is not None:
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


# ---------------------------------------------------------------------------
# the visibility kernels
# ---------------------------------------------------------------------------


@dataclass
class _RowMap:
    """Where each file value of a row goes in the MS: the plan as index arrays for the kernels.

    Attributes
    ----------
    chan_dst : ndarray of int64, shape (Nfreqs,)
        MS channel of each file channel.
    pol_src, pol_src_conj : ndarray of int64, shape (Npols,)
        File polarization of each MS correlation, for rows kept and for rows
        conjugated to ant1 < ant2 (whose XY and YX swap).
    identity : bool
        Channels and polarizations keep their places and no row is
        conjugated: FLAG and WEIGHT_SPECTRUM are the file's blocks as read.
    """

    chan_dst: np.ndarray
    pol_src: np.ndarray
    pol_src_conj: np.ndarray
    identity: bool

    @classmethod
    def of(cls, plan: _Plan, n_freqs: int, n_pols: int) -> _RowMap:
        chan_dst = np.arange(n_freqs, dtype=np.int64)
        if plan.chan_order is not None:
            chan_dst[np.asarray(plan.chan_order)] = np.arange(n_freqs)
        pol_src = np.arange(n_pols, dtype=np.int64) if plan.pol_order is None else np.asarray(plan.pol_order, np.int64)
        pol_src_conj = np.asarray(plan.conj_pol_order, dtype=np.int64)[pol_src]
        identity = plan.chan_order is None and plan.pol_order is None and not plan.conj_rows.any()
        return cls(chan_dst, pol_src, pol_src_conj, identity)

    @classmethod
    def from_header(cls, uvd) -> tuple[_RowMap, np.ndarray]:
        """The map and the rows conjugated, from the file's header alone, and ahead of :func:`_geometry`.

        The layout needs no geometry: rows stored ant1 > ant2, channels not
        ascending (which :func:`convert.prepare_for_ms` sorts) and the
        polarizations out of CASA order. :func:`_check_layout` holds it to
        the plan once the geometry is done.
        """
        from pyuvdata import utils as uvutils

        freq_hz = np.asarray(uvd.freq_array, dtype=np.float64).ravel()
        pols = uvd.polarization_array
        pol_index = np.asarray(uvutils.pol.determine_pol_order(pols, order="CASA"))
        layout = _Plan(
            delta_w_m=None,
            freq_hz=freq_hz,
            chan_order=np.argsort(freq_hz, kind="stable") if np.any(np.diff(freq_hz) < 0) else None,
            conj_rows=np.asarray(uvd.ant_1_array > uvd.ant_2_array),
            conj_pol_order=np.argsort(uvutils.pol.reorder_conj_pols(pols)),
            pol_order=None if np.array_equal(pol_index, np.arange(pol_index.size)) else pol_index,
            pol_order_pyuvdata=slice(None),
        )
        return cls.of(layout, freq_hz.size, pols.size), layout.conj_rows

    def same_as(self, other: _RowMap) -> bool:
        return (self.identity == other.identity and np.array_equal(self.chan_dst, other.chan_dst)
                and np.array_equal(self.pol_src, other.pol_src)
                and np.array_equal(self.pol_src_conj, other.pol_src_conj))


def _check_layout(plan: _Plan, row_map: _RowMap, conj_rows: np.ndarray) -> None:
    """The plan moves the values as the map made from the header does (:meth:`_RowMap.from_header`).

    Raises
    ------
    RuntimeError
        They differ: pyuvdata's metadata steps changed (a new pyuvdata?).
    """
    n_freqs, n_pols = row_map.chan_dst.size, row_map.pol_src.size
    if not (row_map.same_as(_RowMap.of(plan, n_freqs, n_pols)) and np.array_equal(plan.conj_rows, conj_rows)):
        raise RuntimeError("pyuvdata's metadata steps reorder the data otherwise than the header says; "
                           "use the pyuvdata path (convert.convert_subband) and report it")


@numba.extending.intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's fma: the FMA instruction, or an exact software one without it)."""
    from llvmlite import ir

    sig = numba.types.float64(numba.types.float64, numba.types.float64, numba.types.float64)

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [d], ir.FunctionType(d, [d, d, d]))
        return builder.call(fn, args)

    return sig, codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _product(ar, ai, br, bi, formula):
    """(ar + i ai) (br + i bi) in float64 as numpy computes it on this machine (see :func:`numpy_product_formula`).

    0: each product rounded (numpy without FMA); 1: ``fma(ar, br, -ai bi)``
    and ``fma(ar, bi, ai br)`` (numpy's SIMD loop with FMA: x86-64 with
    AVX2 or AVX-512); 2: the other products fused.
    """
    if formula == 1:
        return _fma(ar, br, -(ai * bi)), _fma(ar, bi, ai * br)
    if formula == 2:
        return _fma(-ai, bi, ar * br), _fma(ai, br, ar * bi)
    return ar * br - ai * bi, ar * bi + ai * br


@functools.cache
def numpy_product_formula() -> int:
    """How numpy multiplies complex128 in pyuvdata's ``_apply_w_proj`` here: 0, 1 or 2 (see :func:`_product`).

    The formulas differ only where the two products nearly cancel: one
    visibility in ~3e7 of a real file ends one float32 unit apart. Found by
    doing pyuvdata's operation (``data *= exp(-2 pi i w)`` broadcast over
    polarizations) on values made to cancel, and comparing. ``-1`` if no
    formula gives all of numpy's results (the fast DATA is then within one
    unit in the last place of pyuvdata's, and a warning says so).
    """
    rng = np.random.default_rng(1)
    n, n_freqs, n_pols = 64, 48, 4
    angle = rng.uniform(-np.pi, np.pi, (n, n_freqs))
    phasor = np.exp((-1j * 2 * np.pi) * (angle / (-2 * np.pi)))
    # a = t * conj(phasor) * (1 + tiny): the real part of a * phasor nearly cancels; likewise for the imaginary.
    scale = rng.uniform(0.5, 2, (n, n_freqs, n_pols)) * (1 + rng.uniform(-1e-12, 1e-12, (n, n_freqs, n_pols)))
    turn = np.array([1, 1j, 1, 1j])[None, None, :]
    a = scale * np.conj(phasor)[:, :, None] * turn * np.exp(1j * 1e-9 * rng.standard_normal((n, n_freqs, n_pols)))
    data = a.copy()
    data *= np.exp((-1j * 2 * np.pi) * (angle / (-2 * np.pi)))[:, :, None]
    for formula in (1, 0, 2):
        if _products_match(a, phasor, data, formula):
            return formula
    log.warning("numpy's complex product here is none of the known formulas: the fast path's DATA may differ "
                "from pyuvdata's by one float32 unit in a few values per file")
    return -1


@numba.njit(cache=True)
def _products_match(a, phasor, data, formula):
    n, n_freqs, n_pols = a.shape
    for r in range(n):
        for c in range(n_freqs):
            b = phasor[r, c]
            for p in range(n_pols):
                x, y = _product(a[r, c, p].real, a[r, c, p].imag, b.real, b.imag, formula)
                if x != data[r, c, p].real or y != data[r, c, p].imag:
                    return False
    return True


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _data_kernel(vis, out, vis_flat, out_flat, dw_over_c, freq_hz, rotate, recurrence, conj, chan_dst, pol_src,
                 pol_src_conj, formula):
    """DATA of a block of rows: rotated by the change of w, conjugated as pyuvdata writes it, reordered.

    For each row r and file channel c, the rotation is pyuvdata's
    ``_apply_w_proj``, ``vis *= exp(-2 pi i dw nu / c)`` in float64, with the
    argument formed in the same order, ``(-2 pi) * ((dw / c) * nu)``, and
    the product rounded to complex64: the values are pyuvdata's bit for bit.

    Without ``recurrence``, every phasor is cos + i sin of its own argument
    (one cos and sin per row and channel). With it (channels evenly
    spaced), cos and sin are taken once per row for the first channel and
    for one channel step, and the phasor of each next channel is the last
    one times the step's, corrected to first order by the difference
    between the argument pyuvdata forms and the one the recurrence follows
    (:func:`_row_phasors`): 48 times fewer trigonometric calls. That phasor
    is within ``delta`` of pyuvdata's (:func:`_phasor_error_bound`), so each
    float64 product is within ``(|re| + |im|) * delta`` of pyuvdata's; a
    channel where that interval holds a float32 rounding boundary for some
    product (:func:`_near_rounding_boundary`; ~1e-3 of the channels) is
    recomputed with the exact phasor, multiplied as numpy multiplies on
    this machine (``formula``, :func:`_product`). Either way the complex64
    values are the ones pyuvdata writes.

    Then, as pyuvdata's ``conjugate_bls("ant1<ant2")`` and ``write_ms``
    (``flip_conj``) do: a row kept is conjugated; a row stored ant2 < ant1 is
    conjugated twice (so not at all) with its XY and YX swapped. MS channel
    ``chan_dst[c]``, MS correlation p of a kept row comes from file
    polarization ``pol_src[p]`` (``pol_src_conj[p]`` for the other rows).

    Parameters
    ----------
    vis : ndarray of complex, shape (n, Nfreqs, Npols)
        The file's visibilities of the rows.
    out : ndarray of complex64, same shape
        Written.
    vis_flat, out_flat : ndarray of float, shape (n, Nfreqs * Npols * 2)
        The same memory as real and imaginary parts, row by row.
    dw_over_c : ndarray of float64, shape (n,)
        New minus old w of each row divided by the speed of light (seconds).
    freq_hz : ndarray of float64, shape (Nfreqs,)
        Channel frequencies in the file's order.
    rotate, recurrence : bool
    conj : ndarray of bool, shape (n,)
        Rows stored ant1 > ant2.
    chan_dst, pol_src, pol_src_conj : ndarray of int64
        See :class:`_RowMap`.
    formula : int
        :func:`numpy_product_formula`.

    Returns
    -------
    int
        Channels (of a row) recomputed with exact phasors.
    """
    n, n_freqs, n_pols = vis.shape
    phasor_re = np.empty(n_freqs)
    phasor_im = np.empty(n_freqs)
    if rotate and recurrence and n_pols == 4 and _is_identity(pol_src) and not conj.any():
        return _four_kept_rows(vis_flat, out_flat, dw_over_c, freq_hz, chan_dst, formula)
    exact = 0
    for r in range(n):
        d = dw_over_c[r]
        pols = pol_src_conj if conj[r] else pol_src
        sign = 1.0 if conj[r] else -1.0  # imaginary part of the result
        if not rotate:
            for c in range(n_freqs):
                cd = chan_dst[c]
                for p in range(n_pols):
                    v = vis[r, c, pols[p]]
                    out[r, cd, p] = complex(v.real, sign * v.imag)
            continue
        if not recurrence:
            for c in range(n_freqs):
                _exact_channel(vis, out, r, c, chan_dst[c], d, freq_hz[c], pols, sign, formula)
            continue
        bound = _row_phasors(d, freq_hz, phasor_re, phasor_im)
        for c in range(n_freqs):
            pr, pi = phasor_re[c], phasor_im[c]
            cd = chan_dst[c]
            near = False
            for p in range(n_pols):
                v = vis[r, c, pols[p]]
                x = v.real * pr - v.imag * pi
                y = v.real * pi + v.imag * pr
                out[r, cd, p] = complex(x, sign * y)
                near |= _near_rounding_boundary(x, y, abs(v.real) + abs(v.imag), bound)
            if near:
                _exact_channel(vis, out, r, c, cd, d, freq_hz[c], pols, sign, formula)
                exact += 1
    return exact


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _four_kept_rows(vis_flat, out_flat, dw_over_c, freq_hz, chan_dst, formula):
    """:func:`_data_kernel` with recurrence for rows of 4 polarizations in the file's order, none conjugated.

    The DSA-110 case, written for the compiler: flat rows of real and
    imaginary parts, unsigned indices (no negative-index checks), a fixed
    count of 4 polarizations, and each row in three passes over buffers of
    its own (no possible aliasing with the input): the products in float64;
    the test for rounding boundaries (:func:`_near_rounding_boundary`) in
    one flat loop the compiler vectorizes, with the channels it finds
    recomputed exactly; the rounding to float32 into the MS channel order.
    """
    n = vis_flat.shape[0]
    n_freqs = freq_hz.size
    phasor_re = np.empty(n_freqs)
    phasor_im = np.empty(n_freqs)
    # The row's rotated values in float64, the file's channel order, and |re| + |im| of each visibility.
    row_re, row_im, size = np.empty(4 * n_freqs), np.empty(4 * n_freqs), np.empty(4 * n_freqs)
    four = np.uint64(4)
    chan_src = np.empty(n_freqs, dtype=np.uint64)
    for c in range(n_freqs):
        chan_src[chan_dst[c]] = c
    eight = np.uint64(8)
    exact = 0
    for r in range(n):
        bound = _row_phasors(dw_over_c[r], freq_hz, phasor_re, phasor_im)
        v, o = vis_flat[r], out_flat[r]
        for c in range(n_freqs):  # read front to back, into the row buffers in MS channel order
            pr, pi = phasor_re[c], phasor_im[c]
            s = np.uint64(c) * eight
            u = np.uint64(chan_dst[c]) * four
            for p in range(4):
                a = np.float64(v[s + 2 * p])
                b = np.float64(v[s + 2 * p + 1])
                row_re[u + p] = a * pr - b * pi
                row_im[u + p] = -(a * pi + b * pr)
                size[u + p] = abs(a) + abs(b)
        near = False
        for k in range(4 * n_freqs):
            x, y = row_re[k], row_im[k]
            o[2 * k] = x
            o[2 * k + 1] = y
            near |= _near_rounding_boundary(x, y, size[k], bound)
        if not near:
            continue
        for m in range(n_freqs):
            u = np.uint64(m) * four
            near_c = False
            for p in range(4):
                near_c |= _near_rounding_boundary(row_re[u + p], row_im[u + p], size[u + p], bound)
            if near_c:
                c = chan_src[m]
                s, t = np.uint64(c) * eight, np.uint64(m) * eight
                a_c = (-2 * np.pi) * (dw_over_c[r] * freq_hz[c])
                er, ei = math.cos(a_c), math.sin(a_c)
                for p in range(4):
                    x, y = _product(np.float64(v[s + 2 * p]), np.float64(v[s + 2 * p + 1]), er, ei, formula)
                    o[t + 2 * p] = x
                    o[t + 2 * p + 1] = -y
                exact += 1
    return exact


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _exact_channel(vis, out, r, c, cd, dw_over_c, freq, pols, sign, formula):
    """One channel of one row rotated with its own phasor, exactly as pyuvdata computes it."""
    a = (-2 * np.pi) * (dw_over_c * freq)
    pr, pi = math.cos(a), math.sin(a)
    for p in range(pols.size):
        v = vis[r, c, pols[p]]
        x, y = _product(np.float64(v.real), np.float64(v.imag), pr, pi, formula)
        out[r, cd, p] = complex(x, sign * y)


@numba.njit(cache=True, nogil=True)
def _row_phasors(dw_over_c, freq_hz, phasor_re, phasor_im):
    """The phasors of one row's channels by recurrence (see :func:`_data_kernel`); returns their error bound.

    The recurrence follows exp(i (a0 + c da)), with a0 and da the arguments
    of channel 0 and of one channel step as rounded in float64. pyuvdata's
    argument ``a_c`` differs from ``a0 + c da`` by its own rounding and by
    the channel's distance from the even grid; that difference ``e_c`` is
    computed without rounding error of consequence (``a_c - a0`` is exact
    for arguments within a factor 2, ``c * da`` is split so that its high
    part is exact) and applied to first order, ``p (1 + i e_c)``: its
    second-order term, below 1e-18 for the arguments allowed
    (:func:`_evenly_spaced`), is covered by the bound.
    """
    n_freqs = freq_hz.size
    two_pi = 2 * np.pi
    a0 = (-two_pi) * (dw_over_c * freq_hz[0])
    da = (-two_pi) * (dw_over_c * (freq_hz[1] - freq_hz[0])) if n_freqs > 1 else 0.0
    # Veltkamp's split: da_hi has at most 52 - bits(n_freqs) significant bits, so c * da_hi is exact.
    split = da * (2.0 ** (_bit_length(n_freqs) + 1) + 1.0)
    da_hi = split - (split - da)
    da_lo = da - da_hi
    # Four interleaved recurrences (channel c from channel c - 4): a quarter of the latency of one.
    sr, si = math.cos(da), math.sin(da)
    phasor_re[0], phasor_im[0] = math.cos(a0), math.sin(a0)
    for c in range(1, min(4, n_freqs)):
        pr, pi = phasor_re[c - 1], phasor_im[c - 1]
        phasor_re[c], phasor_im[c] = pr * sr - pi * si, pr * si + pi * sr
    s2r, s2i = sr * sr - si * si, 2.0 * sr * si
    s4r, s4i = s2r * s2r - s2i * s2i, 2.0 * s2r * s2i
    for c in range(4, n_freqs):
        pr, pi = phasor_re[c - 4], phasor_im[c - 4]
        phasor_re[c], phasor_im[c] = pr * s4r - pi * s4i, pr * s4i + pi * s4r
    worst = 0.0
    for c in range(n_freqs):
        a_c = (-two_pi) * (dw_over_c * freq_hz[c])
        e_c = ((a_c - a0) - c * da_hi) - c * da_lo
        worst = max(worst, abs(e_c))
        pr, pi = phasor_re[c], phasor_im[c]
        phasor_re[c] = pr - e_c * pi
        phasor_im[c] = pi + e_c * pr
    return _phasor_error_bound(n_freqs, worst)


@numba.njit(cache=True, nogil=True)
def _bit_length(n):
    bits = 0
    while n:
        n >>= 1
        bits += 1
    return bits


@numba.njit(cache=True, nogil=True)
def _phasor_error_bound(n_freqs, worst_correction):
    """A bound, relative to the visibility, on |rotated value by recurrence - by pyuvdata| (float64).

    Channel c is reached in at most 3 steps of one channel and c / 4 steps
    of four (:func:`_row_phasors`). A step of four carries the error of its
    phasor (cos and sin of one step to one unit in the last place, squared
    twice: ~10 units) and its own roundings (~3 units); a step of one ~4
    units. ``(n_freqs + 2) * 6`` units of 2.3e-16 is more than either sum.
    To that: pyuvdata's own cos and sin (one unit each), the square of the
    first-order correction, and the products and sum of each rotated value,
    rounded differently in the two computations (2e-15 covers them). The
    sum is taken 4 times for safety: the bound only chooses which channels
    are recomputed exactly, so a loose one costs a little time, never a bit
    of the result.
    """
    eps = 2.3e-16
    return 4 * ((n_freqs + 2) * 6 * eps + worst_correction * worst_correction) + 2e-15


@numba.njit(cache=True, nogil=True, inline="always")
def _near_rounding_boundary(x, y, size, bound):
    """Whether float64 values within ``size * bound`` of x or y may round to another float32.

    A float64 rounds to float32 by its low 29 mantissa bits: to the nearer
    neighbour, so the rounding boundary is where those bits are 2**28. A
    value ``l`` units of the last place (float64) from it is more than
    ``l * |x| * 2**-53`` away; so the test ``l * |x| < size * bound * 2**53``
    is true wherever the boundary is within ``size * bound`` (and at most
    twice as often). It is also true for any x or y too small for a normal
    float32 (below 2**-126, where the rounding works otherwise) when
    ``size >= 1e-30``, since ``bound >= 2e-15``; smaller nonzero sizes
    (never seen in visibilities) count as near.
    """
    limit = size * bound * 9007199254740992.0  # 2**53
    lx = abs((np.float64(x).view(np.int64) & 0x1FFFFFFF) - 0x10000000)
    ly = abs((np.float64(y).view(np.int64) & 0x1FFFFFFF) - 0x10000000)
    return (lx * abs(x) < limit) | (ly * abs(y) < limit) | ((size < 1e-30) & (size != 0))


@numba.njit(cache=True, nogil=True)
def _reorder_kernel(src, out, conj, chan_dst, pol_src, pol_src_conj):
    """FLAG or WEIGHT_SPECTRUM of a block of rows: the moves of :func:`_data_kernel`, no arithmetic."""
    n, n_freqs, n_pols = src.shape
    pols_kept = _is_identity(pol_src)
    for r in range(n):
        if pols_kept and not conj[r]:  # the DSA-110 case: only the channels turn round
            for c in range(n_freqs):
                cd = chan_dst[c]
                for p in range(n_pols):
                    out[r, cd, p] = src[r, c, p]
            continue
        pols = pol_src_conj if conj[r] else pol_src
        for c in range(n_freqs):
            cd = chan_dst[c]
            for p in range(n_pols):
                out[r, cd, p] = src[r, c, pols[p]]


@numba.njit(cache=True, nogil=True)
def _is_identity(index):
    for i in range(index.size):
        if index[i] != i:
            return False
    return True


def _evenly_spaced(freq_hz: np.ndarray, dw_over_c: np.ndarray | None) -> bool:
    """Whether :func:`_data_kernel` may take phasors by recurrence (else one cos and sin per channel).

    The recurrence follows the grid ``f0 + c * step``; its first-order
    correction (:func:`_row_phasors`) is kept below 1e-9 rad, so a channel
    may be off the grid by at most a phase of 2 pi |dw / c| times the
    offset = 1e-9. The frequencies must also be positive and within a factor
    1.5 of each other, so that the difference of two channels' arguments
    is exact in float64. Every DSA-110 subband qualifies (48 channels of
    244 kHz near 1.4 GHz, evenly spaced).
    """
    if freq_hz.size < 2 or dw_over_c is None or dw_over_c.size == 0:
        return True
    lo, hi = float(np.min(freq_hz)), float(np.max(freq_hz))
    if not (lo > 0 and hi < 1.5 * lo):
        return False
    grid = freq_hz[0] + np.arange(freq_hz.size) * (freq_hz[1] - freq_hz[0])
    worst_phase = 2 * np.pi * float(np.max(np.abs(dw_over_c))) * float(np.max(np.abs(freq_hz - grid)))
    return worst_phase < 1e-9


@numba.njit(cache=True, nogil=True)
def _sample_range(nsamples):
    """Smallest and largest sample count of a block in one pass, and whether all are valid (>= 0, not NaN).

    ``nsamples`` must be C-contiguous (a block of rows of the mapped file or
    of a buffer): it is read as one flat run.
    """
    flat = nsamples.reshape(-1)
    if flat.size == 0:
        return 0.0, 0.0, True
    lo, hi, nan = flat[0], flat[0], False
    for i in range(flat.size):
        x = flat[i]
        lo = min(lo, x)
        hi = max(hi, x)
        nan |= x != x
    return lo, hi, lo >= 0 and not nan


@numba.njit(cache=True, nogil=True)
def _band_weights(nsamples, lo, hi, pol_src, weights):
    """WEIGHT as pyuvdata writes it: the median over channels of the sample counts.

    A median is expensive (a partition per row and polarization); where all
    samples of the block are equal (nearly always: raw files carry 1.0) the
    median is that value exactly, and :func:`_sample_range` has found it.

    Parameters
    ----------
    nsamples : ndarray of float32, shape (n, Nfreqs, Npols)
        A block of sample counts in MS order (channel order does not matter).
    lo, hi : float
        Their smallest and largest values.
    pol_src : ndarray of int64, shape (Npols,)
        File polarization of each MS correlation: pyuvdata's WEIGHT keeps the
        file's polarization order (after the XY/YX swap of conjugated rows),
        so MS correlation p goes to WEIGHT column ``pol_src[p]``.
    weights : ndarray of float32, shape (n, Npols)
        Written.
    """
    n, _, n_pols = nsamples.shape
    for r in range(n):
        for p in range(n_pols):
            weights[r, pol_src[p]] = lo if lo == hi else np.median(nsamples[r, :, p])


@numba.njit(cache=True, nogil=True)
def _pack_flags(flags, bits):
    """A block of FLAG packed as casacore's tiles hold it: one bit a value, least significant first.

    ``bits`` has shape (n, ceil(Nfreqs * Npols / 8)): each row starts on a
    byte (for cells of a multiple of 8 values, as the direct writes require,
    this is also one continuous run of bits, packed 8 values at a time from
    the flat block: 20 times faster than value by value). ``flags`` must be
    C-contiguous.
    """
    n, n_freqs, n_pols = flags.shape
    if (n_freqs * n_pols) % 8 == 0:
        f = flags.reshape(-1).view(np.uint8)
        b = bits.reshape(-1)
        for i in range(b.size):
            j = 8 * i
            b[i] = (f[j] | (f[j + 1] << 1) | (f[j + 2] << 2) | (f[j + 3] << 3) | (f[j + 4] << 4)
                    | (f[j + 5] << 5) | (f[j + 6] << 6) | (f[j + 7] << 7))
        return
    for r in range(n):
        k, byte, value = 0, 0, 0
        for c in range(n_freqs):
            for p in range(n_pols):
                if flags[r, c, p]:
                    value |= 1 << k
                k += 1
                if k == 8:
                    bits[r, byte] = value
                    byte, k, value = byte + 1, 0, 0
        if k:
            bits[r, byte] = value


@numba.njit(cache=True, nogil=True)
def _samples_kernel(flags, nsamples, flag_bits, flags_ms, nsamples_ms, weights, conj, chan_dst, pol_src, pol_src_conj,
                    identity):
    """A block of file rows as FLAG (packed), WEIGHT_SPECTRUM and WEIGHT, in one call without the GIL.

    Returns
    -------
    bool
        False if a sample count is negative or NaN (then nothing else is meaningful).
    """
    lo, hi, valid = _sample_range(nsamples)
    if not valid:
        return False
    if identity:
        _pack_flags(flags, flag_bits)
        _band_weights(nsamples, lo, hi, pol_src, weights)
    else:
        _reorder_kernel(flags, flags_ms, conj, chan_dst, pol_src, pol_src_conj)
        _reorder_kernel(nsamples, nsamples_ms, conj, chan_dst, pol_src, pol_src_conj)
        _pack_flags(flags_ms, flag_bits)
        _band_weights(nsamples_ms, lo, hi, pol_src, weights)
    return True


# ---------------------------------------------------------------------------
# whole passes over the rows, without the GIL
# ---------------------------------------------------------------------------
#
# A pass turns a run of blocks and writes each into its column's tile file
# itself (pwrite), then lets the block's mapped pages of the file go: one
# call, no Python between blocks, so the thread running it never waits for
# the GIL, which the thread writing the other columns through casacore holds
# for milliseconds at a time.

_pwrite = numba.types.ExternalFunction(
    "pwrite", numba.types.intp(numba.types.int32, numba.types.uintp, numba.types.uintp, numba.types.int64))
_madvise = numba.types.ExternalFunction(
    "madvise", numba.types.int32(numba.types.uintp, numba.types.uintp, numba.types.int32))
_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = int(getattr(mmap, "MADV_DONTNEED", 4))

WRITE_FAILED = 2
"""A pass's code: a write failed (:meth:`_VisibilityWriter._check` finds out why)."""
INVALID_SAMPLES = 1
"""A pass's code: a sample count is negative or NaN."""


@numba.njit(cache=True, nogil=True)
def _write_all(fd, address, nbytes, offset):
    """``nbytes`` from ``address`` to ``fd`` at ``offset``; False if a pwrite fails (short writes are resumed)."""
    done = 0
    while done < nbytes:
        n = _pwrite(fd, address + done, nbytes - done, offset + done)
        if n <= 0:
            return False
        done += n
    return True


@numba.njit(cache=True, nogil=True)
def _release(block, page, advice):
    """Let the whole pages of a block of the mapped file go (they stay in the page cache)."""
    lo = (block.ctypes.data + page - 1) // page * page
    hi = (block.ctypes.data + block.nbytes) // page * page
    if hi > lo:
        _madvise(lo, hi - lo, advice)


@numba.extending.intrinsic
def _fetch_add(typingctx, counter, value):
    """``counter[0] += value`` as one atomic step; returns the value before (LLVM's ``atomicrmw add``)."""
    if not (isinstance(counter, numba.types.Array) and counter.dtype == numba.types.int64 and counter.ndim == 1):
        return None
    sig = numba.types.int64(counter, numba.types.int64)

    def codegen(context, builder, signature, args):
        array, step = args
        return builder.atomic_rmw("add", context.make_array(signature.args[0])(context, builder, array).data, step,
                                  "seq_cst")

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def _next_block(counter, stop, starts, stops):
    """The next block nobody has taken, and its first and last-plus-one rows (-1: none left, or ``stop`` is set)."""
    k = -1 if _fetch_add(stop, 0) != 0 else _fetch_add(counter, 1)
    if k < 0 or k >= starts.size:
        return -1, 0, 0
    return k, starts[k], stops[k]


@numba.njit(cache=True, nogil=True)
def _samples_pass(flags, nsamples, row0, starts, stops, counter, stop, flag_bits, flags_ms, nsamples_ms, weights, conj,
                  chan_dst, pol_src, pol_src_conj, identity, fd_flag, fd_weight_spectrum, release):
    """FLAG (packed) and WEIGHT_SPECTRUM of blocks of rows, written to their tile files, and WEIGHT.

    Takes blocks in turn from ``counter`` (shared with any other thread
    running the pass on the same blocks) until none is left or ``stop[0]``
    is set.

    Parameters
    ----------
    flags, nsamples : ndarray, shape (rows, Nfreqs, Npols)
        The file's rows from ``row0`` on (the whole mapped data set, or one block read).
    starts, stops : ndarray of int64
        The blocks (file rows).
    counter, stop : ndarray of int64, shape (1,)
        The next block to take, and the stop signal.
    flag_bits, flags_ms, nsamples_ms : ndarray
        Buffers of one block, this thread's (``flags_ms`` and ``nsamples_ms`` empty when ``identity``).
    weights : ndarray of float32, shape (Nblts, Npols)
        WEIGHT, written.
    fd_flag, fd_weight_spectrum : int
        The tile files; -1: write nothing (the caller writes the buffers of
        the one block).
    release : bool
        Let each block's pages of the mapped file go once written.

    Returns
    -------
    (int, int)
        (-1, 0) when done; else the block that failed, and
        :data:`INVALID_SAMPLES` or :data:`WRITE_FAILED` (``stop`` is then set).
    """
    flag_row, ws_row = flag_bits.shape[1], nsamples.shape[1] * nsamples.shape[2] * 4
    while True:
        k, lo, hi = _next_block(counter, stop, starts, stops)
        if k < 0:
            return -1, 0
        n = hi - lo
        f, s = flags[lo - row0:hi - row0], nsamples[lo - row0:hi - row0]
        bits = flag_bits[:n]
        f_ms, s_ms = flags_ms[:0 if identity else n], nsamples_ms[:0 if identity else n]
        if not _samples_kernel(f, s, bits, f_ms, s_ms, weights[lo:hi], conj[lo:hi], chan_dst, pol_src, pol_src_conj,
                               identity):
            _fetch_add(stop, 1)
            return k, INVALID_SAMPLES
        if fd_flag >= 0:
            ws = s if identity else s_ms
            if not (_write_all(fd_flag, bits.ctypes.data, n * flag_row, lo * flag_row)
                    and _write_all(fd_weight_spectrum, ws.ctypes.data, n * ws_row, lo * ws_row)):
                _fetch_add(stop, 1)
                return k, WRITE_FAILED
        if release:
            _release(f, _PAGE, _MADV_DONTNEED)
            _release(s, _PAGE, _MADV_DONTNEED)


@numba.njit(cache=True, nogil=True)
def _flat(a):
    """Rows of complex values as rows of their real and imaginary parts in turn (the same memory)."""
    return a.reshape(a.shape[0], -1).view(a.real.dtype)


@numba.njit(cache=True, nogil=True)
def _data_pass(vis, row0, starts, stops, counter, stop, data, dw_over_c, freq_hz, rotate, recurrence, conj, chan_dst,
               pol_src, pol_src_conj, formula, fd_data, release):
    """DATA of blocks of rows (:func:`_data_kernel`), written to its tile file; as :func:`_samples_pass`."""
    data_row = data.shape[1] * data.shape[2] * 8
    while True:
        k, lo, hi = _next_block(counter, stop, starts, stops)
        if k < 0:
            return -1, 0
        n = hi - lo
        v, out = vis[lo - row0:hi - row0], data[:n]
        _data_kernel(v, out, _flat(v), _flat(out),
                     dw_over_c[lo:hi], freq_hz, rotate, recurrence, conj[lo:hi], chan_dst, pol_src, pol_src_conj,
                     formula)
        if fd_data >= 0 and not _write_all(fd_data, out.ctypes.data, n * data_row, lo * data_row):
            _fetch_add(stop, 1)
            return k, WRITE_FAILED
        if release:
            _release(v, _PAGE, _MADV_DONTNEED)


class _Stop:
    """A stop signal seen by Python threads and by the passes running without the GIL."""

    def __init__(self):
        self.flag = np.zeros(1, dtype=np.int64)

    def set(self) -> None:
        self.flag[0] = 1

    def is_set(self) -> bool:
        return bool(self.flag[0])


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def _write_ms_atomically(uvd, data: _Data, geometry, src: Path, ms_path: Path) -> dict[str, float]:
    """Write the MS at a temporary sibling, check it, then rename it in place.

    ``geometry()`` makes the plan (:func:`_write_ms`).

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
        # The independent UVW recomputation does not need the MS: it runs while the
        # spectra are still being written (this thread would only wait meanwhile).
        recomputed = {}
        _write_ms(uvd, data, geometry, src, tmp, meanwhile=lambda: recomputed.update(uvw=_uvw_recomputation(uvd)))
        return _check_written_ms(tmp, uvd, final=ms_path, recomputed=recomputed["uvw"])

    return convert.atomic_ms(uvd, ms_path, write)


class _VisibilityWriter:
    """Turns the file's rows into DATA, FLAG, WEIGHT_SPECTRUM and WEIGHT of the MS, and writes them.

    In two passes over the rows: the flags and sample counts first
    (:meth:`write_samples`: FLAG, WEIGHT_SPECTRUM, WEIGHT; they need the
    layout only, known from the header), then the visibilities
    (:meth:`write_data`: DATA, once :meth:`rotate_by` has the plan of the
    geometry).

    When the file is mapped and the table's tile files can be written in
    place (:meth:`mswrite.MainTable.direct_files`), a pass is one call of
    :func:`_samples_pass` or :func:`_data_pass` that turns and writes every
    block without the GIL; the DATA pass runs on two threads, which take the
    blocks in turn from a shared counter (a buffer each). Otherwise each block is
    read (:class:`_BlockReader`), turned and handed to
    :meth:`mswrite.MainTable.put_spectra`, two buffers in turn: a block may
    still be on its way to disk while the next is turned. Where the file's
    layout is already the MS's (no row conjugated, no axis reordered),
    WEIGHT_SPECTRUM is the block of sample counts as read.
    """

    def __init__(self, row_map: _RowMap, conj_rows: np.ndarray, n_block: int, n_rows: int, n_freqs: int,
                 n_pols: int):
        self.map, self.conj_rows = row_map, conj_rows
        shape = (n_block, n_freqs, n_pols)
        self.data = [np.empty(shape, dtype=np.complex64) for _ in range(2)]
        self.flag_bits = [np.empty((n_block, -(-n_freqs * n_pols // 8)), dtype=np.uint8) for _ in range(2)]
        # Reordered FLAG and WEIGHT_SPECTRUM, when the file's layout is not the MS's.
        reordered = (0, n_freqs, n_pols) if self.map.identity else shape
        self.flags = [np.empty(reordered, dtype=bool) for _ in range(2)]
        self.nsamples = [np.empty(reordered, dtype=np.float32) for _ in range(2)]
        self.weights = np.empty((n_rows, n_pols), dtype=np.float32)
        self.n_rows = n_rows
        self.blocks = np.array([(lo, min(lo + n_block, n_rows)) for lo in range(0, n_rows, n_block)],
                               dtype=np.int64).reshape(-1, 2)

    def release(self) -> None:
        """Drop the buffers now (see :meth:`_BlockReader.release`); WEIGHT, already written, goes too."""
        self.data = self.flag_bits = self.flags = self.nsamples = []
        self.weights = self.dw_over_c = None

    def rotate_by(self, plan: _Plan) -> None:
        """Take the rotation of the plan (before :meth:`write_data`)."""
        self.freq_hz = plan.freq_hz
        self.rotate = plan.delta_w_m is not None
        # The first factor of pyuvdata's product (dw * (1/c)) * nu, per row.
        self.dw_over_c = plan.delta_w_m * (1.0 / _C_M_S) if self.rotate else np.zeros(self.n_rows)
        self.recurrence = _evenly_spaced(plan.freq_hz, self.dw_over_c if self.rotate else None)
        self.formula = numpy_product_formula() if self.rotate else 0

    def _samples(self, flags, nsamples, row0, blocks, stop, turn, fds, release):
        m = self.map
        return _samples_pass(flags, nsamples, row0, blocks[:, 0], blocks[:, 1], np.zeros(1, dtype=np.int64),
                             stop.flag, self.flag_bits[turn], self.flags[turn], self.nsamples[turn], self.weights,
                             self.conj_rows, m.chan_dst, m.pol_src, m.pol_src_conj, m.identity, fds["FLAG"],
                             fds["WEIGHT_SPECTRUM"], release)

    def _data(self, vis, row0, blocks, counter, stop, turn, fds, release):
        m = self.map
        return _data_pass(vis, row0, blocks[:, 0], blocks[:, 1], counter, stop.flag, self.data[turn], self.dw_over_c,
                          self.freq_hz, self.rotate, self.recurrence, self.conj_rows, m.chan_dst, m.pol_src,
                          m.pol_src_conj, self.formula, fds["DATA"], release)

    def write_samples(self, table: mswrite.MainTable, reader: _BlockReader, stop: _Stop) -> None:
        """FLAG, WEIGHT_SPECTRUM and WEIGHT of every row.

        Raises
        ------
        _InvalidSampleCounts
            A sample count is negative or NaN (the pyuvdata path repairs those).
        OSError
            A write failed.
        """
        fds = table.direct_files() if reader.mapped else None
        if fds is not None:
            flags, nsamples = reader.whole(reader.SAMPLES)
            block, code = self._samples(flags, nsamples, 0, self.blocks, stop, 0, fds, True)
            self._check(block, code, table, lambda lo, hi: self._samples_parts(lo, hi, 0, nsamples[lo:hi]))
            if not stop.is_set():
                table.written("FLAG", self.n_rows)
                table.written("WEIGHT_SPECTRUM", self.n_rows)
            return
        none = {"FLAG": -1, "WEIGHT_SPECTRUM": -1}
        for k, (lo, hi) in enumerate(self.blocks):
            if stop.is_set():
                return
            flags, nsamples = reader.read(lo, hi, reader.SAMPLES)
            turn = k % 2
            block, code = self._samples(flags, nsamples, lo, self.blocks[k:k + 1], stop, turn, none, False)
            self._check(k if code else -1, code, table, None)
            n = hi - lo
            table.put_spectra(lo, flags=self.flag_bits[turn][:n],
                              weight_spectrum=nsamples if self.map.identity else self.nsamples[turn][:n])
            if k:  # put_spectra waited for the block before; its mapped pages may go
                reader.done(*self.blocks[k - 1], reader.SAMPLES)

    def start_data(self, table: mswrite.MainTable, reader: _BlockReader, stop: _Stop,
                   helper: ThreadPoolExecutor) -> None:
        """Start the DATA pass on ``helper`` (after :meth:`rotate_by`), when the pass can run without the GIL.

        The thread of :meth:`write_samples` joins it when done there
        (:meth:`write_data`), the two taking the blocks in turn.
        """
        self._pass = None
        fds = table.direct_files() if reader.mapped else None
        if fds is not None:
            (vis,) = reader.whole(reader.DATA)
            counter = np.zeros(1, dtype=np.int64)
            other = helper.submit(self._data, vis, 0, self.blocks, counter, stop, 1, fds, True)
            self._pass = (vis, counter, fds, other)

    def write_data(self, table: mswrite.MainTable, reader: _BlockReader, stop: _Stop) -> None:
        """DATA of every row (after :meth:`start_data`): this thread's share of the pass, or block by block.

        Raises
        ------
        OSError
            A write failed.
        """
        if self._pass is not None:
            vis, counter, fds, other = self._pass
            try:
                mine = self._data(vis, 0, self.blocks, counter, stop, 0, fds, True)
            finally:
                theirs = other.result()  # also when this thread failed: the buffers must outlive the pass
            for turn, (block, code) in enumerate((mine, theirs)):
                self._check(block, code, table, lambda lo, hi, turn=turn: [("DATA", self.data[turn][:hi - lo])])
            if not stop.is_set():
                table.written("DATA", self.n_rows)
            return
        none = {"DATA": -1}
        for k, (lo, hi) in enumerate(self.blocks):
            if stop.is_set():
                return
            (vis,) = reader.read(lo, hi, reader.DATA)
            turn = k % 2
            self._data(vis, lo, self.blocks[k:k + 1], np.zeros(1, dtype=np.int64), stop, turn, none, False)
            table.put_spectra(lo, data=self.data[turn][:hi - lo])
            if k:
                reader.done(*self.blocks[k - 1], reader.DATA)

    def _samples_parts(self, lo: int, hi: int, turn: int, nsamples: np.ndarray) -> list:
        """FLAG and WEIGHT_SPECTRUM of the block ``lo``-``hi`` as last turned (``nsamples``: its counts as read)."""
        n = hi - lo
        return [("FLAG", self.flag_bits[turn][:n]),
                ("WEIGHT_SPECTRUM", nsamples if self.map.identity else self.nsamples[turn][:n])]

    def _check(self, block: int, code: int, table: mswrite.MainTable, parts) -> None:
        """Raise for a pass that stopped short: invalid samples, or the failed write's own OSError.

        ``parts(lo, hi)`` lists the (column, block) writes of the block that
        failed; they are redone from Python, where ``os.pwrite`` raises the
        system's error.
        """
        if code == 0:
            return
        lo, hi = (int(x) for x in self.blocks[block])
        if code == INVALID_SAMPLES:
            raise _InvalidSampleCounts(f"rows {lo}-{hi}")
        fds = table.direct_files()
        for name, rows in parts(lo, hi):
            raw = memoryview(np.ascontiguousarray(rows)).cast("B")
            row_bytes = len(raw) // (hi - lo)
            written = 0
            while written < len(raw):
                written += os.pwrite(fds[name], raw[written:], lo * row_bytes + written)
        raise OSError(errno.EIO, f"writing rows {lo}-{hi} failed, then succeeded when redone; the disk is unreliable")


class _InvalidSampleCounts(Exception):
    """The file has sample counts below zero or not finite (see ``convert._repair_nsamples``)."""


def _write_ms(uvd, data: _Data, geometry, src: Path, path: Path, meanwhile=lambda: None) -> _Plan:
    """Write the main table, then the subtables, as pyuvdata's ``write_ms`` does; returns the plan.

    ``geometry()`` (:func:`_geometry`, on this thread) makes the plan. When
    the big columns are written directly (:class:`mswrite.MainTable`), a
    second thread turns and writes FLAG and WEIGHT_SPECTRUM, which need no
    geometry, while this one does the geometry; DATA then starts on a helper
    thread, which the second joins when it is done with FLAG, while this one
    writes the other columns and the subtables through casacore and calls
    ``meanwhile()`` (:class:`_VisibilityWriter`). Otherwise one after the other.
    """
    n_rows, n_freqs, n_pols = int(uvd.Nblts), int(uvd.Nfreqs), int(uvd.Npols)
    row_map, conj_rows = _RowMap.from_header(uvd)
    reader = _BlockReader(data, min(ROWS_PER_BLOCK, n_rows), n_freqs, n_pols, src)
    writer = _VisibilityWriter(row_map, conj_rows, min(ROWS_PER_BLOCK, n_rows), n_rows, n_freqs, n_pols)
    stop = _Stop()
    planned: Future = Future()

    def plan_now() -> _Plan:
        plan = geometry()
        _check_layout(plan, row_map, conj_rows)
        if uvd.scan_number_array is None:
            uvd._set_scan_numbers()  # as write_ms: one scan per contiguous run of a field
        # DATA starts on the helper now, whether or not FLAG and WEIGHT_SPECTRUM are done.
        writer.rotate_by(plan)
        writer.start_data(table, reader, stop, helper)
        planned.set_result(plan)
        return plan

    table = None
    helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="contimg-data")
    try:
        table = mswrite.MainTable(path, n_rows, n_freqs, n_pols, preset=_likely_constants(uvd))
        if table.direct:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="contimg-spectra") as pool:
                spectra = pool.submit(_write_spectra, reader, writer, table, uvd, stop, planned)
                try:
                    plan = plan_now()
                    _write_other_columns(table.open(), uvd, table.preset)
                    table.close_table()
                    _write_subtables(uvd, plan, path)
                    meanwhile()
                    # Reference cycles of the geometry (exceptions astropy keeps while guessing
                    # time formats hold the frames of this conversion) would keep its metadata
                    # until a full collection: the young generations, 3 ms, while DATA is written.
                    gc.collect(1)
                except BaseException as e:
                    stop.set()
                    if not planned.done():
                        planned.set_exception(e)
                    raise
                spectra.result()
        else:
            plan = plan_now()
            _write_spectra(reader, writer, table, uvd, stop, planned)
            _write_other_columns(table.open(), uvd, table.preset)
            table.close_table()
            _write_subtables(uvd, plan, path)
            meanwhile()
        table.finish()
        return plan
    except BaseException:
        stop.set()
        if table is not None:
            table.abandon()  # the caller removes the temporary MS
        raise
    finally:
        helper.shutdown(wait=True)
        reader.release()
        writer.release()


def _write_spectra(reader: _BlockReader, writer: _VisibilityWriter, table: mswrite.MainTable, uvd,
                   stop: _Stop, planned: Future) -> None:
    """FLAG and WEIGHT_SPECTRUM, then DATA once ``planned`` has the plan; then WEIGHT, SIGMA and UVW.

    Raises
    ------
    _InvalidSampleCounts
        A sample count is negative or not finite.
    """
    writer.write_samples(table, reader, stop)
    planned.result()  # raises what the geometry raised; DATA is under way (start_data)
    writer.write_data(table, reader, stop)
    if stop.is_set():
        return
    weights = writer.weights
    table.put_column("WEIGHT", weights)
    # pyuvdata leaves SIGMA undefined where WEIGHT is 0; we write 0 there.
    with np.errstate(invalid="ignore"):  # negative weights (flagged data of some writers) give NaN, as in pyuvdata
        sigma = np.power(weights, -0.5, where=weights != 0, out=np.zeros_like(weights))
    table.put_column("SIGMA", sigma)
    table.put_column("UVW", -uvd.uvw_array)  # the flip_conj convention of the DATA


def _likely_constants(uvd) -> dict:
    """Values the main table's scalar columns will likely hold in every row, from the header (see ``preset``).

    One integration time for INTERVAL and EXPOSURE, when the file has one;
    one field (0) and one scan (1): the geometry phases every row to one
    centre. Only a guess: :func:`_write_other_columns` writes any column
    whose values turn out otherwise.
    """
    times = np.asarray(uvd.integration_time, dtype=np.float64)
    guess = {"DATA_DESC_ID": 0, "FIELD_ID": 0, "SCAN_NUMBER": 1}
    if times.size and np.all(times == times[0]):
        guess.update(INTERVAL=float(times[0]), EXPOSURE=float(times[0]))
    return guess


def _write_other_columns(ms, uvd, preset: dict) -> None:
    """The main table's columns other than :func:`_write_spectra`'s, and its keywords, through casacore.

    A scalar column whose values are all the one the table holds already
    (``preset``, :attr:`mswrite.MainTable.preset`) is not written again.
    """
    from astropy.time import Time

    def put(name: str, values) -> None:
        values = np.asarray(values)
        if name in preset and values.size and np.all(values == preset[name]):
            return
        ms.putcol(name, values)

    n_rows = int(uvd.Nblts)
    ms.putcolkeyword("DATA", "QuantumUnits", uvd.vis_units)
    ms.putcol("ANTENNA1", uvd.ant_1_array)
    ms.putcol("ANTENNA2", uvd.ant_2_array)
    # INTERVAL and EXPOSURE: UVData has one integration time for both.
    put("INTERVAL", uvd.integration_time)
    put("EXPOSURE", uvd.integration_time)
    put("DATA_DESC_ID", np.zeros(n_rows, dtype=np.int32))
    put("SCAN_NUMBER", uvd.scan_number_array)
    # MS time is MJD seconds (UTC); astropy once per distinct time.
    times, index = np.unique(uvd.time_array, return_inverse=True)
    mjd_s = (Time(times, format="jd", scale="utc").mjd * 86400.0)[index]
    ms.putcol("TIME", mjd_s)
    ms.putcol("TIME_CENTROID", mjd_s)
    field_ids = np.empty_like(uvd.phase_center_id_array)
    for idx, cat_id in enumerate(uvd.phase_center_catalog):
        field_ids[uvd.phase_center_id_array == cat_id] = idx
    put("FIELD_ID", field_ids)
    if uvd.extra_keywords:
        ms.putkeyword("pyuvdata_extra", uvd.extra_keywords)
    if uvd.pol_convention is not None:
        ms.putkeyword("pyuvdata_polconv", uvd.pol_convention)
    ms.putkeyword("pyuvdata_flip_conj", True)


def _write_subtables(uvd, plan: _Plan, path: Path) -> None:
    """Fill the subtables of the MS skeleton at ``path`` as pyuvdata's ``write_ms`` does.

    By the pyuvdata functions ``write_ms`` calls, from the same metadata,
    except POINTING: :func:`mstables.write_pointing` writes the same cells
    without pyuvdata's slow path through casacore (0.1 s of 0.13 s). ANTENNA,
    DATA_DESCRIPTION, POLARIZATION and SPECTRAL_WINDOW, which the telescope
    and the subband fix, are written once per process and their files laid
    out again for the same inputs (:func:`mstables.write_or_reuse`: 16 ms of
    a worker's conversion).
    """
    from pyuvdata.utils.io import ms as ms_utils

    from . import mstables

    def fixed(name: str, write, **kw) -> None:
        mstables.write_or_reuse(path, name, mstables.subtable_inputs(uvd, name, **kw), write)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_UNITS_WARNING)
        target = str(path)
        fixed("ANTENNA", lambda: ms_utils.write_ms_antenna(target, uvobj=uvd))
        fixed("DATA_DESCRIPTION", lambda: ms_utils.write_ms_data_description(target, uvobj=uvd))
        ms_utils.write_ms_feed(target, uvobj=uvd)
        ms_utils.write_ms_field(target, uvobj=uvd)
        ms_utils.write_ms_history(target, uvobj=uvd)
        ms_utils.write_ms_observation(target, uvobj=uvd)
        mstables.write_pointing(path, uvd)
        fixed("POLARIZATION",
              lambda: ms_utils.write_ms_polarization(target, pol_order=plan.pol_order_pyuvdata, uvobj=uvd),
              pol_order=plan.pol_order_pyuvdata)
        ms_utils.write_ms_source(target, uvobj=uvd)
        fixed("SPECTRAL_WINDOW", lambda: ms_utils.write_ms_spectral_window(target, uvobj=uvd))


def _uvw_recomputation(uvd) -> dict[str, float]:
    """:func:`phasing.uvw_check` of ``uvd``'s UVWs at the rows of its first and last time (see :func:`_check_written_ms`)."""
    times = uvd.time_array
    sample = np.flatnonzero((times == times.min()) | (times == times.max()))
    return phasing.uvw_check(uvd, rows=sample)


def _check_written_ms(ms: Path, uvd, *, final: Path, recomputed: dict[str, float] | None = None) -> dict[str, float]:
    """Read the written rows' antennas and UVWs back and check them.

    Checked:

    - the number of rows;
    - ANTENNA1, ANTENNA2 and UVW as read back, every row, bit for bit what
      was to be written: ``uvd``'s antennas and the negative of its UVWs
      (the flip_conj sign of the DATA);
    - the UVWs read back of the rows of the first and the last time against
      UVWs recomputed from the times, the phase-centre catalogue and the
      antenna positions by pyuvdata row by row (:func:`phasing.uvw_check` on
      those rows). That recomputation is independent of the per-time one
      the UVWs were written from (:func:`phasing.rows_per_time`,
      :func:`phasing.antenna_uvws`), which gives every time the same
      rotation of the antennas, and it costs a tenth of recomputing all rows.

    Returns
    -------
    dict
        ``max_m`` and ``rms_m`` of :func:`phasing.uvw_check` over the rows of
        the first and the last time (0.0 when the two computations agree bit
        for bit, as they do; the pyuvdata path reports them over all rows).

    Raises
    ------
    RuntimeError
        The MS does not hold what was written.
    """
    from casacore import tables

    with tables.table(str(ms), ack=False) as t:
        n_rows = t.nrows()
        if n_rows != uvd.Nblts:
            raise RuntimeError(f"the MS written for {final} has {n_rows} rows instead of {uvd.Nblts}")
        ant1, ant2, uvw = t.getcol("ANTENNA1"), t.getcol("ANTENNA2"), t.getcol("UVW")
    if not (np.array_equal(ant1, uvd.ant_1_array) and np.array_equal(ant2, uvd.ant_2_array)):
        raise RuntimeError(f"the MS written for {final} does not hold the antennas of its rows")
    if not np.array_equal(uvw, -uvd.uvw_array):
        raise RuntimeError(f"the MS written for {final} does not hold the UVWs of its rows")
    # The UVWs read back are uvd's (just checked): those of the sample rows
    # are compared with pyuvdata's recomputation (``recomputed``, when it was
    # made while the MS was being written).
    return recomputed if recomputed is not None else _uvw_recomputation(uvd)
