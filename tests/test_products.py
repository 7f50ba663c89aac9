"""contimg.products: names are built and parsed in one place."""

from datetime import datetime, timezone
from pathlib import Path

import pytest

from contimg import products


def test_subband_name_round_trip():
    t = datetime(2025, 10, 5, 3, 12, 45, tzinfo=timezone.utc)
    name = products.subband_filename(t, 7)
    assert name == "2025-10-05T03:12:45_sb07.hdf5"
    parsed = products.parse_subband_filename(Path("/x") / name)
    assert parsed.subband == 7 and parsed.timestamp == t and parsed.timestamp_str == "2025-10-05T03:12:45"


@pytest.mark.parametrize("name", ["2025-10-05T03:12:45_sb7.hdf5", "2025-10-05T03:12:45_sb07.h5", "notes.txt",
                                  "2025-13-05T03:12:45_sb07.hdf5", ".2025-10-05T03:12:45_sb07.hdf5.partial"])
def test_non_subband_names(name):
    assert products.parse_subband_filename(name) is None


def test_block_paths():
    bp = products.block_products("/p", "2025-10-05T03:12:45")
    assert bp.directory == Path("/p/2025-10-05/2025-10-05T03:12:45")
    assert bp.image_fits.name == "2025-10-05T03:12:45.image.fits"
    assert products.subband_ms("/s", "2025-10-05T03:12:45", 3).name == "2025-10-05T03:12:45_sb03.ms"
    assert products.temporary_name("/a/b.fits") == Path("/a/.b.fits.partial")


def test_bad_block_id_is_named():
    with pytest.raises(ValueError, match="'../etc' is not of the form"):
        products.check_block_id("../etc")


def test_casa_disk_full_is_a_disk_error():
    from contimg.products import is_disk_error

    assert is_disk_error(RuntimeError("concat: not enough free disk space on /scratch to write the MS"))
    assert not is_disk_error(RuntimeError("MSSelectionNullSelection : The selected table has zero rows."))
