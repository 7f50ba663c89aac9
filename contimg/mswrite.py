"""The main table of a new Measurement Set, with its big columns written at disk speed.

A converted subband is mostly three columns of the main table: DATA
(complex64), FLAG and WEIGHT_SPECTRUM (float32), one (channels x
polarizations) cell per row. :class:`MainTable` creates the MS with pyuvdata's
columns and data managers, except that these three, WEIGHT and SIGMA have a
fixed cell shape in a TiledColumnStMan (see :func:`main_table_layout`), and
writes those five and UVW (:data:`_DTYPES`) in one of two ways:

- **direct**: a TiledColumnStMan whose tiles hold whole cells stores a column
  as one file of tiles, each tile a run of consecutive rows in row order, in
  the table's (local) byte order, booleans as bits (least significant
  first). A block of rows is therefore a contiguous run of bytes of that file,
  and the writer appends it with one ``write`` (from a background thread): no
  casacore call and no copy. The table's other files come from a template
  made once per process and shape (:func:`_template`) by casacore itself, for
  the same number of rows, so that casacore finds exactly the tiles it expects.
- **putcol**: the same blocks through casacore's ``putcol``.

Direct is used when the layout is what it assumes: the template's tiles have
the sizes that layout implies, and a self-test (:func:`_direct_layout_works`)
writes a small table directly and reads it back through casacore, bit for
bit, once per process and shape; otherwise putcol, with a warning. Every MS
written directly is read back through casacore at its first, middle and last
rows of each such column before it is accepted (:meth:`MainTable.finish`).

Why: through casacore's ``putcol``, DATA, FLAG and WEIGHT_SPECTRUM of a
``full``-preset subband (385 MB) took 0.15-0.17 s in a TiledColumnStMan and
0.55 s in pyuvdata's TiledShapeStMan; written with plain ``write`` calls the
same bytes take ~0.09 s on the development VM (measured by hand, 2026-12-06),
and the writing thread lets the conversion go on meanwhile.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TILE_ELEMENTS = 32768
"""Elements per tile: casacore's own default for a tiled column (4 x 48 x 171 for a full-preset cell)."""

SPECTRA = ("DATA", "FLAG", "WEIGHT_SPECTRUM")
"""The per-channel columns, in the order :meth:`MainTable.put_spectra` takes them."""

_DTYPES = {
    "DATA": np.dtype(np.complex64),
    "FLAG": np.dtype(bool),
    "WEIGHT_SPECTRUM": np.dtype(np.float32),
    "WEIGHT": np.dtype(np.float32),
    "SIGMA": np.dtype(np.float32),
    "UVW": np.dtype(np.float64),
}
"""The columns that can be written directly, and their types in memory and on disk."""


def fixed_shape_columns(n_freqs: int, n_pols: int) -> dict[str, tuple[int, ...]]:
    """The main-table columns given a fixed cell shape (C order) by :func:`main_table_layout`."""
    spectrum = (n_freqs, n_pols)
    return {"DATA": spectrum, "FLAG": spectrum, "WEIGHT_SPECTRUM": spectrum, "WEIGHT": (n_pols,), "SIGMA": (n_pols,)}


@functools.lru_cache(maxsize=4)
def main_table_layout(n_freqs: int, n_pols: int) -> tuple[dict, dict]:
    """pyuvdata's main-table description and data managers, with the spectra fixed-shape.

    pyuvdata's skeleton (``init_ms_file``) puts DATA, FLAG, WEIGHT_SPECTRUM,
    WEIGHT and SIGMA in TiledShapeStMan, which keeps a shape per row; writing
    through it costs 3.5x what the same bytes cost through a TiledColumnStMan
    with a fixed cell shape (0.55 s against 0.16 s for a full-preset file).
    TIME and TIME_CENTROID go from IncrementalStMan to StandardStMan (writing
    them takes a tenth of the time). Every other column keeps pyuvdata's
    description and data manager, with casacore's default bucket size (32 kB,
    not pyuvdata's 128 bytes) for the StandardStMan ones. One spectral
    window per MS means one cell shape per column, which is what a fixed
    shape requires; CASA and WSClean read
    either kind. A tile is :data:`TILE_ELEMENTS` elements' worth of whole
    cells, so that it is a run of consecutive rows.

    Returns
    -------
    (dict, dict)
        Table description and data-manager info for ``tables.default_ms``;
        cached, so callers take copies.
    """
    from pyuvdata.utils.io import ms as ms_utils

    with tempfile.TemporaryDirectory(prefix="contimg-skeleton-") as d:
        t = ms_utils.init_ms_file(os.path.join(d, "skeleton.ms"))
        desc, dminfo = t.getdesc(), t.getdminfo()
        t.close()
    # The skeleton's own subtable references; default_ms makes the new MS's.
    desc["_keywords_"] = {k: v for k, v in desc["_keywords_"].items() if not str(v).startswith("Table: ")}
    for name, cell in fixed_shape_columns(n_freqs, n_pols).items():
        desc[name]["shape"] = np.array(cell, dtype=np.int32)  # C order, as getdesc gives it
        desc[name]["option"] = 4  # casacore ColumnDesc::FixedShape
        rows_per_tile = max(1, -(-TILE_ELEMENTS // int(np.prod(cell))))
        (key,) = [k for k, m in dminfo.items() if m["COLUMNS"] == [name]]
        dminfo[key] = {
            "TYPE": "TiledColumnStMan",
            "NAME": dminfo[key]["NAME"],
            "SPEC": {"DEFAULTTILESHAPE": np.array([*cell[::-1], rows_per_tile], dtype=np.int32)},
            "COLUMNS": [name],
        }
    for key, m in dminfo.items():
        if m["COLUMNS"] in (["TIME"], ["TIME_CENTROID"]) and m["TYPE"] == "IncrementalStMan":
            # One value a row in plain buckets: putcol of a full file's times takes 0.5 ms
            # there, 5 ms in the incremental manager (a value every 6903 rows).
            dminfo[key] = {"TYPE": "StandardStMan", "NAME": m["NAME"], "SPEC": {}, "COLUMNS": m["COLUMNS"]}
    for m in dminfo.values():
        if m["TYPE"] == "StandardStMan":
            m["SPEC"] = {**m["SPEC"], "BUCKETSIZE": 32768}
    return desc, dminfo


def create_table(path: str | os.PathLike, n_freqs: int, n_pols: int):
    """A new, empty MS (main table and empty subtables) laid out as :func:`main_table_layout` says."""
    from casacore import tables

    desc, dminfo = copy.deepcopy(main_table_layout(n_freqs, n_pols))
    return tables.default_ms(str(path), desc, dminfo)


# ---------------------------------------------------------------------------
# the direct layout
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _ColumnFile:
    """Where casacore keeps one directly written column of a table, and how big that file is."""

    name: str
    file: str
    """The tile file's name in the table directory (``table.f<N>_TSM0``)."""
    row_bytes: int
    size: int
    """The file's length: every tile, the last one padded."""


@dataclass(frozen=True)
class _Template:
    """An MS made by casacore with ``n_rows`` rows and nothing written, held in memory.

    ``files`` are the bytes of every file but the directly written columns'
    tile files (86 files, 2.8 MB for a full-preset subband): writing them
    out takes a few ms, where copying the directory took 38 ms.
    """

    directories: tuple[str, ...]
    files: tuple[tuple[str, bytes], ...]
    columns: dict[str, _ColumnFile]
    preset: dict
    """Scalar columns holding one value in every row (see :func:`_template`)."""

    def write(self, path: Path) -> None:
        """Lay the template out at ``path`` (which must not exist)."""
        path.mkdir()
        for d in self.directories:
            (path / d).mkdir()
        for name, content in self.files:
            with open(path / name, "wb") as f:
                f.write(content)


def _column_files(table, n_rows: int) -> dict[str, _ColumnFile] | None:
    """The tile files of the :data:`_DTYPES` columns, if each holds its column's tiles as runs of whole rows.

    None when one does not (the direct layout does not hold).
    """
    out = {}
    for m in table.getdminfo().values():
        cubes = m["SPEC"].get("HYPERCUBES", {})
        if m["TYPE"] != "TiledColumnStMan" or len(m["COLUMNS"]) != 1 or len(cubes) != 1:
            continue
        name = m["COLUMNS"][0]
        if name not in _DTYPES:
            continue
        (cube,) = cubes.values()
        tile, shape = [int(x) for x in cube["TileShape"]], [int(x) for x in cube["CubeShape"]]
        if tile[:-1] != shape[:-1] or shape[-1] != n_rows:
            continue  # a tile would cut through cells
        cell, rows_per_tile = int(np.prod(tile[:-1])), tile[-1]
        if name == "FLAG":
            if cell % 8:
                continue  # a row would not start on a byte
            row_bytes = cell // 8
        else:
            row_bytes = cell * _DTYPES[name].itemsize
        if int(cube["BucketSize"]) != rows_per_tile * row_bytes:
            continue
        size = -(-n_rows // rows_per_tile) * int(cube["BucketSize"])
        out[name] = _ColumnFile(name, f"table.f{int(m['SEQNR'])}_TSM0", row_bytes, size)
    return out if out.keys() == _DTYPES.keys() else None


_templates: dict[tuple, _Template | None] = {}
_MAX_TEMPLATES = 4
"""Templates kept per process (each ~3 MB; a DSA-110 worker needs one)."""


def _template(n_rows: int, n_freqs: int, n_pols: int, workdir: Path, preset: dict | None = None) -> _Template | None:
    """casacore's own empty MS of this size, made once per process; None if the direct layout does not hold.

    casacore writes the template's columns in full (zeros: 385 MB for a
    ``full`` subband, 0.2 s), so it is made in ``workdir`` (the directory of
    the MS about to be written: the node's scratch disk, not /tmp) and
    removed once its small files are in memory. ``preset`` gives scalar
    columns (of the incremental storage manager) a value in every row of the
    template: a column the MS then needs with that value throughout need not
    be written (:meth:`MainTable.preset`).
    """
    preset = dict(sorted((preset or {}).items()))
    key = (n_rows, n_freqs, n_pols, tuple(preset.items()))
    if key not in _templates:
        while len(_templates) >= _MAX_TEMPLATES:
            _templates.pop(next(iter(_templates)))
        _templates[key] = _make_template(n_rows, n_freqs, n_pols, workdir, preset)
    return _templates[key]


def _make_template(n_rows: int, n_freqs: int, n_pols: int, workdir: Path, preset: dict) -> _Template | None:
    if not _direct_layout_works(n_freqs, n_pols):
        return None
    path = Path(tempfile.mkdtemp(prefix=".contimg-ms-template-", dir=workdir)) / "template.ms"
    t = create_table(path, n_freqs, n_pols)
    try:
        t.addrows(n_rows)
        for name, value in preset.items():
            t.putcol(name, np.full(n_rows, value, dtype=t.getcol(name, 0, 1).dtype))
        t.flush()
        columns = _column_files(t, n_rows)
    finally:
        t.close()  # casacore writes the zero tiles here, once
    try:
        if columns is None or any((path / c.file).stat().st_size != c.size for c in columns.values()):
            log.warning("casacore's tile files are not laid out as expected; writing the MS columns through "
                        "putcol (slower, same result)")
            return None
        direct = {c.file for c in columns.values()}
        directories, files = [], []
        for root, dirs, names in os.walk(path):
            rel = Path(root).relative_to(path)
            directories += [str(rel / d) for d in sorted(dirs)]
            files += [(str(rel / n), (Path(root) / n).read_bytes()) for n in sorted(names)
                      if not (rel == Path(".") and n in direct)]
        return _Template(tuple(directories), tuple(files), columns, dict(preset))
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def _random_rows(name: str, n_rows: int, cell: tuple[int, ...], rng) -> np.ndarray:
    shape = (n_rows, *cell)
    if name == "FLAG":
        return rng.random(shape) < 0.5
    if name == "DATA":
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    return rng.normal(size=shape).astype(_DTYPES[name])


@functools.lru_cache(maxsize=8)
def _direct_layout_works(n_freqs: int, n_pols: int) -> bool:
    """Write a small table directly, read it back through casacore: the same values, bit for bit?"""
    from casacore import tables

    n_rows = 3 * max(1, -(-TILE_ELEMENTS // (n_freqs * n_pols))) + 5  # three whole tiles and part of a fourth
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="contimg-ms-selftest-") as d:
        path = Path(d) / "selftest.ms"
        t = create_table(path, n_freqs, n_pols)
        try:
            t.addrows(n_rows)
            t.flush()
            columns = _column_files(t, n_rows)
            cells = {name: tuple(t.getcell(name, 0).shape) if name != "UVW" else (3,) for name in columns or {}}
        finally:
            t.close()
        if columns is None:
            log.warning("casacore's tile layout is not the one the direct writer assumes; using putcol")
            return False
        values = {name: _random_rows(name, n_rows, cells[name], rng) for name in columns}
        for name, c in columns.items():
            with open(path / c.file, "r+b") as f:
                f.write(_as_bytes(name, values[name]))
        with tables.table(str(path), ack=False) as t:
            ok = all(np.array_equal(t.getcol(name), values[name]) for name in columns)
    if not ok:
        log.warning("casacore does not read back the tile files written directly; using putcol")
    return ok


def _as_bytes(name: str, block: np.ndarray):
    """A block of rows of one column as the bytes of its tile file."""
    if name == "FLAG":
        if block.dtype == np.uint8:  # already packed (MainTable.put_spectra)
            return memoryview(np.ascontiguousarray(block)).cast("B")
        return np.packbits(block.reshape(-1), bitorder="little")
    return memoryview(np.ascontiguousarray(block, dtype=_DTYPES[name])).cast("B")


# ---------------------------------------------------------------------------
# the writer
# ---------------------------------------------------------------------------


class MainTable:
    """A new MS being written: the big columns first, then the others through casacore.

    Use::

        mt = MainTable(path, n_rows, n_freqs, n_pols)
        for start, ...:
            mt.put_spectra(start, data, flags, weight_spectrum)
        mt.put_column("UVW", uvw)        # WEIGHT, SIGMA, UVW: whole columns
        # or: pwrite rows into direct_files() yourself, then written(name, n_rows)
        t = mt.open()                    # casacore table, for the other columns
        ...
        mt.close_table()                 # then the subtables, through casacore
        mt.finish()                      # checks what was written directly

    Blocks come in row order, each following the last. Written directly,
    the bytes go to the files from a background thread (a ``write`` releases
    the GIL), so that the next block is computed while one goes to disk;
    :meth:`put_spectra` returns once the block before is written, so the
    caller may reuse the arrays of the block before last (two buffers in
    turn suffice). Written directly, the six columns of :data:`_DTYPES` are
    files of their own that casacore does not read before :meth:`finish`:
    they may be written from one thread while another writes the other
    columns through casacore (:meth:`open`, :meth:`close_table`). On any
    exception the caller calls :meth:`abandon` and removes ``path`` (the
    temporary MS of :func:`convert.atomic_ms`).

    Parameters
    ----------
    path : path
        The MS to create; must not exist.
    n_rows, n_freqs, n_pols : int
        Rows, and the cell shape of the spectra (channels, correlations).
    direct : bool
        Write the spectra, WEIGHT, SIGMA and UVW directly when the layout
        allows it (the default); False forces putcol.
    preset : dict, optional
        Values that scalar columns of the incremental storage manager are
        likely to hold in every row (``{"INTERVAL": 12.88, ...}``): the
        template holds them already (:attr:`preset`), and a column the MS
        needs with that value throughout need not be written.
    """

    def __init__(self, path: str | os.PathLike, n_rows: int, n_freqs: int, n_pols: int, *, direct: bool = True,
                 preset: dict | None = None):
        self.path = Path(path)
        self.n_rows = n_rows
        self.cell = (n_freqs, n_pols)
        self.template = _template(n_rows, n_freqs, n_pols, self.path.parent, preset) if direct else None
        self._table = None
        self._files: dict[str, object] = {}
        self._rows_written: dict[str, int] = {}
        self._probes: dict[tuple[str, int], np.ndarray] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        if self.template is None:
            self._table = create_table(self.path, n_freqs, n_pols)
            self._table.addrows(n_rows)
            return
        self.template.write(self.path)
        for name, c in self.template.columns.items():
            self._files[name] = f = open(self.path / c.file, "w+b")  # read too: MainTable.written reads probes back
            os.posix_fallocate(f.fileno(), 0, c.size)
            self._rows_written[name] = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="contimg-ms-write")

    @property
    def preset(self) -> dict:
        """Scalar columns that already hold one value in every row (the ``preset`` taken), by name."""
        return self.template.preset if self.template is not None else {}

    @property
    def direct(self) -> bool:
        """Whether the big columns are written directly (else through putcol)."""
        return self.template is not None

    def put_spectra(self, start: int, data: np.ndarray | None = None, flags: np.ndarray | None = None,
                    weight_spectrum: np.ndarray | None = None) -> None:
        """Write rows ``start`` to ``start + n`` of DATA, FLAG and WEIGHT_SPECTRUM, or of those given.

        Each column takes its blocks in row order, on its own: DATA may be
        written in one pass over the rows and FLAG and WEIGHT_SPECTRUM in
        another. Returns once the previous blocks are written; these may
        still be being written (do not change their arrays before the next
        call returns).

        Parameters
        ----------
        data : ndarray of complex64, shape (n, Nfreqs, Npols), optional
        flags : ndarray of bool, same shape; or of uint8, shape (n, ceil(Nfreqs * Npols / 8)), optional
            FLAG, or FLAG packed (one bit a value, least significant first,
            each row from a new byte; :func:`contimg.fast_convert._pack_flags`).
        weight_spectrum : ndarray of float32, shape (n, Nfreqs, Npols), optional
        """
        self._wait(keep=0)
        if flags is not None and flags.dtype == np.uint8 and not self._packed_flags_fit():
            flags = np.unpackbits(flags, axis=1, count=int(np.prod(self.cell)), bitorder="little")
            flags = flags.astype(bool).reshape((flags.shape[0],) + self.cell)
        for name, block in zip(SPECTRA, (data, flags, weight_spectrum), strict=True):
            if block is not None:
                self._put(name, start, block)

    def direct_files(self) -> dict[str, int] | None:
        """File descriptors of the DATA, FLAG and WEIGHT_SPECTRUM tile files, for writing rows in place.

        For callers that write blocks of rows themselves (``pwrite`` at row
        ``r``'s offset, ``r`` times the row's bytes: a complex64, a packed
        FLAG or a float32 row), then call :meth:`written`. None when the
        columns are not written directly or a packed FLAG row is not whole
        bytes.
        """
        if not self._packed_flags_fit():
            return None
        return {name: self._files[name].fileno() for name in SPECTRA}

    def written(self, name: str, n_rows: int) -> None:
        """Rows 0 to ``n_rows`` of ``name`` were written through :meth:`direct_files`: note them, and the probes.

        The probe rows are read back from the tile file as written, for
        :meth:`finish` to compare with what casacore reads.
        """
        self._rows_written[name] = n_rows
        c = self.template.columns[name]
        for row in (0, self.n_rows // 2, self.n_rows - 1):
            if row < n_rows:
                raw = os.pread(self._files[name].fileno(), c.row_bytes, row * c.row_bytes)
                if name == "FLAG":
                    value = np.unpackbits(np.frombuffer(raw, np.uint8), count=int(np.prod(self.cell)),
                                          bitorder="little")
                else:
                    value = np.frombuffer(raw, dtype=_DTYPES[name])
                self._probes[name, row] = value.astype(_DTYPES[name]).reshape(self.cell)

    def _packed_flags_fit(self) -> bool:
        """Whether packed FLAG rows are the tile file's bytes (direct, and whole bytes a row)."""
        return "FLAG" in self._files and int(np.prod(self.cell)) % 8 == 0

    def put_column(self, name: str, values: np.ndarray) -> None:
        """Write a whole column (UVW, WEIGHT, SIGMA or any other), directly when it can be."""
        self._put(name, 0, values)

    def _put(self, name: str, start: int, block: np.ndarray) -> None:
        n = block.shape[0]
        if name not in self._files:
            self.open().putcol(name, block, start, n)
            return
        if start != self._rows_written[name] or start + n > self.n_rows:
            raise ValueError(f"rows {start}-{start + n} of {name} in {self.path} out of order "
                             f"(next is {self._rows_written[name]})")
        self._pending.append(self._pool.submit(self._files[name].write, _as_bytes(name, block)))
        self._rows_written[name] = start + n
        for row in (0, self.n_rows // 2, self.n_rows - 1):
            if start <= row < start + n:
                value = block[row - start]
                if name == "FLAG" and block.dtype == np.uint8:
                    value = np.unpackbits(value, count=int(np.prod(self.cell)), bitorder="little").reshape(self.cell)
                self._probes[name, row] = np.array(value, dtype=_DTYPES[name])

    def _wait(self, keep: int) -> None:
        """Wait until at most ``keep`` writes are pending; a failed write raises here."""
        while len(self._pending) > keep:
            self._pending.pop(0).result()

    def open(self):
        """The casacore table, open for writing the other columns.

        casacore reads nothing of the directly written files before
        :meth:`close`, so they may still be being written.
        """
        if self._table is None:
            from casacore import tables

            self._table = tables.table(str(self.path), readonly=False, ack=False)
        return self._table

    def close_table(self) -> None:
        """Close the casacore table (the subtables may then be written)."""
        if self._table is not None:
            self._table.close()
            self._table = None

    def finish(self) -> None:
        """Wait for the direct files, complete them, read rows back through casacore and compare.

        Call after :meth:`close_table` and the last put.

        Raises
        ------
        OSError
            A write failed (disk full, ...).
        ValueError
            Rows of a column were never written.
        RuntimeError
            casacore reads back something else than was written.
        """
        self.close_table()
        self._finish_files()
        if self._probes:
            self._check_probes()

    def abandon(self) -> None:
        """Stop writing and close whatever is open, after a failure; the caller removes the MS."""
        for f in self._pending:
            f.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending = []
        for f in self._files.values():
            f.close()
        self._files = {}
        if self._table is not None:
            self._table.close()
            self._table = None

    def _finish_files(self) -> None:
        if not self._files:
            return
        self._wait(keep=0)
        self._pool.shutdown(wait=True)
        self._pool = None
        short = [name for name, n in self._rows_written.items() if n != self.n_rows]
        if short:
            raise ValueError(f"{self.path}: {', '.join(short)} not written for all {self.n_rows} rows")
        for name, c in self.template.columns.items():
            f = self._files[name]
            f.truncate(c.size)  # the last tile's padding, as casacore writes it (zeros)
            f.close()
        self._files = {}

    def _check_probes(self) -> None:
        from casacore import tables

        with tables.table(str(self.path), ack=False) as t:
            for (name, row), value in self._probes.items():
                if not np.array_equal(t.getcell(name, row), value):
                    raise RuntimeError(
                        f"{self.path}: casacore reads row {row} of {name} back differently from what was "
                        "written directly; a casacore layout change? report it (putcol is used when the "
                        "self-test fails)"
                    )
