"""External programs the pipeline runs (WSClean, AOFlagger): where they are and how many cores they get.

They are always called with an argument list, never through a shell.
"""

from __future__ import annotations

import os
import shutil

from .errors import PermanentError


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def require(executable: str, *, needed_for: str, otherwise: str) -> str:
    """The full path of ``executable``; a PermanentError saying how to install it when it is missing.

    ``needed_for`` names what needs it (``"flagging.strategy = 'aoflagger'"``);
    ``otherwise`` is the setting that avoids it.
    """
    path = shutil.which(executable)
    if path is None:
        raise PermanentError(f"{executable} is not installed on this node but {needed_for} needs it; install it "
                             f"(apt-get install {executable}) or {otherwise}")
    return path
