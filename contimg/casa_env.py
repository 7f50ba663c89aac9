"""Set CASA up to work offline, before the first ``import casatools``.

casaconfig reads the site config named by ``CASASITECONFIG`` before
``~/.casa/config.py`` (FIELD-NOTES §3). We point it at a file shipped in
``contimg/resources`` that takes the measures data from the ``casadata``
package and turns every automatic update off. The CASA log goes to a file we
choose instead of ``casa-*.log`` in the working directory.

Import this module (or call :func:`setup`) before importing casatools; every
contimg module that uses CASA does so through :func:`casatools` and
:func:`casatasks` below.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

SITE_CONFIG = Path(__file__).parent / "resources" / "casasiteconfig.py"


def setup(log_dir: str | os.PathLike | None = None) -> None:
    """Point CASA at the offline site config; idempotent.

    Parameters
    ----------
    log_dir : path, optional
        Directory for the CASA log (``casa-<pid>.log``). Defaults to the
        system temporary directory. Ignored once CASA has been imported.
    """
    if "casatools" in sys.modules:
        return
    os.environ["CASASITECONFIG"] = str(SITE_CONFIG)
    base = Path(log_dir) if log_dir else Path(tempfile.gettempdir()) / "contimg-casa"
    base.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CONTIMG_CASA_LOGFILE", str(base / f"casa-{os.getpid()}.log"))
    os.environ.setdefault("CONTIMG_CASA_CACHEDIR", str(base / "cache"))


def casatools():
    """Return the ``casatools`` module, set up offline."""
    setup()
    import casatools as _ct

    return _ct


def casatasks():
    """Return the ``casatasks`` module, set up offline."""
    setup()
    import casatasks as _cta

    return _cta
