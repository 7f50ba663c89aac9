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
