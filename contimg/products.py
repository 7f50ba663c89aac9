"""Every name a file or product of contimg gets is built here and parsed here.

Nothing else in the package formats or globs product paths.

Layout
------
raw subband file   ``{data_root}/{YYYY-MM-DDTHH:MM:SS}_sb{NN}.hdf5``
subband MS          ``{scratch_root}/{block_id}/{block_id}_sb{NN}.ms`` (node-local)
run directory       ``{products_root}/runs/{run_id}/``: ``config.toml``, ``run.json``,
                    ``flags.txt`` (rerun), ``qa_report.txt``, ``index.html`` (weblog),
                    ``blocks/{block_id}/`` (that run's block products, as below)
block products      ``{products_root}/{date}/{block_id}/`` (a chord sent without a run):
                    ``{block_id}.ms`` (concatenated), ``{block_id}.image.fits``,
                    ``{block_id}.pb.fits``, ``{block_id}.residual.fits``,
                    ``{block_id}.wsclean.log`` (imaging.backend = "wsclean"; no ``.ms`` then)
simulation truth    ``{data_dir}/truth.json``, ``{data_dir}/truth_gains.npz``
mosaic products     ``{products_root}/mosaics/{date}/{mosaic_id}/``:
                    ``{mosaic_id}.image.fits``, ``.noise.fits``, ``.weight.fits``,
                    ``{mosaic_id}.image.png`` (quicklook),
                    ``{mosaic_id}.sources.ecsv`` and ``.sources.vot`` (catalogue)
run weblogs         ``{products_root}/runs/{run_id}/index.html`` (self-contained HTML)
night weblogs       ``{products_root}/nights/{date}/index.html``
archive             ``{archive_root}/{date}/{run_id}/`` (``contimg ingest``): the run directory's
                    products in the same layout, each with ``{file}.meta.json`` beside it
watch state         ``{products_root}/watch/{incoming}-{hash}.json`` (``contimg watch``)
survey products     ``{products_root}/survey/``: ``catalogue.sources.ecsv`` and ``.sources.vot``
                    (the reference catalogue exported from the database),
                    ``lightcurves/{source}.png``, ``ese/{source}.png`` (plots)

A block id is the timestamp of the earliest subband file of the block
(``YYYY-MM-DDTHH:MM:SS``), because the 16 files of a block do not share one.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"
SUBBAND_RE = re.compile(r"^(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})_sb(?P<sb>\d{2})\.hdf5$")
BLOCK_ID_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")

TRUTH_JSON = "truth.json"
TRUTH_GAINS = "truth_gains.npz"


@dataclass(frozen=True)
class SubbandName:
    """What a raw subband file name says."""

    timestamp: datetime  # UTC
    subband: int

    @property
    def timestamp_str(self) -> str:
        return format_timestamp(self.timestamp)


def format_timestamp(t: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` in UTC."""
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc).replace(tzinfo=None)
    return t.strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SS`` as UTC; ValueError names the text."""
    try:
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"{text!r} is not a timestamp of the form YYYY-MM-DDTHH:MM:SS") from None


def subband_filename(timestamp: datetime | str, subband: int) -> str:
    """Raw file name of one subband, e.g. ``2025-10-05T03:12:45_sb07.hdf5``."""
    ts = timestamp if isinstance(timestamp, str) else format_timestamp(timestamp)
    if not 0 <= subband <= 99:
        raise ValueError(f"subband {subband} cannot be written as sbNN")
    return f"{ts}_sb{subband:02d}.hdf5"


def parse_subband_filename(name: str | Path) -> SubbandName | None:
    """Parse a raw file name; ``None`` when it is not a subband file."""
    m = SUBBAND_RE.match(Path(name).name)
    if not m:
        return None
    try:
        ts = parse_timestamp(m["ts"])
    except ValueError:
        return None
    return SubbandName(timestamp=ts, subband=int(m["sb"]))


def check_block_id(block_id: str) -> str:
    """Return ``block_id`` when well formed, else raise ValueError naming it."""
    if not BLOCK_ID_RE.match(block_id or ""):
        raise ValueError(
            f"block id {block_id!r} is not of the form YYYY-MM-DDTHH:MM:SS; "
            "list the known blocks with `contimg status`"
        )
    return block_id


def block_date(block_id: str) -> str:
    """The UTC date part of a block id (``YYYY-MM-DD``)."""
    return check_block_id(block_id)[:10]


def subband_ms(scratch_root: str | Path, block_id: str, subband: int) -> Path:
    """Node-local Measurement Set of one subband of a block."""
    return Path(scratch_root) / check_block_id(block_id) / f"{block_id}_sb{subband:02d}.ms"


def block_scratch_dir(scratch_root: str | Path, block_id: str) -> Path:
    """A node's scratch directory for a block."""
    return Path(scratch_root) / check_block_id(block_id)


@dataclass(frozen=True)
class BlockProducts:
    """Paths of the products of one block."""

    directory: Path
    block_id: str

    @property
    def concat_ms(self) -> Path:
        return self.directory / f"{self.block_id}.ms"

    @property
    def image_prefix(self) -> Path:
        """``imagename`` given to tclean; CASA appends .image, .pb, ..."""
        return self.directory / self.block_id

    def casa_image(self, kind: str) -> Path:
        return self.directory / f"{self.block_id}.{kind}"

    def imaging_log(self, backend: str) -> Path:
        """Output of an external imager run for this block (``{block_id}.wsclean.log``)."""
        if not re.fullmatch(r"[a-z]+", backend):
            raise ValueError(f"imager name {backend!r} is not a lower-case word")
        return self.directory / f"{self.block_id}.{backend}.log"

    def fits(self, kind: str) -> Path:
        """FITS export of a CASA image product (``image``, ``pb``, ``residual``...)."""
        return self.directory / f"{self.block_id}.{kind}.fits"

    @property
    def image_fits(self) -> Path:
        return self.fits("image")


def block_products(products_root: str | Path, block_id: str, run_id: str | None = None) -> BlockProducts:
    """Where the products of ``block_id`` live: in its run's directory when it has one.

    ``{products_root}/runs/{run_id}/blocks/{block_id}/`` for a block processed as part of
    a run (every submission, rerun and ``contimg run`` makes one), so that a rerun never
    overwrites an earlier run; ``{products_root}/{date}/{block_id}/`` for a chord sent
    without a run (the Python API's ``pipeline.submit``).
    """
    if run_id:
        return BlockProducts(run_directory(products_root, run_id) / "blocks" / check_block_id(block_id), block_id)
    return BlockProducts(Path(products_root) / block_date(block_id) / block_id, block_id)


def temporary_name(final: str | Path) -> Path:
    """Sibling temporary path used to write ``final`` atomically (then rename)."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


# -- atomic placement ----------------------------------------------------------

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EBUSY}
_DISK_TEXT = ("no space left", "not enough free disk space", "disk quota", "permission denied",
              "read-only file system", "input/output error")  # the second is CASA concat's wording


def replace_directory(tmp: Path, final: Path) -> None:
    """Move a complete ``tmp`` (file or directory) to ``final``, replacing it.

    A directory cannot be replaced by one rename, so an old ``final`` is
    first renamed aside and deleted only after ``tmp`` is in place: ``final``
    either is absent for an instant or holds a complete product, never a
    partial one.
    """
    old = final.with_name(f".{final.name}.old")
    if final.is_dir() and not final.is_symlink():
        remove_path(old)
        os.rename(final, old)
        os.rename(tmp, final)
    else:
        os.replace(tmp, final)
    remove_path(old)  # also one left by a run killed between the renames


def remove_path(path: Path) -> None:
    """Delete a file or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def is_disk_error(e: BaseException) -> bool:
    """True when ``e`` is about the disk (space, quota, permission, I/O), not the data."""
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
        return True
    # python-casacore turns casacore's I/O failures into RuntimeError with the
    # system message in the text.
    text = str(e).lower()
    return any(s in text for s in _DISK_TEXT)


# -- caltables -------------------------------------------------------------------

CALTABLE_KINDS = {"bandpass": "bcal", "gain": "gcal"}
"""Caltable kind -> file suffix: per-channel bandpass and per-block complex gains."""
_CALTABLE_RE = re.compile(r"^(?P<block>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})_sb(?P<sb>\d{2})\.(?P<suffix>bcal|gcal)$")


def caltable(products_root: str | Path, block_id: str, subband: int, kind: str) -> Path:
    """Caltable of one subband solved on calibrator block ``block_id``.

    ``{products_root}/{date}/{block_id}/caltables/{block_id}_sb{NN}.{bcal|gcal}``.
    """
    if kind not in CALTABLE_KINDS:
        raise ValueError(f"caltable kind {kind!r} is not one of {', '.join(CALTABLE_KINDS)}")
    if not 0 <= subband <= 99:
        raise ValueError(f"subband {subband} cannot be written as sbNN")
    directory = block_products(products_root, block_id).directory / "caltables"
    return directory / f"{block_id}_sb{subband:02d}.{CALTABLE_KINDS[kind]}"


def parse_caltable(path: str | Path) -> tuple[str, int, str] | None:
    """``(block_id, subband, kind)`` of a caltable path, or None when it is not one."""
    m = _CALTABLE_RE.match(Path(path).name)
    if not m:
        return None
    kind = {v: k for k, v in CALTABLE_KINDS.items()}[m["suffix"]]
    return m["block"], int(m["sb"]), kind


# -- mosaics and their source catalogues -------------------------------------------

MOSAIC_KINDS = ("image", "noise", "weight")
"""FITS products of a mosaic: the weighted image, its noise map and the summed weight."""
CATALOGUE_FORMATS = {"ecsv": "sources.ecsv", "votable": "sources.vot"}
"""Catalogue format (astropy.table name) -> file suffix."""
_MOSAIC_ID_RE = re.compile(
    r"^dec(?P<dec>[+-]\d{2}\.\d{2})_(?P<first>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})"
    r"_(?P<last>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})$"
)


def mosaic_id(dec_deg: float, first_block_id: str, last_block_id: str) -> str:
    """Name of the mosaic of a declination strip, e.g. ``dec+54.60_2025-10-05T03:12:45_2025-10-05T04:02:11``.

    The declination (pointing, degrees, two decimals) and the first and last
    block ids in time say which strip and which stretch of it.
    """
    check_block_id(first_block_id)
    check_block_id(last_block_id)
    if not -90 <= dec_deg <= 90:
        raise ValueError(f"mosaic declination {dec_deg} is not between -90 and 90 degrees")
    return f"dec{dec_deg:+06.2f}_{first_block_id}_{last_block_id}"


def parse_mosaic_id(text: str) -> tuple[float, str, str] | None:
    """``(dec_deg, first_block_id, last_block_id)`` of a mosaic id, or None when it is not one."""
    m = _MOSAIC_ID_RE.match(text or "")
    if not m:
        return None
    return float(m["dec"]), m["first"], m["last"]


@dataclass(frozen=True)
class MosaicProducts:
    """Paths of the products of one mosaic and of its source catalogue."""

    directory: Path
    mosaic_id: str

    def fits(self, kind: str) -> Path:
        """``image`` (Jy/beam), ``noise`` (Jy/beam) or ``weight`` (sum of pb^2/sigma^2)."""
        if kind not in MOSAIC_KINDS:
            raise ValueError(f"mosaic product kind {kind!r} is not one of {', '.join(MOSAIC_KINDS)}")
        return self.directory / f"{self.mosaic_id}.{kind}.fits"

    @property
    def image_fits(self) -> Path:
        return self.fits("image")

    @property
    def noise_fits(self) -> Path:
        return self.fits("noise")

    @property
    def weight_fits(self) -> Path:
        return self.fits("weight")

    @property
    def quicklook_png(self) -> Path:
        return self.directory / f"{self.mosaic_id}.image.png"

    def catalogue(self, fmt: str = "ecsv") -> Path:
        """Source catalogue of the mosaic in ``fmt`` (``ecsv`` or ``votable``)."""
        if fmt not in CATALOGUE_FORMATS:
            raise ValueError(f"catalogue format {fmt!r} is not one of {', '.join(CATALOGUE_FORMATS)}")
        return self.directory / f"{self.mosaic_id}.{CATALOGUE_FORMATS[fmt]}"


def mosaic_products(products_root: str | Path, mosaic_id_: str) -> MosaicProducts:
    """Where the products of mosaic ``mosaic_id_`` live (dated by its first block)."""
    parsed = parse_mosaic_id(mosaic_id_)
    if parsed is None:
        raise ValueError(
            f"mosaic id {mosaic_id_!r} is not of the form decSDD.DD_FIRSTBLOCK_LASTBLOCK; "
            "build it with contimg.products.mosaic_id"
        )
    return MosaicProducts(Path(products_root) / "mosaics" / block_date(parsed[1]) / mosaic_id_, mosaic_id_)


def parse_mosaic_fits(path: str | Path) -> tuple[str, str] | None:
    """``(mosaic_id, kind)`` of a mosaic FITS product path, or None when it is not one."""
    name = Path(path).name
    for kind in MOSAIC_KINDS:
        suffix = f".{kind}.fits"
        if name.endswith(suffix) and parse_mosaic_id(name[: -len(suffix)]) is not None:
            return name[: -len(suffix)], kind
    return None


# -- survey: reference catalogue, light curves, ESE plots ------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9+\-_.]")


def survey_directory(products_root: str | Path) -> Path:
    """Products of the survey as a whole (not of one block or mosaic)."""
    return Path(products_root) / "survey"


def survey_catalogue(products_root: str | Path, fmt: str = "ecsv") -> Path:
    """The reference catalogue exported from the products database, in ``fmt`` (``ecsv`` or ``votable``)."""
    if fmt not in CATALOGUE_FORMATS:
        raise ValueError(f"catalogue format {fmt!r} is not one of {', '.join(CATALOGUE_FORMATS)}")
    return survey_directory(products_root) / f"catalogue.{CATALOGUE_FORMATS[fmt]}"


def source_file_stem(source_name: str) -> str:
    """A source name made safe as a file name (``J095959.9+543600`` stays as it is)."""
    stem = _UNSAFE.sub("_", str(source_name))
    if not stem or stem.startswith("."):
        stem = "_" + stem
    return stem


def lightcurve_png(products_root: str | Path, source_name: str) -> Path:
    """Default light-curve plot of a catalogue source."""
    return survey_directory(products_root) / "lightcurves" / f"{source_file_stem(source_name)}.png"


def ese_plot_png(directory: str | Path, source_name: str) -> Path:
    """Light-curve plot of an ESE candidate in ``directory`` (default ``survey/ese``)."""
    return Path(directory) / f"{source_file_stem(source_name)}.png"


# -- the incoming-directory watcher ----------------------------------------------


def watch_state(products_root: str | Path, incoming: str | Path) -> Path:
    """``{products_root}/watch/{incoming as a name}-{hash}.json``: first-seen times of files
    that ``contimg watch INCOMING`` has not submitted yet (one file per watched directory)."""
    import hashlib

    p = str(Path(incoming).absolute())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", p.strip("/"))[-80:] or "root"
    return Path(products_root) / "watch" / f"{slug}-{hashlib.sha1(p.encode()).hexdigest()[:8]}.json"


# -- runs and weblogs -------------------------------------------------------------

RUN_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}-[a-z]+-[0-9a-f]{6}$")


def check_run_id(run_id: str) -> str:
    """A run id as ``new_run_id`` makes it (``20251005T031200-night-1a2b3c``); else ValueError."""
    if not RUN_ID_RE.match(run_id or ""):
        raise ValueError(f"{run_id!r} is not a run id (like 20251005T031200-night-1a2b3c); `contimg runs` lists them")
    return run_id


def run_directory(products_root: str | Path, run_id: str) -> Path:
    """``{products_root}/runs/{run_id}/``: the run's working directory.

    It holds ``config.toml`` (the effective configuration, secrets redacted),
    ``run.json`` (who, when, what), ``flags.txt`` (the flag template of a rerun),
    ``blocks/{block_id}/`` (the products), ``logs/`` and ``index.html`` (the weblog).
    """
    return Path(products_root) / "runs" / check_run_id(run_id)


def run_file(products_root: str | Path, run_id: str, name: str) -> Path:
    """A file of the run directory: ``config.toml``, ``run.json``, ``flags.txt``, ``qa_report.txt``."""
    if name not in RUN_FILES:
        raise ValueError(f"{name!r} is not a run file ({', '.join(RUN_FILES)})")
    return run_directory(products_root, run_id) / name


RUN_FILES = ("config.toml", "run.json", "flags.txt", "qa_report.txt")


def run_weblog(products_root: str | Path, run_id: str) -> Path:
    """``{products_root}/runs/{run_id}/index.html``."""
    return run_directory(products_root, run_id) / "index.html"


def night_weblog(products_root: str | Path, date: str) -> Path:
    """``{products_root}/nights/{date}/index.html``."""
    datetime.strptime(date, "%Y-%m-%d")
    return Path(products_root) / "nights" / date / "index.html"


# -- the archive --------------------------------------------------------------------
# {archive_root}/{date}/{run_id}/ mirrors the run directory: config.toml, run.json,
# flags.txt, qa_report.txt, index.html and blocks/{block_id}/{block_id}.{kind}.fits;
# beside every archived file its metadata, ``{file}.meta.json``.

ARCHIVE_META_SUFFIX = ".meta.json"


def run_date(run_id: str, block_ids: list[str] | None = None) -> str:
    """The UTC date a run is archived under: its earliest block's, else its submission date (from the run id)."""
    ids = sorted(check_block_id(b) for b in block_ids or [])
    if ids:
        return ids[0][:10]
    r = check_run_id(run_id)
    return f"{r[0:4]}-{r[4:6]}-{r[6:8]}"


def archive_run_directory(archive_root: str | Path, run_id: str, date: str) -> Path:
    """``{archive_root}/{date}/{run_id}/``: where a run's products are archived."""
    datetime.strptime(date, "%Y-%m-%d")
    return Path(archive_root) / date / check_run_id(run_id)


def archive_product(archive_root: str | Path, run_id: str, date: str, block_id: str, filename: str) -> Path:
    """Archive path of one product: ``blocks/{block_id}/{filename}`` for a block's, ``{filename}`` for the run's
    (``block_id == ""``), under :func:`archive_run_directory`."""
    if not filename or "/" in filename or filename.startswith("."):
        raise ValueError(f"{filename!r} is not a product file name")
    d = archive_run_directory(archive_root, run_id, date)
    return d / "blocks" / check_block_id(block_id) / filename if block_id else d / filename


def archive_metadata(archived_file: str | Path) -> Path:
    """The metadata sidecar of an archived file: ``{file}.meta.json``."""
    p = Path(archived_file)
    return p.with_name(p.name + ARCHIVE_META_SUFFIX)
