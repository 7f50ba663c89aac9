"""The Python API for notebooks and scripts (what the command line does, as functions).

Example (docs/notebooks/)::

    from contimg import api
    api.status(state="failed")                # failed blocks, as dicts
    api.resubmit_failed(run_id="...", dry_run=True)
    api.resubmit_failed(run_id="...")         # queue them again as a new run
"""

from __future__ import annotations

import time

from . import config as _config
from . import database as db
from .errors import ContimgError


def load_config(path: str | None = None) -> _config.Config:
    """The effective configuration (``path``, ``$CONTIMG_CONFIG`` or ``./contimg.toml``)."""
    return _config.load(path)


def status(config: _config.Config | str | None = None, *, run_id: str | None = None,
           block_ids: list[str] | None = None, state: str | None = None) -> list[dict]:
    """Block records (state, reason, subbands, products, timings), optionally filtered."""
    cfg = config if isinstance(config, _config.Config) else load_config(config)
    ids = block_ids
    if run_id is not None:
        runs = db.runs(cfg.database_url, run_id)
        if not runs:
            raise KeyError(f"unknown run id {run_id}; api.runs() lists the runs")
        ids = runs[0]["block_ids"]
    recs = db.blocks(cfg.database_url, ids)
    return [r for r in recs if state is None or r["state"] == state]


def runs(config: _config.Config | str | None = None, run_id: str | None = None) -> list[dict]:
    """Recorded runs, newest first, with the counts of their blocks' states."""
    cfg = config if isinstance(config, _config.Config) else load_config(config)
    return db.runs(cfg.database_url, run_id)


def resubmit_failed(config: _config.Config | str | None = None, *, run_id: str | None = None,
                    block_ids: list[str] | None = None, dry_run: bool = False) -> dict:
    """Queue the failed blocks (of a run, or these blocks) again as a new run.

    Needs a configured cluster (``broker.url``) with a dispatcher running
    (``contimg dispatch``). Returns the run as a dict (``run_id`` None for a
    dry run).
    """
    from .submission import failed_blocks, submit_selection

    cfg = config if isinstance(config, _config.Config) else load_config(config)
    if cfg.local and not dry_run:
        raise ContimgError("broker.url is empty: resubmission needs a running cluster")
    sel = failed_blocks(cfg, run_id=run_id, block_ids=block_ids)
    return submit_selection(cfg, sel, force=True, dry_run=dry_run).as_dict()


def wait(config: _config.Config | str | None = None, *, run_id: str, timeout_s: float = 3600.0,
         dispatch: bool = False, poll_s: float = 1.0) -> list[dict]:
    """Wait until every block of a run is done or failed; returns their records.

    With ``dispatch=False`` (the default) a ``contimg dispatch`` service hands
    out the blocks and this only watches the products database; ``dispatch=True``
    also dispatches from this process (when no service runs).
    """
    from .pipeline import Dispatcher
    from .pipeline import wait as _wait

    cfg = config if isinstance(config, _config.Config) else load_config(config)
    found = db.runs(cfg.database_url, run_id)
    if not found:
        raise KeyError(f"unknown run id {run_id}; api.runs() lists the runs")

    class _Watch:  # the dispatcher interface, doing nothing: the service dispatches
        def step(self) -> list[str]:
            return []

        def idle(self, timeout_s: float) -> None:
            time.sleep(timeout_s)

    return _wait(cfg, found[0]["block_ids"], poll_s=poll_s, timeout_s=timeout_s,
                 dispatcher=Dispatcher(cfg) if dispatch else _Watch())
