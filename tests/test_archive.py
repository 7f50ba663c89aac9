"""Ingest of a run into the archive and cleanup of its working directory (contimg/archive.py).

What these check
----------------
On a fabricated recorded run (a run directory as submissions write it, FITS block products
registered as the block callback registers them, no cluster):
- ingest copies every product (FITS per block, config.toml, run.json, flags.txt, the
  re-rendered weblog) to ``{archive_root}/{date}/{run_id}/``, each with a sidecar holding
  block, time range, declination (CRVAL2), QA state, the run's configuration, sha256 and
  size, and an ``archive`` row;
- ingest twice changes nothing: archive files, sidecars (mtimes) and rows (ingested_at);
- a run still running is refused; a run with failed blocks is refused with the blocks and
  reasons unless --force, which ingests the products it has;
- an archive file that differs is never overwritten without --force;
- cleanup before ingest, and cleanup after one byte of an archived FITS is changed, print
  exactly the operators' message, exit 1 and delete nothing;
- cleanup of an archived run deletes its directory, points the block products at the
  archive, records the bytes freed; a second cleanup says it is already cleaned;
- ``cleanup --expired`` cleans only old, fully archived runs and says why others were kept;
- unknown run ids and a missing product are one-line errors.

The slow test runs a real no-op night on a private LocalCluster (three blocks, one
failing). The no-op stage set images nothing, so the run's products are its run-level
files (config.toml, run.json, qa_report.txt, the weblog): it checks QA, the refusal of the
failed run and --force, ingest twice, cleanup and the second cleanup, all through the CLI.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from contimg import archive, products
from contimg import database as db
from contimg.cli import main
from contimg.submission import write_run_directory

from conftest import make_config
from test_weblog import write_image

DATE = "2025-10-05"
RUN = "20251005T031200-night-1a2b3c"
MESSAGE = ("The data products are not in the archive, please wait and try again. "
           "If failures are repeated, report it to the pipeline operators.")


def fabricate_run(cfg, run_id=RUN, states=("done", "done"), *, start_hour=3, flags=False,
                  submitted_at: datetime | None = None):
    """A recorded run with its directory and FITS products, as a submission and the block callbacks leave it."""
    url = cfg.database_url
    ids = [f"{DATE}T{start_hour:02d}:{5 * k:02d}:09" for k in range(len(states))]
    toml = "[imaging]\nniter = 2000\n"
    db.create_run(url, run_id, kind="night", selection={"date": DATE}, submitted_by="ops", config_toml=toml,
                  remap={}, block_ids=ids)
    extra = {"flag_template": "flags.txt"} if flags else None
    write_run_directory(cfg, run_id, kind="night", selection={"date": DATE}, config_toml=toml, block_ids=ids,
                        extra=extra)
    if flags:
        products.run_file(cfg.paths.products_root, run_id, "flags.txt").write_text("antenna='DSA-003'\n")
    if submitted_at is not None:
        rj = products.run_file(cfg.paths.products_root, run_id, "run.json")
        meta = json.loads(rj.read_text())
        meta["submitted_at"] = submitted_at.isoformat(timespec="seconds")
        rj.write_text(json.dumps(meta))
    rng = np.random.default_rng(7)
    for bid, state in zip(ids, states):
        db.upsert_block(url, bid, state=state, data_dir=str(cfg.paths.data_root), run_id=run_id,
                        reason="only 10 of 16 subbands converted, minimum is 12" if state == "failed" else None)
        if state != "done":
            continue
        bp = products.block_products(cfg.paths.products_root, bid, run_id)
        bp.directory.mkdir(parents=True, exist_ok=True)
        bp.concat_ms.mkdir()  # the concatenated MS: a working file, not archived
        (bp.concat_ms / "table.dat").write_bytes(b"\0" * 100)
        db.record_product(url, bid, "concat_ms", bp.concat_ms)
        for kind in ("image", "pbcor"):
            write_image(bp.fits(kind), rng)
            db.record_product(url, bid, f"{kind}_fits", bp.fits(kind), rms_jy=2e-3)
            db.record_run_product(url, run_id, bid, f"{kind}_fits", bp.fits(kind), rms_jy=2e-3)
    return ids


def archive_config(tmp_path, monkeypatch):
    """A configuration under ``tmp_path``, also in the environment for the command line."""
    c = make_config(tmp_path, tmp_path / "data")
    for k, v in {"CONTIMG_PATHS__PRODUCTS_ROOT": c.paths.products_root, "CONTIMG_PATHS__DATA_ROOT": c.paths.data_root,
                 "CONTIMG_PATHS__ARCHIVE_ROOT": c.paths.archive_root}.items():
        monkeypatch.setenv(k, str(v))
    return c


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    return archive_config(tmp_path, monkeypatch)


def run_dir(cfg, run_id=RUN):
    return products.run_directory(cfg.paths.products_root, run_id)


def archive_state(cfg):
    """Every file under the archive root with its mtime and bytes, and the archive rows."""
    files = {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(cfg.paths.archive_root).rglob("*")
             if p.is_file()}
    return files, db.archived(cfg.database_url, RUN)


def cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# -- ingest -----------------------------------------------------------------------------


def test_ingest_copies_products_with_metadata_and_checksums(cfg, capsys):
    ids = fabricate_run(cfg, flags=True)
    code, out, err = cli(capsys, "ingest", RUN, "--json")
    assert code == 0, err
    res = json.loads(out)
    adir = Path(cfg.paths.archive_root) / DATE / RUN
    assert res["archive_directory"] == str(adir)
    names = {e["name"]: e for e in res["products"]}
    expected = {"config.toml", "run.json", "flags.txt", "index.html"} | {
        f"blocks/{b}/{b}.{k}.fits" for b in ids for k in ("image", "pbcor")}
    assert set(names) == expected
    assert {e["status"] for e in res["products"]} == {"copied"}
    rows = {(r["block_id"], r["kind"]): r for r in db.archived(cfg.database_url, RUN)}
    assert len(rows) == len(expected)
    for name, e in names.items():
        dest, src = adir / name, run_dir(cfg) / name
        assert dest.read_bytes() == src.read_bytes()
        assert e["sha256"] == archive.sha256_file(dest) == rows[(e["block_id"], e["kind"])]["sha256"]
        side = json.loads(products.archive_metadata(dest).read_text())
        assert side["sha256"] == e["sha256"] and side["size_bytes"] == dest.stat().st_size
        assert side["config_toml"] == "[imaging]\nniter = 2000\n" and side["qa_state"] is None
        assert side["dec_deg"] == pytest.approx(54.6)  # CRVAL2 of the FITS products
        assert side == {**rows[(e["block_id"], e["kind"])]["metadata"], "sha256": e["sha256"],
                        "size_bytes": e["size_bytes"], "source_path": str(src), "archive_path": str(dest)}
    fits_meta = json.loads(products.archive_metadata(adir / f"blocks/{ids[1]}/{ids[1]}.image.fits").read_text())
    assert fits_meta["block_id"] == ids[1] == "2025-10-05T03:05:09"
    assert fits_meta["time_start_utc"] == "2025-10-05T03:05:09.000Z"
    assert fits_meta["time_end_utc"] == "2025-10-05T03:10:18.237Z"  # + telescope.BLOCK_DURATION_S
    run_meta = json.loads(products.archive_metadata(adir / "run.json").read_text())
    assert run_meta["block_id"] is None and run_meta["blocks"] == ids
    assert run_meta["time_start_utc"] == "2025-10-05T03:00:09.000Z"
    assert not list(adir.rglob("*.partial"))


def test_ingest_twice_changes_nothing(cfg, capsys):
    fabricate_run(cfg)
    assert cli(capsys, "ingest", RUN)[0] == 0
    before = archive_state(cfg)
    code, out, _ = cli(capsys, "ingest", RUN)
    assert code == 0 and "7 products: 7 already archived" in out
    assert archive_state(cfg) == before


def test_ingest_records_qa_and_updates_metadata_after_a_verdict(cfg, capsys, tmp_path):
    fabricate_run(cfg)
    archive.ingest(cfg, RUN)
    report = tmp_path / "report.txt"
    report.write_text("images fine\n")
    assert cli(capsys, "qa", RUN, "--pass", "--report", str(report), "--analyst", "alice")[0] == 0
    res = archive.ingest(cfg, RUN)
    status = {e["name"]: e["status"] for e in res["products"]}
    assert status["qa_report.txt"] == "copied"
    assert status["index.html"] == "updated"  # the weblog shows the verdict now
    assert {status[n] for n in status if n.endswith(".fits")} == {"metadata updated"}
    side = json.loads(products.archive_metadata(Path(res["archive_directory"]) / "config.toml").read_text())
    assert side["qa_state"] == "pass" and side["qa_analyst"] == "alice"
    assert {e["status"] for e in archive.ingest(cfg, RUN)["products"]} == {"already archived"}


def test_ingest_refuses_a_running_run(cfg, capsys):
    ids = fabricate_run(cfg, states=("done", "running"))
    code, _, err = cli(capsys, "ingest", RUN, "--force")
    assert code == 1 and err.count("\n") == 1
    assert f"run {RUN} is still running" in err and ids[1] in err and "wait for it" in err
    assert not Path(cfg.paths.archive_root).exists() or not any(Path(cfg.paths.archive_root).rglob("*.fits"))


def test_ingest_of_a_failed_run_needs_force(cfg, capsys):
    ids = fabricate_run(cfg, states=("done", "failed"))
    code, _, err = cli(capsys, "ingest", RUN)
    assert code == 1 and err.count("\n") == 1
    assert f"block {ids[1]} failed: only 10 of 16 subbands converted" in err and f"contimg ingest {RUN} --force" in err
    assert db.archived(cfg.database_url, RUN) == []
    code, out, err = cli(capsys, "ingest", RUN, "--force")
    assert code == 0, err
    assert f"ingested with --force despite: block {ids[1]} failed" in out
    kinds = {(r["block_id"], r["kind"]) for r in db.archived(cfg.database_url, RUN)}
    assert (ids[0], "image_fits") in kinds and not any(b == ids[1] for b, _ in kinds)
    assert archive.cleanup(cfg, RUN)["state"] == "cleaned"  # what it has is archived


def test_ingest_of_a_qa_failed_run_needs_force(cfg, capsys):
    fabricate_run(cfg)
    assert cli(capsys, "qa", RUN, "--fail", "--analyst", "bob")[0] == 0
    code, _, err = cli(capsys, "ingest", RUN)
    assert code == 1 and "QA verdict fail by bob" in err
    assert cli(capsys, "ingest", RUN, "--force")[0] == 0


def test_ingest_never_overwrites_a_different_archive_copy(cfg, capsys):
    ids = fabricate_run(cfg)
    archive.ingest(cfg, RUN)
    name = f"blocks/{ids[0]}/{ids[0]}.image.fits"
    src = run_dir(cfg) / name
    data = bytearray(src.read_bytes())
    data[-1] ^= 0xFF
    src.write_bytes(bytes(data))  # the product changed after ingest
    before = archive_state(cfg)
    code, _, err = cli(capsys, "ingest", RUN)
    assert code == 1 and err.count("\n") == 1
    assert str(Path(cfg.paths.archive_root) / DATE / RUN / name) in err and "--force" in err
    assert archive_state(cfg) == before
    res = archive.ingest(cfg, RUN, force=True)
    assert {e["name"]: e["status"] for e in res["products"]}[name] == "replaced"
    assert (Path(res["archive_directory"]) / name).read_bytes() == bytes(data)


def test_ingest_missing_product_and_unknown_run(cfg, capsys):
    ids = fabricate_run(cfg)
    missing = run_dir(cfg) / f"blocks/{ids[1]}/{ids[1]}.pbcor.fits"
    missing.unlink()
    code, _, err = cli(capsys, "ingest", RUN)
    assert code == 1 and err.count("\n") == 1 and str(missing) in err and ids[1] in err
    for cmd in ("ingest", "cleanup"):
        code, _, err = cli(capsys, cmd, "20990101T000000-night-ffffff")
        assert code == 1 and err.count("\n") == 1
        assert "unknown run id 20990101T000000-night-ffffff" in err and "contimg runs" in err
        code, _, err = cli(capsys, cmd, "not-a-run")
        assert code == 1 and "is not a run id" in err


# -- cleanup ----------------------------------------------------------------------------------


def test_cleanup_before_ingest_deletes_nothing(cfg, capsys):
    fabricate_run(cfg)
    before = sorted(run_dir(cfg).rglob("*"))
    code, out, err = cli(capsys, "cleanup", RUN)
    assert code == 1 and out == ""
    assert err == f"contimg: {MESSAGE}\n"
    assert sorted(run_dir(cfg).rglob("*")) == before
    assert db.cleanup_of(cfg.database_url, RUN) is None


def test_cleanup_refuses_when_an_archive_copy_is_corrupt(cfg, capsys):
    ids = fabricate_run(cfg)
    archive.ingest(cfg, RUN)
    name = f"blocks/{ids[1]}/{ids[1]}.pbcor.fits"
    arch = Path(cfg.paths.archive_root) / DATE / RUN / name
    data = bytearray(arch.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte, same size
    arch.write_bytes(bytes(data))
    before = sorted(run_dir(cfg).rglob("*"))
    code, out, err = cli(capsys, "cleanup", RUN)
    assert (code, out, err) == (1, "", f"contimg: {MESSAGE}\n")
    assert sorted(run_dir(cfg).rglob("*")) == before
    with pytest.raises(archive.NotArchived) as e:
        archive.cleanup(cfg, RUN, dry_run=True)
    assert len(e.value.reasons) == 1 and name in e.value.reasons[0] and "sha256 differ" in e.value.reasons[0]
    arch.unlink()
    with pytest.raises(archive.NotArchived, match="please wait and try again"):
        archive.cleanup(cfg, RUN)
    assert run_dir(cfg).is_dir()


def test_cleanup_refuses_when_the_run_changed_after_ingest(cfg, capsys, tmp_path):
    fabricate_run(cfg)
    archive.ingest(cfg, RUN)
    assert cli(capsys, "qa", RUN, "--null")[0] == 0  # re-renders the weblog: not the archived one any more
    with pytest.raises(archive.NotArchived) as e:
        archive.cleanup(cfg, RUN)
    assert any(r.startswith("index.html: sha256 differ") for r in e.value.reasons)
    archive.ingest(cfg, RUN)
    assert archive.cleanup(cfg, RUN)["state"] == "cleaned"


def test_cleanup_of_an_archived_run(cfg, capsys):
    ids = fabricate_run(cfg)
    archive.ingest(cfg, RUN)
    d = run_dir(cfg)
    code, out, _ = cli(capsys, "cleanup", RUN, "--dry-run", "--json")
    assert code == 0 and json.loads(out)["state"] == "would clean" and d.is_dir()
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    code, out, err = cli(capsys, "cleanup", RUN, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["state"] == "cleaned" and res["products"] == 7 and res["freed_bytes"] == size
    assert not d.exists() and not list(d.parent.glob(f".{RUN}*"))
    rec = db.cleanup_of(cfg.database_url, RUN)
    assert rec["freed_bytes"] == size and rec["directory"] == str(d)
    for bid in ids:
        prods = db.block(cfg.database_url, bid)["products"]
        assert prods["image_fits"] == str(Path(cfg.paths.archive_root) / DATE / RUN / f"blocks/{bid}/{bid}.image.fits")
        assert Path(prods["pbcor_fits"]).is_file()
    code, out, _ = cli(capsys, "cleanup", RUN)
    assert code == 0 and f"run {RUN} is already cleaned" in out
    code, out, _ = cli(capsys, "ingest", RUN, "--json")  # nothing to copy any more, nothing changes
    assert code == 0 and {e["status"] for e in json.loads(out)["products"]} == {"already archived"}
    code, _, err = cli(capsys, "qa", RUN, "--pass")
    assert code == 1 and "cleaned up" in err and not d.exists()


def test_cleanup_expired(cfg, capsys, monkeypatch):
    now = datetime.now(timezone.utc)
    old_archived, old_not, young = (f"20251005T03120{k}-night-1a2b3c" for k in range(3))
    fabricate_run(cfg, old_archived, start_hour=1, submitted_at=now - timedelta(days=40))
    fabricate_run(cfg, old_not, start_hour=2, submitted_at=now - timedelta(days=35))
    fabricate_run(cfg, young, start_hour=3, submitted_at=now - timedelta(days=2))
    for r in (old_archived, young):
        archive.ingest(cfg, r)
    code, out, _ = cli(capsys, "cleanup", "--expired", "--dry-run", "--json")
    assert code == 0
    rows = {r["run_id"]: r for r in json.loads(out)}
    assert rows[old_archived]["state"] == "would clean"
    assert all(run_dir(cfg, r).is_dir() for r in rows)
    code, out, _ = cli(capsys, "cleanup", "--expired", "--json")
    rows = {r["run_id"]: r for r in json.loads(out)}
    assert rows[old_archived]["state"] == "cleaned" and not run_dir(cfg, old_archived).exists()
    assert rows[old_not]["state"] == "kept" and "not fully archived" in rows[old_not]["reason"]
    assert "not ingested" in rows[old_not]["reason"] and run_dir(cfg, old_not).is_dir()
    assert rows[young]["state"] == "kept" and "younger than archive.expire_days (30)" in rows[young]["reason"]
    monkeypatch.setenv("CONTIMG_ARCHIVE__EXPIRE_DAYS", "1")
    code, out, _ = cli(capsys, "cleanup", "--expired")
    assert code == 0 and young in out and "cleaned" in out and not run_dir(cfg, young).exists()
    assert run_dir(cfg, old_not).is_dir()


def test_cleanup_needs_a_run_or_expired(cfg, capsys):
    code, _, err = cli(capsys, "cleanup")
    assert code == 1 and "give a run id or --expired" in err


def test_archive_config_is_validated(tmp_path):
    from contimg.errors import ConfigError

    assert make_config(tmp_path, tmp_path / "data").archive.expire_days == 30
    with pytest.raises(ConfigError, match="archive.expire_days"):
        make_config(tmp_path, tmp_path / "data", archive__expire_days=0)


def test_archive_names():
    assert products.run_date(RUN, ["2025-10-06T00:01:00", "2025-10-05T23:59:00"]) == "2025-10-05"
    assert products.run_date(RUN, []) == "2025-10-05"
    p = products.archive_product("/a", RUN, DATE, "2025-10-05T03:00:09", "x.image.fits")
    assert p == Path(f"/a/{DATE}/{RUN}/blocks/2025-10-05T03:00:09/x.image.fits")
    assert products.archive_metadata(p).name == "x.image.fits.meta.json"
    with pytest.raises(ValueError):
        products.archive_product("/a", RUN, DATE, "", "../escape")


# -- a real night -------------------------------------------------------------------------------


@pytest.mark.slow
def test_noop_night_qa_ingest_cleanup(tmp_path, capsys):
    from contimg.cluster import LocalCluster
    from contimg.noop import write_night
    from contimg.pipeline import wait
    from contimg.submission import select_night, submit_selection

    ids = write_night(tmp_path / "data" / DATE, DATE, 3, empty={(1, sb) for sb in range(6)})
    cfg = make_config(tmp_path, tmp_path / "data", stage_set="noop", dispatch__node_check_s=0)
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        run_id = submit_selection(cl.config, select_night(cl.config, DATE)).run_id
        recs = wait(cl.config, ids, timeout_s=120)
        conf = str(cl.config_path)
        assert [r["state"] for r in recs] == ["done", "failed", "done"], [r["reason"] for r in recs]
    report = tmp_path / "qa.txt"
    assert cli(capsys, "--config", conf, "qa", run_id, "--null", "--report", str(tmp_path / "nope.txt"))[2] \
        == f"contimg: QA report {tmp_path / 'nope.txt'} does not exist; give the path of the report file to --report\n"
    report.write_text("block 1 lost six subbands; the others are fine\n")
    code, out, err = cli(capsys, "--config", conf, "qa", run_id, "--pass", "--report", str(report), "--json")
    assert code == 0, err
    assert json.loads(out)["state"] == "pass"
    d = products.run_directory(cfg.paths.products_root, run_id)
    assert "six subbands" in (d / "index.html").read_text()

    code, _, err = cli(capsys, "--config", conf, "cleanup", run_id)
    assert (code, err) == (1, f"contimg: {MESSAGE}\n") and d.is_dir()
    code, _, err = cli(capsys, "--config", conf, "ingest", run_id)
    assert code == 1 and f"block {ids[1]} failed" in err and "--force" in err
    code, out, err = cli(capsys, "--config", conf, "ingest", run_id, "--force", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert {e["name"]: e["status"] for e in res["products"]} == {
        "config.toml": "copied", "run.json": "copied", "qa_report.txt": "copied", "index.html": "copied"}
    side = json.loads(products.archive_metadata(Path(res["archive_directory"]) / "qa_report.txt").read_text())
    assert side["qa_state"] == "pass" and side["blocks"] == ids and side["time_start_utc"].startswith(ids[0])
    before = archive_state(cfg)[0]
    code, out, _ = cli(capsys, "--config", conf, "ingest", run_id, "--force")
    assert code == 0 and "4 products: 4 already archived" in out and archive_state(cfg)[0] == before
    code, out, _ = cli(capsys, "--config", conf, "cleanup", run_id)
    assert code == 0 and "cleaned" in out and not d.exists()
    code, out, _ = cli(capsys, "--config", conf, "cleanup", run_id)
    assert code == 0 and "already cleaned" in out
