"""Operator submissions: a night, an LST range, a directory, or the failed blocks again.

Every submission is a recorded run (run id, who, when, the effective
configuration, the selection and any node remap) whose blocks go into the
dispatch work queue (:mod:`contimg.dispatch`). Blocks already queued, running
or done are left alone unless forced. This module never imports CASA.
"""

from __future__ import annotations

import getpass
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import config as _config
from . import database as db
from . import products
from .blocks import Block, discover
from .config import Config
from .errors import ConfigError
from .pipeline import Submitted, submit
from .telescope import N_SUBBANDS, SITE_LON_DEG


@dataclass
class Selection:
    """The blocks a submission picked, and what it was asked for."""

    kind: str
    description: dict
    blocks: list[Block]
    data_dir: Path


def parse_lst(text: str) -> float:
    """``14h``, ``14h30m``, ``14:30`` or ``14.5`` -> hours in [0, 24)."""
    t = text.strip().lower()
    try:
        if "h" in t:
            h, _, rest = t.partition("h")
            m = rest.rstrip("m") or "0"
            val = float(h) + float(m) / 60
        elif ":" in t:
            parts = [float(x) for x in t.split(":")]
            val = parts[0] + (parts[1] if len(parts) > 1 else 0) / 60 + (parts[2] if len(parts) > 2 else 0) / 3600
        else:
            val = float(t)
    except ValueError:
        raise ValueError(f"LST {text!r} is not like 14h, 14h30m, 14:30 or 14.5") from None
    if not 0 <= val <= 24:
        raise ValueError(f"LST {text!r} is outside 0h..24h")
    return val % 24


def block_lst_hours(block: Block) -> float:
    """Local (mean) sidereal time at the block's mid-time, hours."""
    jd = block.mid_jd
    d = jd - 2451545.0
    gmst = (18.697374558 + 24.06570982441908 * d) % 24  # IAU 1982 approximation, < 0.1 s here
    return (gmst + SITE_LON_DEG / 15.0) % 24


def _in_lst_range(lst: float, start: float, end: float) -> bool:
    return start <= lst < end if start <= end else (lst >= start or lst < end)


def check_date(text: str) -> str:
    try:
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"date {text!r} is not YYYY-MM-DD") from None
    return text


def _discover(cfg: Config) -> list[Block]:
    return discover(cfg.paths.data_root, tolerance_s=cfg.pipeline.block_tolerance_s, recursive=True).blocks


def select_night(cfg: Config, date: str) -> Selection:
    """Every block under the data root whose UTC date is ``date``."""
    check_date(date)
    blocks = [b for b in _discover(cfg) if b.block_id.startswith(date)]
    return Selection("night", {"date": date}, blocks, cfg.paths.data_root)


def select_lst(cfg: Config, start: str, end: str, date: str | None = None) -> Selection:
    """Blocks whose mid-time LST lies in [start, end) (wrapping past 24h), optionally on one UTC date."""
    a, b = parse_lst(start), parse_lst(end)
    if date:
        check_date(date)
    blocks = [blk for blk in _discover(cfg)
              if (not date or blk.block_id.startswith(date)) and _in_lst_range(block_lst_hours(blk), a, b)]
    return Selection("lst", {"lst_start_h": a, "lst_end_h": b, "date": date}, blocks, cfg.paths.data_root)


def parse_remap(items: list[str] | None, cfg: Config) -> dict[int, str]:
    """``["sb03=node2", ...]`` -> {3: "node2"}; names checked against the node map."""
    out: dict[int, str] = {}
    for item in items or []:
        key, sep, node = item.partition("=")
        key = key.strip().lower()
        if not sep or not key.startswith("sb"):
            raise ConfigError(f"--remap {item!r}: expected sbNN=NODE, for example sb03=node2")
        try:
            sb = int(key[2:])
        except ValueError:
            raise ConfigError(f"--remap {item!r}: {key!r} is not a subband like sb03") from None
        if not 0 <= sb < N_SUBBANDS:
            raise ConfigError(f"--remap {item!r}: subband {sb} is outside 0..{N_SUBBANDS - 1}")
        cfg.node(node.strip())  # raises naming the unknown node
        out[sb] = node.strip()
    return out


def apply_remap(cfg: Config, remap: dict[int, str]) -> Config:
    """A copy of ``cfg`` whose node map has the subbands moved (queues and scratch follow)."""
    if not remap:
        return cfg
    import copy

    new = copy.deepcopy(cfg)
    for sb, node in remap.items():
        for n in new.nodes.values():
            if sb in n.subbands:
                n.subbands.remove(sb)
        new.nodes[node].subbands.append(sb)
        new.nodes[node].subbands.sort()
    _config.validate(new)
    return new


def new_run_id(kind: str) -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{kind}-{secrets.token_hex(3)}"


@dataclass
class RunResult:
    run_id: str | None
    selection: Selection
    submitted: list[Submitted]

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "kind": self.selection.kind,
            "selection": self.selection.description,
            "blocks": [{"block_id": s.block_id, "outcome": s.outcome, "previous_state": s.previous_state}
                       for s in self.submitted],
        }


def submit_selection(cfg: Config, sel: Selection, *, force: bool = False, dry_run: bool = False,
                     remap: dict[int, str] | None = None, who: str | None = None) -> RunResult:
    """Record a run and queue its blocks (or, with ``dry_run``, say what would happen)."""
    remap = remap or {}
    run_cfg = apply_remap(cfg, remap)
    if dry_run:
        states = {b["block_id"]: b["state"] for b in db.blocks(cfg.database_url, [b.block_id for b in sel.blocks])}
        subs = [Submitted(b.block_id, "would skip" if states.get(b.block_id) in ("queued", "running", "imaging",
                                                                                 "done") and not force
                          else "would queue", states.get(b.block_id)) for b in sel.blocks]
        return RunResult(None, sel, subs)
    run_id = new_run_id(sel.kind)
    db.create_run(cfg.database_url, run_id, kind=sel.kind, selection=sel.description,
                  submitted_by=who or _whoami(), config_toml=_run_config_toml(run_cfg),
                  remap={f"sb{k:02d}": v for k, v in remap.items()}, block_ids=[b.block_id for b in sel.blocks])
    write_run_directory(cfg, run_id, kind=sel.kind, selection=sel.description, config_toml=_run_config_toml(run_cfg),
                        block_ids=[b.block_id for b in sel.blocks], remap=remap)
    subs = submit(run_cfg, sel.blocks, sel.data_dir, force=force, run_id=run_id,
                  node_of={sb: run_cfg.node_for_subband(sb).name for sb in range(N_SUBBANDS)} if remap else None)
    return RunResult(run_id, sel, subs)


def rerun(cfg: Config, block_id: str, *, flags: str | Path | None = None, config_path: str | Path | None = None,
          who: str | None = None) -> RunResult:
    """Process one block again as a new run, with a flag template and/or changed settings.

    The template is checked line by line and the settings file laid over the
    site configuration (only the science sections may change) before anything
    is queued; both are recorded with the run (``flags.txt``, ``config.toml``,
    the run's selection) and travel with its tasks. The earlier runs' products
    stay where they are.

    Raises
    ------
    KeyError
        The block is unknown, or its files are gone.
    FlagTemplateError, ConfigError
        A bad template (the line named) or settings file (the key named).
    ContimgError
        The block is queued or running now.
    """
    from . import flagtemplate
    from .errors import ContimgError
    from .products import check_block_id

    check_block_id(block_id)
    rec = db.block(cfg.database_url, block_id)
    data_dir = Path(rec["data_dir"]) if rec and rec.get("data_dir") else cfg.paths.data_root
    try:
        block = discover(data_dir, tolerance_s=cfg.pipeline.block_tolerance_s, recursive=True).block(block_id)
    except (KeyError, FileNotFoundError, NotADirectoryError):
        known = "it is in the products database but its files are gone" if rec else "no such block"
        raise KeyError(f"unknown block id {block_id} under {data_dir} ({known}); "
                       "`contimg status` lists the known blocks") from None
    if rec and rec["state"] in (db.QUEUED, db.RUNNING, db.IMAGING):
        raise ContimgError(f"block {block_id} is {rec['state']} now; wait for it to finish, then rerun it")
    commands = flagtemplate.check_file(flags) if flags else []
    run_cfg, overrides = _config.run_overlay(cfg, config_path) if config_path else (cfg, {})
    run_id = new_run_id("rerun")
    selection = {"block_id": block_id, "flags": str(flags) if flags else None,
                 "config": str(config_path) if config_path else None, "overrides": overrides,
                 "n_flag_commands": len(commands)}
    db.create_run(cfg.database_url, run_id, kind="rerun", selection=selection, submitted_by=who or _whoami(),
                  config_toml=_run_config_toml(run_cfg), remap={}, block_ids=[block_id])
    write_run_directory(cfg, run_id, kind="rerun", selection=selection, config_toml=_run_config_toml(run_cfg),
                        block_ids=[block_id])
    extra: dict = {}
    if overrides:
        extra["overrides"] = overrides
    if flags:
        kept = products.run_file(cfg.paths.products_root, run_id, "flags.txt")
        tmp = products.temporary_name(kept)
        tmp.write_text(Path(flags).read_text())
        tmp.replace(kept)
        db.record_run_product(cfg.database_url, run_id, "", "flag_template", kept, source=str(flags))
        extra["flag_template"] = str(kept)
    subs = submit(run_cfg, [block], data_dir, force=True, run_id=run_id, spec_extra=extra)
    return RunResult(run_id, Selection("rerun", selection, [block], data_dir), subs)


def failed_blocks(cfg: Config, run_id: str | None = None, block_ids: list[str] | None = None) -> Selection:
    """The failed blocks (of a run, or among ``block_ids``) as a selection to submit again."""
    url = cfg.database_url
    if run_id is not None:
        runs = db.runs(url, run_id)
        if not runs:
            raise KeyError(f"unknown run id {run_id}; `contimg runs` lists the runs")
        ids = runs[0]["block_ids"]
    else:
        ids = block_ids
    recs = db.blocks(url, ids)
    if block_ids:
        unknown = sorted(set(block_ids) - {r["block_id"] for r in recs})
        if unknown:
            raise KeyError(f"unknown block id(s) {', '.join(unknown)}; `contimg status` lists the known blocks")
    failed = [r for r in recs if r["state"] == db.FAILED]
    blocks: list[Block] = []
    data_dir = cfg.paths.data_root
    for r in failed:
        d = Path(r["data_dir"] or data_dir)
        try:
            blocks.append(discover(d, tolerance_s=cfg.pipeline.block_tolerance_s, recursive=True).block(r["block_id"]))
        except KeyError:
            continue  # its files are gone: nothing to resubmit; status keeps the failure
        data_dir = d
    return Selection("resubmit", {"run_id": run_id, "block_ids": [b.block_id for b in blocks]}, blocks, data_dir)


def _whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def write_run_directory(cfg: Config, run_id: str, *, kind: str, selection: dict, config_toml: str,
                        block_ids: list[str], remap: dict | None = None, extra: dict | None = None) -> Path:
    """Create the run's directory with ``config.toml`` and ``run.json`` (atomically); returns it."""
    import json

    d = products.run_directory(cfg.paths.products_root, run_id)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"run_id": run_id, "kind": kind, "selection": selection, "block_ids": block_ids,
            "submitted_by": _whoami(), "submitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "remap": {f"sb{k:02d}": v for k, v in (remap or {}).items()}, **(extra or {})}
    for name, text in (("config.toml", config_toml), ("run.json", json.dumps(meta, indent=2, default=str))):
        final = products.run_file(cfg.paths.products_root, run_id, name)
        tmp = products.temporary_name(final)
        tmp.write_text(text)
        tmp.replace(final)
    return d


def _run_config_toml(cfg: Config) -> str:
    """The effective configuration recorded with a run, without its secrets."""
    text = _config.to_toml(cfg)
    if cfg.broker.url:
        text = text.replace(cfg.broker.url, _redacted(cfg.broker.url))
    if cfg.flower.basic_auth:
        text = text.replace(cfg.flower.basic_auth, "***")
    nt = cfg.notify
    if nt.smtp_password:
        text = text.replace(f"smtp_password = {_config._toml_value(nt.smtp_password)}", 'smtp_password = "***"')
    if nt.webhook_url:  # its path may be a token
        text = text.replace(f"webhook_url = {_config._toml_value(nt.webhook_url)}",
                            f'webhook_url = "{_webhook_redacted(nt.webhook_url)}"')
    return text


def _webhook_redacted(url: str) -> str:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc.rpartition('@')[2]}/***"


def _redacted(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


__all__ = ["parse_lst", "block_lst_hours", "select_night", "select_lst", "parse_remap", "apply_remap",
           "submit_selection", "failed_blocks", "rerun", "RunResult", "Selection"]
