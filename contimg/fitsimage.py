"""FITS images as sky planes: the one reader of block, pb, noise and mosaic images.

CASA and WSClean write (stokes, freq, dec, ra) cubes with single planes; the
science works on the (dec, ra) plane. :func:`read_plane` reads one and turns a
missing, unreadable or empty file into a :class:`PermanentError` that names the
file and says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import PermanentError


def sky_plane(data: np.ndarray) -> np.ndarray:
    """The (dec, ra) plane of a (stokes, freq, dec, ra) cube with single planes."""
    while data.ndim > 2:
        data = data[0]
    return data


def read_plane(path: str | os.PathLike, *, todo: str, dtype=np.float64):
    """(header, plane) of a FITS image.

    Parameters
    ----------
    path : path
    todo : str
        What the user should do when the file is missing or bad (``"image that
        block first"``), appended to the error message.
    dtype : numpy dtype
        Of the returned plane.

    Raises
    ------
    PermanentError
        The file is missing, not a readable FITS file, or holds no image.
    """
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise PermanentError(f"{path} does not exist; {todo}")
    try:
        with fits.open(path, memmap=False) as hdul:
            header = hdul[0].header.copy()
            data = hdul[0].data
    except (OSError, ValueError, TypeError) as e:
        raise PermanentError(f"{path} is not a readable FITS image ({e}); {todo}") from None
    if data is None or data.ndim < 2:
        raise PermanentError(f"{path} holds no image; {todo}")
    return header, np.asarray(sky_plane(data), dtype=dtype)
