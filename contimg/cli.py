"""The ``contimg`` command line.

Every command has ``--help``; every command that lists or reports has
``--json``. Errors are one line on stderr naming the thing and what to do,
with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from . import config as _config
from .errors import ContimgError

log = logging.getLogger("contimg")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _load_config(args) -> _config.Config:
    return _config.load(getattr(args, "config", None))


# -- config --------------------------------------------------------------------


def cmd_config_show(args) -> int:
    cfg = _load_config(args)
    flat = _config.flatten(cfg)
    if args.json:
        _print_json({"file": str(cfg.file) if cfg.file else None,
                     "values": {k: {"value": v, "source": _config.source_of(cfg, k)} for k, v in flat.items()}})
        return EXIT_OK
    print(f"# config file: {cfg.file or '(none: defaults and environment)'}")
    width = max(len(k) for k in flat)
    for k, v in flat.items():
        shown = _redact(k, v)
        print(f"{k:<{width}}  {json.dumps(shown, default=str):<40}  # {_config.source_of(cfg, k)}")
    return EXIT_OK


def _redact(key: str, value):
    """Hide passwords in URLs and Flower's credentials when printing."""
    if key == "flower.basic_auth" and value:
        return ",".join(pair.split(":", 1)[0] + ":***" for pair in str(value).split(","))
    if key == "notify.smtp_password" and value:
        return "***"
    if key == "notify.webhook_url" and value:  # its path may be a token
        from .submission import _webhook_redacted

        return _webhook_redacted(str(value))
    if isinstance(value, str) and "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":")[0] if ":" in cred else ""
        return f"{scheme}://{user}:***@{host}"
    return value


# -- simulate ------------------------------------------------------------------


def cmd_simulate(args) -> int:
    from . import simulate

    if args.scenario:
        scen = simulate.Scenario.from_toml(args.scenario)
    else:
        scen = simulate.Scenario()
    overrides = {k: getattr(args, k) for k in ("preset", "n_blocks", "date", "start", "dec_deg", "seed")
                 if getattr(args, k) is not None}
    if args.no_gains:
        overrides["gains"] = False
    if args.no_noise:
        overrides["noise"] = False
    scen = _dc_replace(scen, overrides)
    progress = None if args.json or args.quiet else (lambda line: print(line, flush=True))
    summary = simulate.simulate_night(scen, Path(args.out_dir), progress=progress)
    if args.json:
        _print_json(summary)
    else:
        print(f"wrote {summary.get('n_files', '?')} files of {summary.get('n_blocks', '?')} blocks to "
              f"{args.out_dir} in {summary.get('seconds', 0):.1f} s")
    return EXIT_OK


def _dc_replace(obj, overrides):
    import dataclasses

    return dataclasses.replace(obj, **overrides)


# -- convert -------------------------------------------------------------------


def cmd_convert(args) -> int:
    from .convert import convert_subband
    from .fast_convert import convert_subband_fast

    method = args.method or _load_config(args).pipeline.converter
    convert = convert_subband_fast if method == "fast" else convert_subband
    t0 = time.monotonic()
    res = convert(Path(args.input), Path(args.output))
    d = res.as_dict()
    if args.json:
        _print_json(d)
    else:
        print(f"{args.input} -> {args.output} in {time.monotonic() - t0:.1f} s; "
              f"UVW check max {d.get('uvw_check_max_m', float('nan')):.2e} m, rms {d.get('uvw_check_rms_m', float('nan')):.2e} m")
    return EXIT_OK


# -- blocks --------------------------------------------------------------------


def cmd_blocks(args) -> int:
    from .blocks import discover

    cfg = _load_config(args)
    tol = args.tolerance if args.tolerance is not None else cfg.pipeline.block_tolerance_s
    disc = discover(args.directory, tolerance_s=tol, recursive=args.recursive)
    if args.json:
        _print_json(disc.as_dict())
        return EXIT_OK
    print(f"{len(disc.blocks)} blocks in {disc.directory} (tolerance {tol:g} s)")
    for b in disc.blocks:
        extra = []
        if b.missing:
            extra.append("missing " + ",".join(f"sb{s:02d}" for s in b.missing))
        if b.duplicates:
            extra.append("duplicated " + ",".join(f"sb{s:02d}" for s in b.duplicates))
        print(f"  {b.block_id}  {len(b.files):>2}/16 subbands" + (f"  ({'; '.join(extra)})" if extra else ""))
    if disc.stray:
        print(f"{len(disc.stray)} files that are not subband files:")
        for p in disc.stray:
            print(f"  {p}")
    return EXIT_OK


# -- run -----------------------------------------------------------------------


def cmd_run(args) -> int:
    from . import pipeline
    from .blocks import discover

    cfg = _load_config(args)
    data_dir = Path(args.directory).resolve()
    disc = discover(data_dir, tolerance_s=cfg.pipeline.block_tolerance_s)
    if not disc.blocks:
        print(f"contimg: no subband files (*_sbNN.hdf5) in {data_dir}; nothing to run", file=sys.stderr)
        return EXIT_FAILED
    local = args.local or cfg.local
    if local:
        # The private cluster reads this directory: make it the data root for this run.
        cfg.paths.data_root = data_dir
        cfg.source["paths.data_root"] = "run DIR"
    say = (lambda s: None) if args.json else (lambda s: print(s, flush=True))
    t0 = time.monotonic()
    if local:
        from .cluster import LocalCluster

        workdir = Path(args.workdir) if args.workdir else cfg.paths.products_root / "local-cluster"
        say(f"starting a private redis-server and {len(cfg.nodes)} workers ({', '.join(cfg.nodes)}) in {workdir}")
        with LocalCluster(cfg, workdir) as cl:
            say(f"cluster ready in {time.monotonic() - t0:.1f} s; submitting {len(disc.blocks)} blocks")
            records, skipped = _submit_and_wait(cl.config, disc, data_dir, say, args)
            cl.wait_idle()
    else:
        from .tasks.app import configure

        configure(cfg)
        records, skipped = _submit_and_wait(cfg, disc, data_dir, say, args)
    summary = pipeline.summarize(records, time.monotonic() - t0)
    summary["skipped"] = skipped
    if args.json:
        _print_json(summary)
    else:
        print(pipeline.format_summary(summary))
    return EXIT_OK if summary["n_failed"] == 0 or args.allow_failures else EXIT_FAILED


def _submit_and_wait(cfg, disc, data_dir, say, args):
    """Submit, then dispatch and follow the queued blocks; returns (records, skipped)."""
    from . import pipeline
    from .submission import Selection, submit_selection

    res = submit_selection(cfg, Selection("run", {"directory": str(data_dir)}, disc.blocks, data_dir),
                           force=args.force)
    say(f"run {res.run_id} (its directory: {cfg.paths.products_root / 'runs' / res.run_id})")
    subs = res.submitted
    queued = [s.block_id for s in subs if s.outcome == "queued"]
    skipped = [{"block_id": s.block_id, "outcome": s.outcome, "state": s.previous_state}
               for s in subs if s.outcome != "queued"]
    for s in skipped:
        say(f"{s['block_id']} not submitted: it is {s['state'] or s['outcome']} (use --force to process it again)")
    records = pipeline.wait(cfg, queued, progress=say, timeout_s=args.timeout) if queued else []
    return records, skipped


# -- demo ----------------------------------------------------------------------


def cmd_demo(args) -> int:
    """Simulate a small night and run it on a private local cluster."""
    base = Path(args.dir).resolve()
    env_cfg = dict(os.environ)
    for key, sub in (("PATHS__DATA_ROOT", "data"), ("PATHS__PRODUCTS_ROOT", "products"),
                     ("PATHS__ARCHIVE_ROOT", "archive"), ("PATHS__SCRATCH_ROOT", "scratch")):
        env_cfg.setdefault(_config.ENV_PREFIX + key, str(base / sub))
    env_cfg.pop(_config.ENV_PREFIX + "BROKER__URL", None)
    cfg = _config.load(args.config, env=env_cfg)
    from . import simulate

    data = cfg.paths.data_root
    # The default night sweeps the catalogued calibrator SIMCAL54 (block 3): that block
    # solves bandpass and gains, the others apply them.
    scen = _dc_replace(simulate.Scenario(), {"preset": args.preset, "n_blocks": args.blocks, "seed": args.seed})
    print(f"== simulating {args.blocks} blocks x 16 subbands (preset {args.preset}, thermal noise, "
          f"{scen.n_random_sources} sources, antenna gains and bandpass errors, calibrator SIMCAL54 "
          f"in transit) into {data}", flush=True)
    t0 = time.monotonic()
    sim = simulate.simulate_night(scen, data, progress=None)
    t_sim = time.monotonic() - t0
    print(f"   {sim.get('n_files', '?')} files in {t_sim:.1f} s", flush=True)
    print("== processing on a private local cluster", flush=True)
    from . import pipeline
    from .blocks import discover
    from .cluster import LocalCluster

    disc = discover(data, tolerance_s=cfg.pipeline.block_tolerance_s)
    t1 = time.monotonic()
    with LocalCluster(cfg, base / "cluster") as cl:
        print(f"   redis + workers {', '.join(cfg.nodes)} ready in {time.monotonic() - t1:.1f} s", flush=True)
        from .submission import Selection, submit_selection

        res = submit_selection(cl.config, Selection("demo", {"directory": str(data)}, disc.blocks, data),
                               force=True)  # a new simulation: process it all
        records = pipeline.wait(cl.config, [s.block_id for s in res.submitted],
                                progress=lambda s: print("   " + s, flush=True), timeout_s=args.timeout)
        cl.wait_idle()
    from . import weblog

    page = weblog.render_run(cfg, res.run_id)
    summary = pipeline.summarize(records, time.monotonic() - t1)
    print("== summary")
    print(pipeline.format_summary(summary))
    print(f"simulation {t_sim:.1f} s, processing {summary['wall_s']:.1f} s; products database {cfg.database_url}")
    print(f"run {res.run_id}; weblog {page.as_uri()}")
    return EXIT_OK if summary["n_failed"] == 0 else EXIT_FAILED


# -- submit / resubmit / runs / dispatch ----------------------------------------


def _cluster_config(args) -> _config.Config:
    cfg = _load_config(args)
    if cfg.local and not getattr(args, "dry_run", False):
        raise ContimgError("broker.url is empty: submit needs a running cluster (set broker.url); "
                           "for a private one use `contimg run --local DIR`")
    if not cfg.local:
        from .tasks.app import configure

        configure(cfg)
    return cfg


def _report_run(res, args, cfg) -> int:
    from . import pipeline

    d = res.as_dict()
    if args.wait and res.run_id:
        queued = [s.block_id for s in res.submitted if s.outcome == "queued"]
        say = (lambda s: None) if args.json else (lambda s: print(s, flush=True))
        t0 = time.monotonic()
        recs = pipeline.wait(cfg, queued, progress=say, timeout_s=args.timeout) if queued else []
        d["summary"] = pipeline.summarize(recs, time.monotonic() - t0)
    if args.json:
        _print_json(d)
        return EXIT_OK
    head = f"run {d['run_id']}" if d["run_id"] else "dry run: nothing submitted"
    print(f"{head}: {d['kind']} {json.dumps(d['selection'])}")
    for b in d["blocks"]:
        print(f"  {b['block_id']}  {b['outcome']}" + (f" (was {b['previous_state']})" if b["previous_state"] else ""))
    if not d["blocks"]:
        print("  no blocks matched under paths.data_root")
    if "summary" in d:
        from .pipeline import format_summary

        print(format_summary(d["summary"]))
    elif d["run_id"]:
        print("a dispatcher (`contimg dispatch`) hands the queued blocks to the imaging nodes; "
              f"follow them with `contimg status --run {d['run_id']}`")
    return EXIT_OK


def cmd_submit(args) -> int:
    from .submission import parse_remap, select_lst, select_night, submit_selection

    cfg = _cluster_config(args)
    remap = parse_remap(args.remap, cfg)
    if args.what == "night":
        sel = select_night(cfg, args.date)
    else:
        sel = select_lst(cfg, args.start, args.end, args.date)
    res = submit_selection(cfg, sel, force=args.force, dry_run=args.dry_run, remap=remap)
    return _report_run(res, args, cfg)


def cmd_rerun(args) -> int:
    """Process a block again as a new run, with a flag template and/or changed settings."""
    from .submission import rerun

    cfg = _cluster_config(args)
    res = rerun(cfg, args.block_id, flags=args.flags, config_path=args.run_config)
    args.dry_run = False
    return _report_run(res, args, cfg)


def cmd_resubmit(args) -> int:
    from .products import check_block_id
    from .submission import failed_blocks, submit_selection

    if not args.failed:
        raise ContimgError("resubmit: say --failed (only failed blocks are resubmitted; use submit --force otherwise)")
    cfg = _cluster_config(args)
    ids = [check_block_id(b) for b in args.block] if args.block else None
    if args.run is None and ids is None:
        from . import database as db

        ids = [r["block_id"] for r in db.blocks(cfg.database_url) if r["state"] == db.FAILED]
    sel = failed_blocks(cfg, run_id=args.run, block_ids=ids)
    res = submit_selection(cfg, sel, force=True, dry_run=args.dry_run)
    return _report_run(res, args, cfg)


def cmd_runs(args) -> int:
    from . import database as db

    cfg = _load_config(args)
    rows = db.runs(cfg.database_url, args.run)
    if args.run and not rows:
        raise KeyError(f"unknown run id {args.run}; `contimg runs` lists the runs")
    if args.run:  # one run: also its run-level products (its weblog)
        rows[0]["products"] = [{k: p[k] for k in ("kind", "path", "details")}
                               for p in db.run_products(cfg.database_url, args.run) if p["block_id"] == ""]
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no runs recorded in {cfg.database_url}")
    for r in rows:
        states = ", ".join(f"{k} {v}" for k, v in sorted(r["states"].items()))
        print(f"{r['run_id']}  {r['kind']:<9} {len(r['block_ids']):>4} blocks  by {r['submitted_by']} "
              f"at {r['submitted_at']}  [{states}]")
        for p in r.get("products", []):
            print(f"    {p['kind']}: {p['path']}")
    return EXIT_OK


def cmd_dispatch(args) -> int:
    """Hand queued blocks to imaging nodes and reap expired leases, until stopped."""
    from .dispatch import WorkQueue
    from .pipeline import BROKER_DOWN, Dispatcher

    cfg = _cluster_config(args)
    disp = Dispatcher(cfg)
    print(f"dispatching from {_redact('broker.url', cfg.broker.url)}: K={cfg.dispatch.max_inflight_per_node} "
          f"per imaging node, lease {cfg.dispatch.lease_s:g} s", flush=True)
    while True:
        try:
            for ev in disp.step():
                print(ev, flush=True)
        except BROKER_DOWN as e:  # Redis restarting: the queue is persisted there; keep trying
            print(f"broker unreachable ({type(e).__name__}: {e}); retrying", file=sys.stderr, flush=True)
        if args.once:
            if args.json:
                _print_json(WorkQueue.from_url(cfg.broker.url).counts())
            return EXIT_OK
        disp.idle(cfg.dispatch.poll_s)


# -- ese -----------------------------------------------------------------------


def cmd_ese_detect(args) -> int:
    """Extreme-scattering-event candidates in any light-curve table (CSV or ECSV)."""
    from . import ese

    cands = ese.detect_table(args.table, fpr=args.fpr)
    plots = {}
    if args.plots:
        curves = {lc.source: lc for lc in ese.read_lightcurves(args.table)}
        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        for c in cands:
            safe = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in str(c.source))
            plots[c.source] = str(ese.plot_candidate(curves[c.source], c, out / f"ese_{safe}.png"))
    if args.json:
        _print_json([dict(c.as_dict(), plot=plots.get(c.source)) for c in cands])
        return EXIT_OK
    print(f"{len(cands)} candidate(s) in {args.table} at false-alarm probability <= {args.fpr:g} per source")
    for c in cands:
        d = c.as_dict()
        print(f"  {d['source']}: score {d['score']:.2f}, FAP {d['fap']:.2e}, depth {100 * d['depth']:.0f} %, "
              f"{d['n_epochs']} epochs ({d['start_time']:.6g} .. {d['end_time']:.6g}); {d['reason']}")
        if c.source in plots:
            print(f"      plot: {plots[c.source]}")
    return EXIT_OK


# -- status --------------------------------------------------------------------


def cmd_status(args) -> int:
    from . import database as db
    from .products import check_block_id

    cfg = _load_config(args)
    ids = None
    if args.block:
        ids = [check_block_id(b) for b in args.block]
    if args.run:
        runs = db.runs(cfg.database_url, args.run)
        if not runs:
            raise KeyError(f"unknown run id {args.run}; `contimg runs` lists the runs")
        ids = (ids or []) + runs[0]["block_ids"]
    recs = db.blocks(cfg.database_url, ids, date=args.date)
    if ids:
        unknown = sorted(set(ids) - {r["block_id"] for r in recs})
        if unknown:
            print(f"contimg: unknown block id(s) {', '.join(unknown)}; `contimg status` lists the known blocks",
                  file=sys.stderr)
            return EXIT_FAILED
    if args.json:
        _print_json(recs)
        return EXIT_OK
    if not recs:
        print(f"no blocks recorded in {cfg.database_url}")
        return EXIT_OK
    print(f"{'block':<20} {'state':<8} {'sb ok':>5} {'node':<8} {'att':>3}  image / reason")
    for r in recs:
        img = r["products"].get("image_fits") or ""
        print(f"{r['block_id']:<20} {r['state']:<8} {r['n_subbands_ok']:>2}/16 {r['imaging_node'] or '-':<8} "
              f"{r['attempts']:>3}  {img}")
        if r["reason"]:
            print(f"{'':<20} reason: {r['reason']}")
        if args.verbose:
            for sb in r["subbands"]:
                if sb["state"] != "ok":
                    print(f"{'':<20}   sb{sb['subband']:02d} {sb['state']}: {sb['reason']}")
    return EXIT_OK


def cmd_nodes(args) -> int:
    """Nodes of the node map: worker answering, tasks waiting in the queue, blocks in flight."""
    from .monitoring import node_report

    rep = node_report(_load_config(args))
    if args.json:
        _print_json(rep)
        return EXIT_OK
    print(f"{'node':<10} {'worker':<8} {'queued':>6}  {'subbands':<12} {'images':<6} blocks in flight")
    for n in rep["nodes"]:
        sbs = f"{min(n['subbands']):02d}-{max(n['subbands']):02d}" if n["subbands"] else "-"
        print(f"{n['node']:<10} {'up' if n['up'] else 'DOWN':<8} {n['queued_tasks']:>6}  {sbs:<12} "
              f"{'yes' if n['imaging'] else 'no':<6} {', '.join(n['blocks_in_flight']) or '-'}")
    print(f"blocks waiting in the work queue: {rep['pending_blocks']}")
    return EXIT_OK


def cmd_mosaic(args) -> int:
    """One mosaic per declination strip of a night, from its imaged blocks."""
    from .strips import night_mosaics

    cfg = _load_config(args)
    results = night_mosaics(cfg, args.night)
    if args.json:
        _print_json(results)
        return EXIT_OK
    for r in results:
        print(f"{r['mosaic_id']}: {r['n_blocks']} blocks, {r['shape'][1]}x{r['shape'][0]} pixels of "
              f"{r['cell_arcsec']:g} arcsec, noise {1e3 * r['noise_min_jy']:.2f}-{1e3 * r['noise_median_jy']:.2f} "
              f"mJy/beam (min-median)")
        for kind, path in sorted(r["paths"].items()):
            print(f"    {kind}: {path}")
    return EXIT_OK


def cmd_weblog(args) -> int:
    """Write the self-contained HTML weblog of a run or a night; print its path."""
    from . import weblog

    cfg = _load_config(args)
    if bool(args.run) == bool(args.night):
        raise ContimgError("give a run id or --night DATE (one of them)")
    path = weblog.render_night(cfg, args.night) if args.night else weblog.render_run(cfg, args.run)
    if args.json:
        _print_json({"weblog": str(path), "run_id": args.run, "night": args.night})
    else:
        print(path)
    return EXIT_OK



# -- QA, ingest, cleanup (contimg/qa.py, contimg/archive.py) -------------------


def cmd_qa(args) -> int:
    """Record a run's QA verdict (with the analyst, the date and a report) and show it in its weblog."""
    from .qa import set_verdict

    cfg = _load_config(args)
    rec = set_verdict(cfg, args.run, args.state, report=args.report, analyst=args.analyst)
    if args.json:
        _print_json(rec)
    else:
        print(f"{rec['run_id']}: QA {rec['state']} by {rec['analyst']} at {rec['at']}"
              + (f"; report {rec['report_path']}" if rec.get("report_path") else "") + f"; weblog {rec['weblog']}")
    return EXIT_OK


def cmd_ingest(args) -> int:
    """Copy a run's products into the archive with metadata and checksums; register them."""
    from .archive import ingest

    cfg = _load_config(args)
    res = ingest(cfg, args.run, force=args.force)
    if args.json:
        _print_json(res)
        return EXIT_OK
    print(f"run {res['run_id']} -> {res['archive_directory']}")
    for reason in res.get("forced") or []:
        print(f"  ingested with --force despite: {reason}")
    if res.get("cleaned_at"):
        print(f"  (working directory cleaned up at {res['cleaned_at']}; the archive is all there is)")
    counts: dict[str, int] = {}
    for e in res["products"]:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
        print(f"  {e['status']:<17} {e['name']}  ({e['size_bytes']} bytes, sha256 {e['sha256'][:12]})")
    print(f"{len(res['products'])} products: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return EXIT_OK


def cmd_cleanup(args) -> int:
    """Delete a run's working directory once the archive verifiably holds its products (or every expired one)."""
    from .archive import cleanup, cleanup_expired

    cfg = _load_config(args)
    if bool(args.run) == bool(args.expired):
        raise ContimgError("give a run id or --expired (one of them)")
    if args.expired:
        rows = cleanup_expired(cfg, dry_run=args.dry_run)
        if args.json:
            _print_json(rows)
            return EXIT_OK
        if not rows:
            print("no run has a working directory left")
        for r in rows:
            what = r["reason"] if r["state"] == "kept" else f"{r['freed_bytes']} bytes"
            print(f"{r['run_id']}  {r['state']:<11} {r['age_days']:>7.1f} d  {what}")
        return EXIT_OK
    res = cleanup(cfg, args.run, dry_run=args.dry_run)
    if args.json:
        _print_json(res)
    elif res["state"] == "already cleaned":
        print(f"run {res['run_id']} is already cleaned (at {res['cleaned_at']}, {res['freed_bytes']} bytes freed)")
    elif res["state"] == "no working directory":
        print(f"run {res['run_id']} has no working directory ({res['directory']}); nothing to delete")
    else:
        print(f"run {res['run_id']}: {res['state']} {res['directory']} ({res['products']} products verified in the "
              f"archive by sha256; {res['freed_bytes']} bytes)")
    return EXIT_OK


# -- worker --------------------------------------------------------------------


def cmd_worker(args) -> int:
    cfg = _load_config(args)
    node = cfg.node(args.node)
    if cfg.local:
        raise _config.ConfigError("broker.url: a worker needs a broker; set broker.url (or use `contimg run --local`)")
    os.environ[_config.ENV_PREFIX + "CONFIG"] = str(cfg.file) if cfg.file else ""
    from .tasks.app import configure

    app = configure(cfg)
    queues = [node.queue]
    argv = ["worker", f"--hostname={node.name}@%h", f"--queues={','.join(queues)}",
            f"--concurrency={args.concurrency}", f"--loglevel={args.loglevel}", "--prefetch-multiplier=1",
            "--without-mingle", "--without-gossip"]
    app.worker_main(argv)
    return EXIT_OK


# -- survey: catalogue, photometry, light curves, ESE search ---------------------


def cmd_catalogue_build(args) -> int:
    """Blind source finding on a mosaic, merged into the reference catalogue."""
    from . import catalogue

    cfg = _load_config(args)
    upd = catalogue.build_from_mosaic(cfg.database_url, args.mosaic, args.noise, settings=cfg.survey)
    d = upd.as_dict()
    if args.json:
        _print_json(d)
        return EXIT_OK
    print(f"{d['mosaic']}: {d['n_detections']} detections at SNR >= {cfg.survey.catalogue_min_snr:g}; "
          f"{d['n_matched']} matched ({d['n_improved']} re-measured), {d['n_new']} new; catalogue "
          f"{d['n_total']} sources, {d['n_references']} flux-scale references")
    return EXIT_OK


def cmd_catalogue_export(args) -> int:
    from . import catalogue, products

    cfg = _load_config(args)
    table = catalogue.catalogue_table(cfg.database_url)
    if len(table) == 0:
        raise ContimgError(f"the reference catalogue in {cfg.database_url} is empty; "
                           "build it with `contimg catalogue build MOSAIC`")
    out = Path(args.output) if args.output else products.survey_catalogue(cfg.paths.products_root, args.format)
    from .sourcefind import write_catalogue

    write_catalogue(table, out, args.format)
    if args.json:
        _print_json({"path": str(out), "format": args.format, "n_sources": len(table),
                     "n_references": int(table["is_reference"].sum())})
    else:
        print(f"wrote {len(table)} sources ({int(table['is_reference'].sum())} references) to {out}")
    return EXIT_OK


def cmd_photometry(args) -> int:
    """Forced photometry and flux scale of done blocks (those imaged before the catalogue, or all again)."""
    from . import database as db
    from . import survey
    from .products import check_block_id

    cfg = _load_config(args)
    url = cfg.database_url
    if not db.catalogue_sources(url):
        raise ContimgError(f"no reference catalogue in {url}; build it with `contimg catalogue build MOSAIC`")
    ids = [check_block_id(b) for b in args.block] if args.block else None
    if ids:
        unknown = sorted(set(ids) - {r["block_id"] for r in db.blocks(url, ids)})
        if unknown:
            raise KeyError(f"unknown block id(s) {', '.join(unknown)}; `contimg status` lists the known blocks")
    results = survey.photometer_blocks(url, cfg.paths.products_root, ids, cfg.survey)
    if args.json:
        _print_json(results)
        return EXIT_OK
    if not results:
        print(f"no done blocks in {url}; nothing to measure")
    for r in results:
        line = f"{r['block_id']}  {r['state']:<8}"
        if r.get("scale") is not None and r["state"] != "failed":
            err = f" +- {r['scale_err']:.4f}" if r.get("scale_err") is not None else ""
            line += (f" {r['n_sources']:>5} sources, scale {r['scale']:.4f}{err} from {r['n_references']} "
                     f"references ({r['n_rejected']} rejected)")
        print(line + (f"; {r['reason']}" if r.get("reason") else ""))
    return EXIT_OK if all(r["state"] != "failed" for r in results) else EXIT_FAILED


def cmd_fluxscales(args) -> int:
    """The recorded per-block flux scales, for audit."""
    from . import database as db

    cfg = _load_config(args)
    rows = db.flux_scales(cfg.database_url, args.block)
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no block photometry recorded in {cfg.database_url}; run `contimg photometry`")
    for r in rows:
        err = f" +- {r['scale_err']:.4f}" if r["scale_err"] is not None else ""
        print(f"{r['block_id']}  {r['state']:<8} scale {r['scale']:.4f}{err}  {r['n_references']} references, "
              f"{r['n_rejected']} rejected ({r['method'] or '-'})" + (f"; {r['reason']}" if r["reason"] else ""))
        if args.verbose:
            for rej in (r["details"] or {}).get("rejected", []):
                print(f"{'':<20}   rejected {rej['name']}: ratio {rej['ratio']}, SNR {rej['snr']}")
    return EXIT_OK


def cmd_lightcurve(args) -> int:
    """Print one source's light curve and write its PNG plot."""
    from . import products, survey

    cfg = _load_config(args)
    table = survey.lightcurve(cfg.database_url, args.source)
    name = table.meta["source"]
    png = None
    if len(table):
        png = survey.plot_lightcurve(table, Path(args.png) if args.png else
                                     products.lightcurve_png(cfg.paths.products_root, name))
    if args.json:
        _print_json({"source": name, **{k: table.meta[k] for k in ("source_id", "ra_deg", "dec_deg",
                                                                      "catalogue_flux_jy", "is_reference")},
                     "png": str(png) if png else None,
                     "epochs": [{c: (r[c].item() if hasattr(r[c], "item") else r[c]) for c in table.colnames}
                                for r in table]})
        return EXIT_OK
    print(f"{name}  RA {table.meta['ra_deg']:.5f}  Dec {table.meta['dec_deg']:+.5f}  catalogue "
          f"{1e3 * table.meta['catalogue_flux_jy']:.2f} mJy" + ("  (reference)" if table.meta["is_reference"] else ""))
    if not len(table):
        print(f"no photometry of {name} yet; run `contimg photometry` once blocks are imaged")
        return EXIT_OK
    print(f"{'block':<20} {'MJD':>12} {'flux mJy':>10} {'err':>8} {'scale':>7} {'pb':>5}  flags")
    for r in table:
        flags = ",".join(survey.flag_names(int(r["flags"]))) or "-"
        print(f"{r['block_id']:<20} {r['mjd']:>12.5f} {1e3 * r['flux']:>10.2f} {1e3 * r['flux_err']:>8.2f} "
              f"{r['scale']:>7.4f} {r['pb']:>5.2f}  {flags}" + ("" if r["used"] else "  (not used)"))
    print(f"plot: {png}")
    return EXIT_OK


def cmd_ese(args) -> int:
    """The survey's ESE candidates from the light curves in the products database."""
    from . import products, survey

    cfg = _load_config(args)
    fpr = args.fpr if args.fpr is not None else cfg.survey.ese_fpr
    cands, curves, n = survey.find_candidates(cfg.database_url, fpr)
    plot_dir = Path(args.plots) if args.plots else products.survey_directory(cfg.paths.products_root) / "ese"
    plots = {}
    for c in cands:
        table = survey.lightcurve(cfg.database_url, c.source)
        plots[c.source] = str(survey.plot_lightcurve(table, products.ese_plot_png(plot_dir, c.source), c))
    if args.json:
        _print_json([dict(c.as_dict(), rank=i + 1, plot=plots.get(c.source)) for i, c in enumerate(cands)])
        return EXIT_OK
    if n == 0:
        print(f"no light curves in {cfg.database_url}; build the catalogue (`contimg catalogue build`) and run "
              "`contimg photometry`")
        return EXIT_OK
    print(f"{len(cands)} ESE candidate(s) among {n} light curves at false-alarm probability <= {fpr:g} per source")
    for i, c in enumerate(cands, start=1):
        print(f"{i:>3}. {c.source}: score {c.score:.1f}, depth {100 * c.depth:.0f} %, duration {c.duration:.1f} d "
              f"({c.n_epochs} epochs); {c.reason}")
        print(f"     plot: {plots[c.source]}")
    return EXIT_OK


def _add_survey_parsers(sub) -> None:
    """catalogue, photometry, fluxscales, lightcurve (``ese`` is set up beside ``ese detect``)."""
    ca = sub.add_parser("catalogue", help="the survey's reference catalogue")
    cas = ca.add_subparsers(dest="catalogue_command", metavar="SUBCOMMAND")
    cb = cas.add_parser("build", help="find the sources of a mosaic and merge them into the catalogue")
    cb.add_argument("mosaic", help="mosaic image FITS (contimg.mosaic products)")
    cb.add_argument("--noise", help="its noise-map FITS (default: the mosaic's noise product beside it)")
    cb.add_argument("--json", action="store_true", help="machine-readable output")
    cb.set_defaults(func=cmd_catalogue_build)
    ce = cas.add_parser("export", help="write the catalogue as ECSV or VOTable")
    ce.add_argument("--format", choices=("ecsv", "votable"), default="ecsv", help="file format (default ecsv)")
    ce.add_argument("--output", help="file to write (default: products_root/survey/catalogue.sources.*)")
    ce.add_argument("--json", action="store_true", help="machine-readable output")
    ce.set_defaults(func=cmd_catalogue_export)
    ca.set_defaults(func=lambda a: (ca.print_help(), EXIT_USAGE)[1])

    ph = sub.add_parser("photometry", help="forced photometry and flux scale of done blocks")
    ph.add_argument("--block", action="append", help="only this block id (repeatable; default every done block)")
    ph.add_argument("--json", action="store_true", help="machine-readable output")
    ph.set_defaults(func=cmd_photometry)

    fs = sub.add_parser("fluxscales", help="the recorded per-block flux scales (audit)")
    fs.add_argument("--block", action="append", help="only this block id (repeatable)")
    fs.add_argument("--verbose", action="store_true", help="list the rejected references")
    fs.add_argument("--json", action="store_true", help="machine-readable output")
    fs.set_defaults(func=cmd_fluxscales)

    lc = sub.add_parser("lightcurve", help="print a catalogue source's light curve and plot it")
    lc.add_argument("source", help="catalogue name, e.g. J095959.9+543600")
    lc.add_argument("--png", help="plot file (default: products_root/survey/lightcurves/SOURCE.png)")
    lc.add_argument("--json", action="store_true", help="machine-readable output")
    lc.set_defaults(func=cmd_lightcurve)


def cmd_flower(args) -> int:
    """Start Flower against the configured broker, with basic auth when configured."""
    from .monitoring import exec_flower, flower_command

    cfg = _load_config(args)
    argv, env = flower_command(cfg, port=args.port, address=args.address)  # validates before printing
    auth = "basic auth on" if "FLOWER_BASIC_AUTH" in env else "no password (loopback only)"
    print(f"Flower on http://{args.address or cfg.flower.address}:{args.port or cfg.flower.port}/ "
          f"({auth}); broker {_redact('broker.url', cfg.broker.url)}", flush=True)
    exec_flower(cfg, port=args.port, address=args.address)
    return EXIT_OK  # not reached


# -- watch ---------------------------------------------------------------------


def cmd_watch(args) -> int:
    """Submit each block of INCOMING once its files have landed (contimg/watch.py), until stopped."""
    from datetime import datetime, timezone

    from .pipeline import BROKER_DOWN, Dispatcher, check_data_dir
    from .watch import Watcher

    incoming = Path(args.incoming).absolute()
    if not incoming.exists():
        raise FileNotFoundError(f"incoming directory {incoming} does not exist; create it or fix the path")
    if not incoming.is_dir():
        raise NotADirectoryError(f"{incoming} is not a directory; give the directory the correlator writes into")
    cfg = _cluster_config(args)
    check_data_dir(cfg, incoming)  # workers refuse files outside the data roots: say so now
    out = sys.stderr if args.json else sys.stdout  # --json: stdout carries only what was submitted

    def say(line: str) -> None:
        print(f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%S}Z {line}", file=out, flush=True)

    # --once polls (it only lives for one settle interval); otherwise watch.use_inotify decides.
    watcher = Watcher(cfg, incoming, say=say, use_inotify="off" if args.once else None)
    disp = Dispatcher(cfg) if args.dispatch else None
    # SIGTERM (systemd stop) and Ctrl-C end the loop between passes: a submission is never cut in half.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: watcher.stop())
    w = cfg.watch
    say(f"watching {incoming} ({watcher.mode}; settle {w.settle_s:g} s, block timeout {w.block_timeout_s:g} s, "
        f"rescan every {w.poll_s:g} s; state {watcher.state_path})" + ("; dispatching" if disp else ""))
    reported = 0

    def one_pass() -> float | None:
        nonlocal reported
        try:
            watcher.step()
        except BROKER_DOWN as e:  # Redis restarting: nothing was marked submitted; the next pass tries again
            say(f"broker unreachable ({type(e).__name__}); retrying")
        if args.json and not args.once:
            for res in watcher.submitted[reported:]:
                print(json.dumps(res.as_dict(), default=str), flush=True)
            reported = len(watcher.submitted)
        if disp is None:
            return None
        try:
            for ev in disp.step():
                say(ev)
        except BROKER_DOWN as e:
            say(f"broker unreachable ({type(e).__name__}); retrying")
        return cfg.dispatch.poll_s

    try:
        if args.once:
            one_pass()
            if watcher.waiting_files():  # a file lands only after being seen unchanged for settle_s
                watcher.wait(w.settle_s + 0.1)
                one_pass()
            if args.json:
                _print_json({"incoming": str(incoming), "runs": [r.as_dict() for r in watcher.submitted],
                             "waiting": watcher.waiting_files()})
        else:
            watcher.run(on_pass=one_pass)
            say("stopped")
    finally:
        watcher.close()
    return EXIT_OK


# -- parser --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contimg", description="DSA-110 continuum imaging pipeline.")
    p.add_argument("--version", action="version", version=f"contimg {__version__}")
    p.add_argument("--config", help="TOML configuration file (default: $CONTIMG_CONFIG or ./contimg.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("config", help="show the effective configuration")
    csub = c.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    cs = csub.add_parser("show", help="print every value and where it came from")
    cs.add_argument("--json", action="store_true", help="machine-readable output")
    cs.set_defaults(func=cmd_config_show)
    c.set_defaults(func=lambda a: (c.print_help(), EXIT_USAGE)[1])

    s = sub.add_parser("simulate", help="write a simulated night of DSA-110 subband files")
    s.add_argument("out_dir", help="directory to write the *_sbNN.hdf5 files and truth into")
    s.add_argument("--scenario", help="scenario TOML file (sources, faults, calibrator); see docs/simulation.md")
    s.add_argument("--preset", help="full, small or tiny (default from the scenario: small)")
    s.add_argument("--blocks", dest="n_blocks", type=int, help="number of observation blocks")
    s.add_argument("--date", help="UTC date YYYY-MM-DD")
    s.add_argument("--start", help="UTC start time HH:MM:SS of the first block")
    s.add_argument("--dec", dest="dec_deg", type=float, help="pointing declination, degrees")
    s.add_argument("--seed", type=int, help="random seed")
    s.add_argument("--no-gains", action="store_true", help="unit antenna gains and no bandpass errors")
    s.add_argument("--no-noise", action="store_true", help="no thermal noise")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_simulate)

    cv = sub.add_parser("convert", help="convert one subband file to a Measurement Set")
    cv.add_argument("input", help="subband UVH5 file")
    cv.add_argument("output", help="Measurement Set to write")
    cv.add_argument("--method", choices=("fast", "pyuvdata"),
                    help="converter (default: pipeline.converter, fast); both write the same MS")
    cv.add_argument("--json", action="store_true", help="print the result as JSON")
    cv.set_defaults(func=cmd_convert)

    b = sub.add_parser("blocks", help="group the subband files of a directory into blocks")
    b.add_argument("directory", help="directory holding *_sbNN.hdf5 files")
    b.add_argument("--tolerance", type=float, help="seconds between files of one block (default: config, 60)")
    b.add_argument("--recursive", action="store_true", help="look into subdirectories too")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.set_defaults(func=cmd_blocks)

    r = sub.add_parser("run", help="process every block found in a directory")
    r.add_argument("directory", help="directory holding *_sbNN.hdf5 files")
    r.add_argument("--local", action="store_true",
                   help="start a private redis-server and workers (default when broker.url is empty)")
    r.add_argument("--workdir", help="where the private cluster keeps its logs (default: products_root/local-cluster)")
    r.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    r.add_argument("--allow-failures", action="store_true", help="exit 0 even if some blocks failed")
    r.add_argument("--force", action="store_true", help="process blocks that are already queued or done again")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="simulate a small night and process it on a private local cluster")
    d.add_argument("--dir", default="demo", help="directory for data, products and logs (default ./demo)")
    d.add_argument("--blocks", type=int, default=6, help="number of blocks (default 6)")
    d.add_argument("--preset", default="small", help="simulation preset (default small)")
    d.add_argument("--seed", type=int, default=42, help="random seed")
    d.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    d.set_defaults(func=cmd_demo)

    st = sub.add_parser("status", help="state, reason and products of each block")
    st.add_argument("--block", action="append", help="only this block id (repeatable)")
    st.add_argument("--date", help="only blocks of this UTC date")
    st.add_argument("--run", help="only the blocks of this run")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--verbose", action="store_true", help="list failed subbands with reasons")
    st.set_defaults(func=cmd_status)

    sb = sub.add_parser("submit", help="submit a night or an LST range found under paths.data_root")
    sbs = sb.add_subparsers(dest="what", metavar="WHAT")
    sn = sbs.add_parser("night", help="every block of a UTC date")
    sn.add_argument("date", help="YYYY-MM-DD")
    sl = sbs.add_parser("lst", help="blocks whose mid-time LST lies in [START, END)")
    sl.add_argument("start", help="LST like 14h, 14h30m, 14:30")
    sl.add_argument("end", help="LST like 16h (may wrap past 24h)")
    sl.add_argument("--date", help="only this UTC date (YYYY-MM-DD)")
    for x in (sn, sl):
        x.add_argument("--dry-run", action="store_true", help="list what would be submitted; submit nothing")
        x.add_argument("--force", action="store_true", help="queue blocks that are queued or done again")
        x.add_argument("--remap", action="append", metavar="sbNN=NODE",
                       help="move a subband to another node for this submission (repeatable)")
        x.add_argument("--wait", action="store_true", help="dispatch and wait here until the run ends")
        x.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
        x.add_argument("--json", action="store_true", help="machine-readable output")
        x.set_defaults(func=cmd_submit)
    sb.set_defaults(func=lambda a: (sb.print_help(), EXIT_USAGE)[1])

    rr = sub.add_parser("rerun", help="process one block again as a new run (flag template, changed settings)")
    rr.add_argument("block_id", help="block id (YYYY-MM-DDTHH:MM:SS)")
    rr.add_argument("--flags", help="flag template: CASA flagdata list syntax, one command per line")
    rr.add_argument("--config", dest="run_config",
                    help="TOML file with the settings to change for this run ([pipeline], [imaging], [flagging], "
                         "[calibration], [survey])")
    rr.add_argument("--wait", action="store_true", help="dispatch and wait here until the run ends")
    rr.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    rr.add_argument("--json", action="store_true", help="machine-readable output")
    rr.set_defaults(func=cmd_rerun)

    rs = sub.add_parser("resubmit", help="queue failed blocks again as a new run")
    rs.add_argument("--failed", action="store_true", help="resubmit the failed blocks (required)")
    rs.add_argument("--run", help="only the failed blocks of this run")
    rs.add_argument("--block", action="append", help="only this block id (repeatable)")
    rs.add_argument("--dry-run", action="store_true", help="list what would be resubmitted")
    rs.add_argument("--wait", action="store_true", help="dispatch and wait here until the run ends")
    rs.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    rs.add_argument("--json", action="store_true", help="machine-readable output")
    rs.set_defaults(func=cmd_resubmit)

    ru = sub.add_parser("runs", help="recorded runs with the states of their blocks")
    ru.add_argument("run", nargs="?", help="one run id")
    ru.add_argument("--json", action="store_true", help="machine-readable output")
    ru.set_defaults(func=cmd_runs)

    dp = sub.add_parser("dispatch", help="hand queued blocks to imaging nodes and reap expired leases (a service)")
    dp.add_argument("--once", action="store_true", help="one pass, then exit")
    dp.add_argument("--json", action="store_true", help="with --once: print the queue counts as JSON")
    dp.set_defaults(func=cmd_dispatch)

    es = sub.add_parser("ese", help="extreme-scattering-event candidates of the survey (or `ese detect TABLE`)")
    es.add_argument("--fpr", type=float, default=None,
                    help="false-alarm probability per source (default survey.ese_fpr, 1e-4)")
    es.add_argument("--plots", help="directory for the candidates' light-curve plots (default products_root/survey/ese)")
    es.add_argument("--json", action="store_true", help="machine-readable output")
    ess = es.add_subparsers(dest="ese_command", metavar="SUBCOMMAND")
    ed = ess.add_parser("detect", help="find dips in a light-curve table (columns source, time, flux, flux_err)")
    ed.add_argument("table", help="CSV or ECSV light-curve table")
    ed.add_argument("--fpr", type=float, default=1e-4, help="false-alarm probability per source (default 1e-4)")
    ed.add_argument("--plots", help="directory for one PNG light-curve plot per candidate")
    ed.add_argument("--json", action="store_true", help="machine-readable output")
    ed.set_defaults(func=cmd_ese_detect)
    es.set_defaults(func=cmd_ese)
    _add_survey_parsers(sub)

    w = sub.add_parser("worker", help="start a Celery worker for one node's queue")
    w.add_argument("--node", required=True, help="node name from the node map")
    w.add_argument("--concurrency", type=int, default=1, help="worker processes (CASA: one call per process)")
    w.add_argument("--loglevel", default="INFO", help="Celery log level")
    w.set_defaults(func=cmd_worker)

    mo = sub.add_parser("mosaic", help="mosaic the night's block images, one mosaic per declination strip")
    mo.add_argument("--night", required=True, help="UTC date YYYY-MM-DD")
    mo.add_argument("--json", action="store_true", help="machine-readable output")
    mo.set_defaults(func=cmd_mosaic)

    wl = sub.add_parser("weblog", help="write the HTML weblog of a run (or a night) and print its path")
    wl.add_argument("run", nargs="?", help="run id (`contimg runs` lists them)")
    wl.add_argument("--night", help="UTC date YYYY-MM-DD: the night's weblog instead")
    wl.add_argument("--json", action="store_true", help="machine-readable output")
    wl.set_defaults(func=cmd_weblog)

    qa = sub.add_parser("qa", help="record a run's QA verdict (pass, fail, null) with a report; shown in its weblog")
    qa.add_argument("run", help="run id (`contimg runs` lists them)")
    qv = qa.add_mutually_exclusive_group(required=True)
    qv.add_argument("--pass", dest="state", action="store_const", const="pass", help="the run is good")
    qv.add_argument("--fail", dest="state", action="store_const", const="fail", help="the run is bad")
    qv.add_argument("--null", dest="state", action="store_const", const="null", help="no verdict possible")
    qa.add_argument("--report", help="the analyst's report (text file), copied to the run as qa_report.txt")
    qa.add_argument("--analyst", help="who gives the verdict (default: your login name)")
    qa.add_argument("--json", action="store_true", help="machine-readable output")
    qa.set_defaults(func=cmd_qa)

    ig = sub.add_parser("ingest", help="copy a run's products into the archive with metadata and checksums")
    ig.add_argument("run", help="run id (`contimg runs` lists them)")
    ig.add_argument("--force", action="store_true",
                    help="ingest a run with failed blocks (the products it has); replace differing archive copies")
    ig.add_argument("--json", action="store_true", help="machine-readable output (per product: copied, already archived...)")
    ig.set_defaults(func=cmd_ingest)

    cu = sub.add_parser("cleanup", help="delete a run's working directory once the archive holds its products")
    cu.add_argument("run", nargs="?", help="run id (`contimg runs` lists them)")
    cu.add_argument("--expired", action="store_true",
                    help="every run older than archive.expire_days whose products are all archived")
    cu.add_argument("--dry-run", action="store_true", help="verify and report; delete nothing")
    cu.add_argument("--json", action="store_true", help="machine-readable output")
    cu.set_defaults(func=cmd_cleanup)

    nd = sub.add_parser("nodes", help="each node: worker up or down, tasks queued, blocks in flight")
    nd.add_argument("--json", action="store_true", help="machine-readable output")
    nd.set_defaults(func=cmd_nodes)

    fl = sub.add_parser("flower", help="start Flower (the Celery monitor) against the broker")
    fl.add_argument("--port", type=int, help="port (default: flower.port, 5555)")
    fl.add_argument("--address", help="listen address (default: flower.address, 127.0.0.1)")
    fl.set_defaults(func=cmd_flower)

    wa = sub.add_parser("watch", help="submit each block of INCOMING once its subband files have landed (a service)")
    wa.add_argument("incoming", help="the directory the correlator writes *_sbNN.hdf5 files into (under paths.data_root)")
    wa.add_argument("--once", action="store_true",
                    help="scan, wait one settle interval, submit what is ready, exit (cron, tests)")
    wa.add_argument("--dispatch", action="store_true",
                    help="also hand queued blocks to the imaging nodes (else `contimg dispatch` does)")
    wa.add_argument("--json", action="store_true",
                    help="print what was submitted as JSON (one line per run; with --once one document); "
                         "events go to stderr")
    wa.set_defaults(func=cmd_watch)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    # SIGTERM ends the command like Ctrl-C, so context managers stop what they started.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("contimg: interrupted; stopped every process this command started", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ContimgError, FileNotFoundError, NotADirectoryError, ValueError, KeyError, TimeoutError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"contimg: {msg}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
