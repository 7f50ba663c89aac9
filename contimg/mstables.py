"""The MS subtables that several steps read, read in one place; and POINTING, written.

``noise.py`` (the radiometer expectation) and ``primary_beam.py`` (the drift
beam) both need each data description's spectral window and its channels.
The fast converter (``fast_convert.py``) writes POINTING with
:func:`write_pointing`, pyuvdata's table in a fraction of pyuvdata's time, and
lays out again the subtables that the telescope and the subband fix
(:func:`write_or_reuse`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import casa_env


@dataclass
class SpectralWindows:
    """Per data description its spectral window; per spectral window its channels (Hz)."""

    spw_of_ddid: np.ndarray
    chan_freq: list[np.ndarray]
    chan_width: list[np.ndarray]

    def mean_freq(self) -> np.ndarray:
        """Mean channel frequency of each spectral window (Hz)."""
        return np.array([float(np.mean(f)) for f in self.chan_freq])


def spectral_windows(ms: str | Path) -> SpectralWindows:
    """DATA_DESCRIPTION's SPECTRAL_WINDOW_ID and SPECTRAL_WINDOW's CHAN_FREQ and CHAN_WIDTH of ``ms``."""
    tb = casa_env.casatools().table()
    tb.open(str(Path(ms) / "DATA_DESCRIPTION"))
    try:
        spw_of_ddid = np.asarray(tb.getcol("SPECTRAL_WINDOW_ID"))
    finally:
        tb.close()
    tb.open(str(Path(ms) / "SPECTRAL_WINDOW"))
    try:
        n = tb.nrows()
        freq = [np.ravel(tb.getcell("CHAN_FREQ", i)) for i in range(n)]
        width = [np.ravel(tb.getcell("CHAN_WIDTH", i)) for i in range(n)]
    finally:
        tb.close()
    return SpectralWindows(spw_of_ddid, freq, width)


def write_pointing(ms: str | Path, uvd) -> None:
    """Fill the empty POINTING table of a new MS: the cells pyuvdata's ``write_ms_pointing`` writes.

    One row per antenna number (0 to the largest) and distinct time, time
    major: ANTENNA_ID, TIME and TIME_ORIGIN (MJD seconds, UTC), INTERVAL (the
    median integration time of the time's rows), NAME "ZENITH", NUM_POLY 0,
    DIRECTION and TARGET the (2, 1) array (0, pi/2), TRACKING False.

    pyuvdata writes DIRECTION and TARGET with one ``putcol`` each; both live in
    the table's IncrementalStMan, where casacore takes 0.1 s over the second
    (a full DSA-110 file: 2832 rows), whatever the values. Here the first row
    gets both cells and the rows added after it inherit them, as rows added
    to an IncrementalStMan take the last row's values; both columns are read
    back and written with ``putcol`` should that not hold.

    Parameters
    ----------
    ms : path
        The MS; its POINTING table exists (pyuvdata's skeleton) and is empty.
    uvd : pyuvdata.UVData
        Its times, integration times and antenna numbers are used.
    """
    from astropy.time import Time
    from casacore import tables

    n_ants = int(np.max(uvd.telescope.antenna_numbers)) + 1
    time_array = np.asarray(uvd.time_array)
    integration = np.asarray(uvd.integration_time)
    unique_times = np.unique(time_array)
    times = Time(unique_times, format="jd", scale="utc").mjd * 86400.0
    if integration.size and integration.min() == integration.max():
        intervals = np.full(unique_times.size, np.median(integration[:1]))  # the median of equal values
    else:
        intervals = np.array([np.median(integration[time_array == t]) for t in unique_times])
    n_rows = n_ants * unique_times.size
    zenith = np.array([[0.0], [np.pi / 2]])  # pyuvdata: "we always point at zenith"

    with tables.table(str(Path(ms) / "POINTING"), ack=False, readonly=False) as t:
        t.addrows(1)
        t.putcell("DIRECTION", 0, zenith)
        t.putcell("TARGET", 0, zenith)
        t.addrows(n_rows - 1)
        t.putcol("ANTENNA_ID", np.tile(np.arange(n_ants, dtype=np.int32), unique_times.size))
        t.putcol("TIME", np.repeat(times, n_ants))
        t.putcol("INTERVAL", np.repeat(intervals, n_ants))
        t.putcol("NAME", np.asarray(["ZENITH"] * n_rows, dtype=np.bytes_), nrow=n_rows)
        t.putcol("NUM_POLY", np.zeros(n_rows, dtype=np.int32))
        t.putcol("TIME_ORIGIN", np.repeat(times, n_ants))
        t.putcol("TRACKING", np.zeros(n_rows, dtype=bool))
        every_row = np.broadcast_to(zenith, (n_rows, 2, 1))
        for col in ("DIRECTION", "TARGET"):
            if not np.array_equal(t.getcol(col), every_row):
                t.putcol(col, np.ascontiguousarray(every_row))


# ---------------------------------------------------------------------------
# subtables that the telescope and the subband fix, written once per process
# ---------------------------------------------------------------------------

_written: OrderedDict[tuple, tuple[tuple[str, bytes], ...]] = OrderedDict()
_MAX_WRITTEN = 64
"""Subtables kept (a few kB each): ANTENNA, DATA_DESCRIPTION and POLARIZATION
of a telescope, SPECTRAL_WINDOW of each of its 16 subbands, with room."""


def _fingerprint(value) -> object:
    """A hashable stand-in for a value that a subtable writer reads: arrays by type, shape and bytes."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, slice):
        return ("slice", value.start, value.stop, value.step)
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(v) for v in value)
    a = np.asarray(value)
    if a.dtype == object:
        return ("object", a.shape, tuple(_fingerprint(v) for v in a.ravel().tolist()))
    return (a.dtype.str, a.shape, a.tobytes())


def subtable_inputs(uvd, name: str, pol_order=None) -> tuple:
    """Everything pyuvdata's writer of subtable ``name`` reads from ``uvd`` (its ``write_ms_*``; pyuvdata 3.x).

    Only the subtables fixed by the telescope (ANTENNA, POLARIZATION,
    DATA_DESCRIPTION) and by the subband (SPECTRAL_WINDOW); the others hold
    times and the phase centre, which change from block to block.
    """
    import pyuvdata

    tel = uvd.telescope
    if name == "ANTENNA":
        loc = tel._location
        values = (tel.antenna_numbers, list(tel.antenna_names), tel.antenna_positions, tel.antenna_diameters,
                  None if tel.mount_type is None else list(tel.mount_type), loc.xyz(), loc.frame, loc.ellipsoid)
    elif name == "DATA_DESCRIPTION":
        values = (uvd.Nspws, uvd.flex_spw_polarization_array)
    elif name == "POLARIZATION":
        values = (uvd.polarization_array, uvd.flex_spw_polarization_array, pol_order)
    elif name == "SPECTRAL_WINDOW":
        freq_range = uvd.freq_range if "_freq_range" in uvd else None
        values = (freq_range, uvd.freq_array, uvd.channel_width, uvd.flex_spw_id_array, uvd.spw_array)
    else:
        raise ValueError(f"{name} changes from block to block; write it every time")
    return (name, pyuvdata.__version__, _fingerprint(values))


def write_or_reuse(ms: str | Path, name: str, inputs: tuple, write: Callable[[], None]) -> bool:
    """Write subtable ``name`` of ``ms`` with ``write()``, or lay out the files it wrote for the same inputs.

    ``inputs`` (:func:`subtable_inputs`) holds everything the writer reads;
    equal inputs give the same bytes, whatever the MS's path (casacore keeps
    no path in a subtable). The table's directory must hold only files (a
    casacore table does). Returns whether the files were reused.
    """
    table = Path(ms) / name
    files = _written.get(inputs)
    if files is not None:
        _written.move_to_end(inputs)
        for f in table.iterdir():
            f.unlink()
        for fname, content in files:
            (table / fname).write_bytes(content)
        return True
    write()
    entries = sorted(table.iterdir())
    if all(f.is_file() for f in entries):
        _written[inputs] = tuple((f.name, f.read_bytes()) for f in entries)
        while len(_written) > _MAX_WRITTEN:
            _written.popitem(last=False)
    return False
