"""Ingest of a run's products into the archive, and cleanup of its working directory.

``contimg ingest RUN`` copies the run's products into
``{archive_root}/{date}/{run_id}/`` (the layout of the run directory; names from
:mod:`contimg.products`), each with a metadata sidecar ``{file}.meta.json`` and a
row in the ``archive`` table. The products of a run are its registered block
products (``run_products``: the FITS images) and its run-level files:
``config.toml``, ``run.json``, ``flags.txt`` (the flag template of a rerun) and
``qa_report.txt`` when present, and the weblog ``index.html`` (re-rendered first).

A copy goes to a temporary name in the archive while its sha256 is computed, is
fsynced, renamed, and read back to verify the checksum. Ingest is idempotent: a
product already archived with the same checksum is left alone (files, rows and
timestamps), and an archive file with a different checksum is an error unless
``force`` (the archive is never overwritten silently); only the weblog, a rendering
of the database that changes with the QA verdict, is replaced by a newer one
(reported as ``updated``).

``contimg cleanup RUN`` deletes the run's working directory only when, for every
product the run would ingest, the archive row exists and the sha256 of the
archive file and of the run-directory file, both computed now, agree. Otherwise
it deletes nothing and fails with :data:`NOT_ARCHIVED_MESSAGE` (the reasons are
logged at INFO level: ``contimg -v``). ``products`` rows that pointed into the
directory then point at the archive copies.

Celery-free; the command line (:mod:`contimg.cli`) is a thin wrapper.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from . import database as db
from . import products
from .config import Config
from .errors import ContimgError
from .qa import recorded_run
from .telescope import BLOCK_DURATION_S

log = logging.getLogger(__name__)

NOT_ARCHIVED_MESSAGE = ("The data products are not in the archive, please wait and try again. "
                        "If failures are repeated, report it to the pipeline operators.")
"""What ``contimg cleanup`` says, exactly, when it deletes nothing because the archive is incomplete."""

IN_FLIGHT = (db.QUEUED, db.RUNNING, db.IMAGING)
RUN_LEVEL_KINDS = {"config.toml": "config_toml", "run.json": "run_json", "flags.txt": "flags_txt",
                   "qa_report.txt": "qa_report_txt", "index.html": "weblog"}
"""Run-level file -> product kind in the ``archive`` table (block id ``""``)."""
REGENERATED = ("weblog",)
"""Kinds that are renderings of the database, not data: a newer rendering replaces the archived one without
``force`` (reported as ``updated``). The weblog changes whenever the QA verdict does."""
_CHUNK = 1 << 20


class ArchiveError(ContimgError):
    """Ingest cannot go on; the message names the run or file and what to do."""


class NotArchived(ArchiveError):
    """Cleanup refused: the archive does not hold every product of the run. ``reasons`` says which and why."""

    def __init__(self, reasons: list[str]):
        super().__init__(NOT_ARCHIVED_MESSAGE)
        self.reasons = reasons


@dataclass(frozen=True)
class Product:
    """One product of a run: where it is in the run directory and where it goes in the archive."""

    block_id: str
    """The block, or ``""`` for a file of the whole run."""
    kind: str
    source: Path
    archive: Path

    @property
    def name(self) -> str:
        """The product's path in the archive's run directory (``blocks/{block_id}/{file}`` or ``{file}``)."""
        return f"blocks/{self.block_id}/{self.archive.name}" if self.block_id else self.archive.name


# -- checksums and copies ------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read now."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_directory(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_verified(src: Path, dest: Path, expected_sha256: str | None = None) -> tuple[str, int]:
    """Copy ``src`` to ``dest`` atomically and verified; returns (sha256, size).

    The sha256 is computed while copying to a temporary sibling of ``dest``, which is
    fsynced and renamed; ``dest`` is then read back and must give the same sum (and
    ``expected_sha256``, the source's sum taken before, when given: else the source
    changed while it was copied).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = products.temporary_name(dest)
    h, size = hashlib.sha256(), 0
    try:
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            while chunk := fi.read(_CHUNK):
                h.update(chunk)
                fo.write(chunk)
                size += len(chunk)
            fo.flush()
            os.fsync(fo.fileno())
        shutil.copystat(src, tmp)
        digest = h.hexdigest()
        if expected_sha256 is not None and digest != expected_sha256:
            raise ArchiveError(f"{src} changed while it was copied to the archive; run the ingest again when "
                               "nothing writes to the run")
        os.replace(tmp, dest)
    finally:
        products.remove_path(tmp)
    _fsync_directory(dest.parent)
    if sha256_file(dest) != digest:
        products.remove_path(dest)
        raise ArchiveError(f"the archive copy {dest} of {src} does not read back with the same sha256; check the "
                           "archive file system, then run the ingest again")
    return digest, size


# -- a run's products ------------------------------------------------------------------


def run_products(cfg: Config, run: dict[str, Any]) -> list[Product]:
    """The products of a run as ingest archives them (the files must exist; missing ones raise).

    Raises
    ------
    FileNotFoundError
        A registered product, ``config.toml`` or ``run.json`` is missing from the run directory.
    """
    run_id = run["run_id"]
    root, arch = cfg.paths.products_root, cfg.paths.archive_root
    date = products.run_date(run_id, run["block_ids"])
    out: dict[tuple[str, str], Product] = {}
    for name, kind in RUN_LEVEL_KINDS.items():
        src = products.run_weblog(root, run_id) if name == "index.html" else products.run_file(root, run_id, name)
        if not src.is_file():
            if name in ("config.toml", "run.json"):
                raise FileNotFoundError(f"{src} is missing: run {run_id} has no complete run directory "
                                        f"({products.run_directory(root, run_id)}); nothing of it can be archived")
            continue
        out[("", kind)] = Product("", kind, src, products.archive_product(arch, run_id, date, "", name))
    for r in db.run_products(cfg.database_url, run_id):
        src = Path(r["path"])
        if not src.is_file():
            raise FileNotFoundError(f"product {r['kind']} of block {r['block_id'] or '(run)'} of run {run_id} is "
                                    f"missing: {src}; restore it or reprocess the block "
                                    f"(`contimg resubmit --block {r['block_id']}`)")
        out[(r["block_id"], r["kind"])] = Product(r["block_id"], r["kind"], src,
                                                  products.archive_product(arch, run_id, date, r["block_id"], src.name))
    return sorted(out.values(), key=lambda p: (p.block_id, p.kind))


def run_blocks(cfg: Config, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's blocks whose latest processing is this run's (a block taken over by a later run is not judged here)."""
    return [b for b in db.blocks(cfg.database_url, run["block_ids"]) if b["run_id"] == run["run_id"]]


# -- metadata ----------------------------------------------------------------------------


def _utc(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def block_time_range(block_id: str) -> tuple[datetime, datetime]:
    """Start (the block id) and end (start + ``telescope.BLOCK_DURATION_S``) of a block, UTC."""
    start = products.parse_timestamp(block_id)
    return start, start + timedelta(seconds=BLOCK_DURATION_S)


def fits_declination(path: Path) -> float | None:
    """CRVAL2 of a FITS image (its phase centre's declination, degrees), or None when it has none."""
    from astropy.io import fits

    try:
        h = fits.getheader(path, 0)
    except OSError:
        return None
    if str(h.get("CTYPE2", "")).upper().startswith("DEC") and "CRVAL2" in h:
        return float(h["CRVAL2"])
    return None


class _Declinations:
    """Declination of each block: from its FITS products' headers, else its raw files' pointing (cached)."""

    def __init__(self, cfg: Config, prods: list[Product], blocks: list[dict[str, Any]]):
        self.cfg, self.of_block, self._discovered = cfg, {}, {}
        for p in prods:
            if p.block_id and p.source.name.endswith(".fits") and p.block_id not in self.of_block:
                dec = fits_declination(p.source)
                if dec is not None:
                    self.of_block[p.block_id] = dec
        for b in blocks:
            if b["block_id"] not in self.of_block:
                self.of_block[b["block_id"]] = self._pointing(b)

    def _pointing(self, b: dict[str, Any]) -> float | None:
        from .blocks import discover

        d = b.get("data_dir") or ""
        if not d:
            return None
        if d not in self._discovered:
            try:
                self._discovered[d] = discover(d, tolerance_s=self.cfg.pipeline.block_tolerance_s)
            except OSError:
                self._discovered[d] = None
        disc = self._discovered[d]
        try:
            return disc.block(b["block_id"]).pointing_dec_deg() if disc is not None else None
        except KeyError:  # its files are gone
            return None

    def product(self, p: Product) -> float | None:
        if p.block_id:
            dec = fits_declination(p.source) if p.source.name.endswith(".fits") else None
            return dec if dec is not None else self.of_block.get(p.block_id)
        decs = {round(v, 4) for v in self.of_block.values() if v is not None}
        return decs.pop() if len(decs) == 1 else None  # a night points at one declination


def product_metadata(run: dict[str, Any], p: Product, decs: _Declinations, qa: dict[str, Any] | None,
                     config_toml: str | None) -> dict[str, Any]:
    """What the archive records of a product (its sidecar, less checksum and size): block, time range,
    declination, QA verdict, the run's configuration."""
    if p.block_id:
        start, end = block_time_range(p.block_id)
    elif run["block_ids"]:
        ranges = [block_time_range(b) for b in run["block_ids"]]
        start, end = min(r[0] for r in ranges), max(r[1] for r in ranges)
    else:
        start = end = None
    return {
        "run_id": run["run_id"],
        "block_id": p.block_id or None,
        "blocks": [p.block_id] if p.block_id else list(run["block_ids"]),
        "kind": p.kind,
        "file": p.name,
        "time_start_utc": _utc(start) if start else None,
        "time_end_utc": _utc(end) if end else None,
        "dec_deg": decs.product(p),
        "qa_state": (qa or {}).get("state"),
        "qa_analyst": (qa or {}).get("analyst"),
        "qa_at": (qa or {}).get("at"),
        "config_toml": config_toml,
    }


def _sidecar_text(meta: dict[str, Any], sha: str, size: int, p: Product) -> str:
    return json.dumps({**meta, "sha256": sha, "size_bytes": size, "source_path": str(p.source),
                       "archive_path": str(p.archive)}, indent=2, sort_keys=True) + "\n"


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    from .qa import write_text_atomically

    write_text_atomically(path, text)
    return True


# -- ingest ----------------------------------------------------------------------------------


def check_ingestable(cfg: Config, run: dict[str, Any], *, force: bool = False) -> list[str]:
    """Why the run may not be ingested yet; raises ArchiveError, or returns the warnings ``force`` overrode."""
    run_id = run["run_id"]
    blocks = run_blocks(cfg, run)
    busy = [b["block_id"] for b in blocks if b["state"] in IN_FLIGHT]
    if busy:
        raise ArchiveError(f"run {run_id} is still running ({len(busy)} block(s) queued or in progress: "
                           f"{', '.join(busy)}); wait for it to end (`contimg runs {run_id}`), then ingest")
    reasons = [f"block {b['block_id']} failed: {b['reason'] or 'no reason recorded'}"
               for b in blocks if b["state"] == db.FAILED]
    qa = db.qa(cfg.database_url, run_id)
    if qa and qa["state"] == "fail":
        reasons.append(f"QA verdict fail by {qa['analyst']} at {qa['at']}")
    if reasons and not force:
        raise ArchiveError(f"run {run_id} failed ({'; '.join(reasons)}); repair it and ingest again "
                           f"(`contimg resubmit --failed --run {run_id}` queues failed blocks), or ingest the "
                           f"products it has with `contimg ingest {run_id} --force`")
    return reasons


def ingest(cfg: Config, run_id: str, *, force: bool = False) -> dict[str, Any]:
    """Copy a run's products into the archive with their metadata and register them (idempotent).

    Parameters
    ----------
    force : bool
        Ingest a run with failed blocks (or a failed QA verdict) with the products it has, and replace an
        archive file whose checksum differs from the product's.

    Returns
    -------
    dict
        ``run_id``, ``archive_directory``, ``forced`` (the reasons ``force`` overrode) and ``products``:
        per product its ``name``, ``block_id``, ``kind``, ``status`` (``copied``, ``already archived``,
        ``replaced`` (with ``force``), ``updated`` (a re-rendered weblog), ``registered`` (the file was already there, the row was not) or ``metadata updated``),
        ``sha256``, ``size_bytes``, ``archive_path``.

    Raises
    ------
    KeyError
        Unknown run id.
    ArchiveError
        The run is still running; it failed and ``force`` is not given; an archive file differs.
    FileNotFoundError
        A product is missing from the run directory.
    """
    url = cfg.database_url
    run = recorded_run(cfg, run_id)
    rows = {(r["block_id"], r["kind"]): r for r in db.archived(url, run_id)}
    date = products.run_date(run_id, run["block_ids"])
    out = {"run_id": run_id, "archive_directory": str(products.archive_run_directory(cfg.paths.archive_root,
                                                                                     run_id, date))}
    cleaned = db.cleanup_of(url, run_id)
    if cleaned is not None:  # its working directory is gone: the archive is all there is
        return {**out, "forced": [], "cleaned_at": cleaned["cleaned_at"],
                "products": [_entry(r, "already archived") for r in rows.values()]}
    forced = check_ingestable(cfg, run, force=force)
    from .weblog import render_run

    render_run(cfg, run_id)  # the weblog as of now, with the QA verdict
    prods = run_products(cfg, run)
    decs = _Declinations(cfg, prods, run_blocks(cfg, run))
    qa, config_toml = db.qa(url, run_id), db.run_config(url, run_id)

    # Plan everything before writing anything: a conflict stops the ingest with the archive untouched.
    plan = []
    conflicts = []
    for p in prods:
        sha = sha256_file(p.source)
        dest_sha = sha256_file(p.archive) if p.archive.is_file() else None
        if dest_sha is not None and dest_sha != sha and not force and p.kind not in REGENERATED:
            conflicts.append(f"{p.archive} (archive sha256 {dest_sha[:12]}, product {p.source} {sha[:12]})")
        plan.append((p, sha, dest_sha))
    if conflicts:
        raise ArchiveError(f"the archive already holds different copies of {len(conflicts)} product(s) of run "
                           f"{run_id}: {'; '.join(conflicts)}; the archive is never overwritten silently: check "
                           f"which is right, then `contimg ingest {run_id} --force` replaces the archive copies")
    entries = []
    for p, sha, dest_sha in plan:
        meta = product_metadata(run, p, decs, qa, config_toml)
        row = rows.get((p.block_id, p.kind))
        if dest_sha == sha:
            size = p.archive.stat().st_size
            same_row = (row is not None and row["sha256"] == sha and row["archive_path"] == str(p.archive)
                        and row["metadata"] == meta)
            changed = _write_if_changed(products.archive_metadata(p.archive), _sidecar_text(meta, sha, size, p))
            if same_row and not changed:
                status = "already archived"
            else:
                status = "registered" if row is None else "metadata updated"
                db.record_archived(url, run_id=run_id, block_id=p.block_id, kind=p.kind, source_path=str(p.source),
                                   archive_path=str(p.archive), sha256=sha, size_bytes=size, metadata=meta)
        else:
            sha, size = copy_verified(p.source, p.archive, expected_sha256=sha)
            _write_if_changed(products.archive_metadata(p.archive), _sidecar_text(meta, sha, size, p))
            db.record_archived(url, run_id=run_id, block_id=p.block_id, kind=p.kind, source_path=str(p.source),
                               archive_path=str(p.archive), sha256=sha, size_bytes=size, metadata=meta)
            status = "copied" if dest_sha is None else "updated" if p.kind in REGENERATED else "replaced"
            if dest_sha is not None:
                log.warning("ingest: %s %s (was sha256 %s)", status, p.archive, dest_sha)
        entries.append({"name": p.name, "block_id": p.block_id, "kind": p.kind, "status": status, "sha256": sha,
                        "size_bytes": size, "archive_path": str(p.archive)})
    return {**out, "forced": forced, "products": entries}


def _entry(row: dict[str, Any], status: str) -> dict[str, Any]:
    name = row["metadata"].get("file") or Path(row["archive_path"]).name
    return {"name": name, "block_id": row["block_id"], "kind": row["kind"], "status": status,
            "sha256": row["sha256"], "size_bytes": row["size_bytes"], "archive_path": row["archive_path"]}


# -- cleanup -------------------------------------------------------------------------------


def verify_archived(cfg: Config, run: dict[str, Any]) -> list[str]:
    """Why the archive does not hold every product of the run, checked by checksum now ([] when it does)."""
    run_id = run["run_id"]
    busy = [b["block_id"] for b in run_blocks(cfg, run) if b["state"] in IN_FLIGHT]
    if busy:
        return [f"blocks still in progress: {', '.join(busy)}"]
    try:
        prods = run_products(cfg, run)
    except FileNotFoundError as e:
        return [str(e)]
    rows = {(r["block_id"], r["kind"]): r for r in db.archived(cfg.database_url, run_id)}
    reasons = []
    for p in prods:
        row = rows.get((p.block_id, p.kind))
        if row is None:
            reasons.append(f"{p.name}: not ingested (`contimg ingest {run_id}`)")
            continue
        arch = Path(row["archive_path"])
        if not arch.is_file():
            reasons.append(f"{p.name}: the archive file {arch} is missing")
            continue
        a, s = sha256_file(arch), sha256_file(p.source)
        if not a == s == row["sha256"]:
            reasons.append(f"{p.name}: sha256 differ (archive file {a[:12]}, run directory {s[:12]}, "
                           f"recorded {row['sha256'][:12]})")
    return reasons


def _tree_size(d: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(d):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def _trash(d: Path) -> Path:
    return d.with_name(f".{d.name}.cleanup")


def cleanup(cfg: Config, run_id: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Delete a run's working directory once the archive verifiably holds every product of it.

    Returns
    -------
    dict
        ``run_id``, ``directory``, ``state`` (``cleaned``, ``would clean``, ``already cleaned`` or
        ``no working directory``), ``freed_bytes``, ``products`` (how many were verified), ``cleaned_at``.

    Raises
    ------
    KeyError
        Unknown run id.
    NotArchived
        The archive lacks a product or holds a different one; nothing was deleted.
    """
    url = cfg.database_url
    run = recorded_run(cfg, run_id)
    d = products.run_directory(cfg.paths.products_root, run_id)
    out = {"run_id": run_id, "directory": str(d)}
    done = db.cleanup_of(url, run_id)
    if done is not None:
        if not dry_run:
            products.remove_path(_trash(d))  # left by a cleanup interrupted after recording
        return {**out, "state": "already cleaned", "freed_bytes": done["freed_bytes"], "products": 0,
                "cleaned_at": done["cleaned_at"]}
    if not d.is_dir():
        return {**out, "state": "no working directory", "freed_bytes": 0, "products": 0, "cleaned_at": None}
    reasons = verify_archived(cfg, run)
    if reasons:
        for r in reasons:
            log.info("cleanup %s: %s", run_id, r)
        raise NotArchived(reasons)
    rows = db.archived(url, run_id)
    n = len(run_products(cfg, run))
    freed = _tree_size(d)
    if dry_run:
        return {**out, "state": "would clean", "freed_bytes": freed, "products": n, "cleaned_at": None}
    repoint = {r["source_path"]: r["archive_path"] for r in rows if r["block_id"]}
    trash = _trash(d)
    products.remove_path(trash)
    os.rename(d, trash)  # one step: the run directory is whole or gone, never half deleted
    db.record_cleanup(url, run_id, freed_bytes=freed, directory=str(d), repoint=repoint)
    products.remove_path(trash)
    done = db.cleanup_of(url, run_id)
    return {**out, "state": "cleaned", "freed_bytes": freed, "products": n, "cleaned_at": done["cleaned_at"]}


def run_age_days(cfg: Config, run_id: str, now: datetime | None = None) -> float:
    """Days since the run was submitted (``run.json``'s ``submitted_at``, else the directory's mtime)."""
    now = now or datetime.now(timezone.utc)
    d = products.run_directory(cfg.paths.products_root, run_id)
    t = None
    try:
        text = json.loads(products.run_file(cfg.paths.products_root, run_id, "run.json").read_text())["submitted_at"]
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
    except (OSError, ValueError, KeyError, TypeError):
        t = datetime.fromtimestamp(d.stat().st_mtime, timezone.utc)
    return (now - t).total_seconds() / 86400.0


def cleanup_expired(cfg: Config, *, dry_run: bool = False, now: datetime | None = None) -> list[dict[str, Any]]:
    """Clean every recorded run whose working directory is older than ``archive.expire_days`` and fully archived.

    Returns one entry per recorded run that still has a working directory: ``run_id``, ``age_days``,
    ``state`` (``cleaned``, ``would clean`` or ``kept``), ``reason`` (why it was kept), ``freed_bytes``.
    """
    limit = cfg.archive.expire_days
    out = []
    for run in sorted(db.runs(cfg.database_url), key=lambda r: r["run_id"]):
        run_id = run["run_id"]
        d = products.run_directory(cfg.paths.products_root, run_id)
        if not d.is_dir() or db.cleanup_of(cfg.database_url, run_id) is not None:
            continue
        age = run_age_days(cfg, run_id, now)
        entry = {"run_id": run_id, "directory": str(d), "age_days": round(age, 2), "freed_bytes": 0, "reason": None}
        if age < limit:
            out.append({**entry, "state": "kept", "reason": f"{age:.1f} days old, younger than archive.expire_days "
                                                            f"({limit:g})"})
            continue
        try:
            res = cleanup(cfg, run_id, dry_run=dry_run)
        except NotArchived as e:
            out.append({**entry, "state": "kept", "reason": "not fully archived: " + "; ".join(e.reasons[:3])
                        + (f" (and {len(e.reasons) - 3} more)" if len(e.reasons) > 3 else "")})
            continue
        out.append({**entry, "state": res["state"], "freed_bytes": res["freed_bytes"]})
    return out
