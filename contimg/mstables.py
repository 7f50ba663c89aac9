"""The MS subtables that several steps read, read in one place; and POINTING, written.

``noise.py`` (the radiometer expectation) and ``primary_beam.py`` (the drift
beam) both need each data description's spectral window and its channels.
The fast converter (``fast_convert.py``) writes POINTING with
:func:`write_pointing`, pyuvdata's table in a fraction of pyuvdata's time.
"""

from __future__ import annotations

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
