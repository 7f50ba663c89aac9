"""The MS subtables that several steps read, read in one place.

``noise.py`` (the radiometer expectation) and ``primary_beam.py`` (the drift
beam) both need each data description's spectral window and its channels.
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
