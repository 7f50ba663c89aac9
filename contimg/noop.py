"""The no-op stage set: the pipeline's orchestration without its science.

With ``pipeline.stage_set = "noop"`` every subband stage only checks that its
input file exists and sleeps ``pipeline.noop_seconds``, and the block callback
registers the block without concatenating or imaging. Everything else is the
same: chords, routing, leases, retries, the database. It is how
``bench/orchestration.py`` measures the overhead per block and how the fault
tests rehearse killed, hung and missing workers in seconds instead of minutes.
"""

from __future__ import annotations

import time
from pathlib import Path

from .errors import BadSubbandFile


def subband_stage(uvh5_path: Path, seconds: float) -> dict[str, float]:
    """Check the subband file is there, then pretend to work for ``seconds``.

    Returns the step timings, like the science stages do.

    Raises
    ------
    BadSubbandFile
        The file is missing or empty.
    """
    t0 = time.monotonic()
    try:
        size = uvh5_path.stat().st_size
    except FileNotFoundError:
        raise BadSubbandFile(f"{uvh5_path} does not exist; check the path, or leave this subband out") from None
    if size == 0:
        raise BadSubbandFile(f"{uvh5_path} is empty; re-copy it from the correlator or leave it out")
    if seconds > 0:
        time.sleep(seconds)  # interruptible by the soft time limit, like real work
    return {"noop_s": time.monotonic() - t0}


def write_night(data_dir: Path, date: str, n_blocks: int, *, start: str = "03:00:00", skip=(), empty=()) -> list[str]:
    """Subband files for the no-op stage set: the right names, a few bytes each.

    Blocks start ``telescope.BLOCK_DURATION_S`` apart. ``skip`` and ``empty``
    hold (block index, subband) pairs to leave out or to write with 0 bytes.
    Returns the block ids.
    """
    from datetime import datetime, timedelta

    from .products import format_timestamp, subband_filename
    from .telescope import BLOCK_DURATION_S, N_SUBBANDS

    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = datetime.fromisoformat(f"{date}T{start}")
    ids = []
    for b in range(n_blocks):
        ts = t0 + timedelta(seconds=round(BLOCK_DURATION_S) * b)
        ids.append(format_timestamp(ts))
        for sb in range(N_SUBBANDS):
            if (b, sb) not in skip:
                (data_dir / subband_filename(ts, sb)).write_bytes(b"" if (b, sb) in empty else b"no-op subband\n")
    return ids
