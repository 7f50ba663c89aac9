"""QA verdicts of runs: an analyst passes, fails or nulls a run, with a report.

``contimg qa RUN --pass|--fail|--null [--report FILE] [--analyst NAME]`` records
the verdict in the products database (``qa`` table: state, analyst, date,
report), copies the report into the run's directory as ``qa_report.txt`` (so it
is archived with the run's products) and re-renders the run's weblog, whose QA
section shows both. Celery-free; the command line is a thin wrapper.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

from . import database as db
from . import products
from .config import Config
from .errors import ContimgError

QA_STATES = db.QA_STATES
"""``pass``, ``fail`` or ``null`` (no verdict possible, e.g. the data were not usable for QA)."""


def login_name() -> str:
    """The analyst by default: the login name of whoever runs the command."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 -- no passwd entry in some containers
        return "unknown"


def recorded_run(cfg: Config, run_id: str) -> dict[str, Any]:
    """The recorded run ``run_id``.

    Raises
    ------
    ValueError
        ``run_id`` is not of the form of a run id.
    KeyError
        No such run is recorded.
    """
    found = db.runs(cfg.database_url, products.check_run_id(run_id))
    if not found:
        raise KeyError(f"unknown run id {run_id}; `contimg runs` lists the runs")
    return found[0]


def write_text_atomically(final: Path, text: str) -> Path:
    """Write ``text`` to ``final`` through a temporary sibling, fsynced, then renamed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = products.temporary_name(final)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def set_verdict(cfg: Config, run_id: str, state: str, *, report: str | Path | None = None,
                analyst: str | None = None) -> dict[str, Any]:
    """Record the QA verdict of a run and show it in the run's weblog.

    Parameters
    ----------
    state : {"pass", "fail", "null"}
        The verdict.
    report : path, optional
        The analyst's report (text). Copied to the run directory as ``qa_report.txt``.
        Without one, a report given with an earlier verdict is kept.
    analyst : str, optional
        Who gives the verdict; default the login name.

    Returns
    -------
    dict
        The recorded verdict (``run_id, state, analyst, at, report, report_path``) and ``weblog``.

    Raises
    ------
    KeyError
        Unknown run id.
    FileNotFoundError
        The report file does not exist.
    ContimgError
        The run's working directory was already deleted by ``contimg cleanup``.
    """
    url = cfg.database_url
    recorded_run(cfg, run_id)
    if state not in QA_STATES:
        raise ValueError(f"QA state {state!r} is not one of {', '.join(QA_STATES)}")
    text = None
    if report is not None:
        src = Path(report)
        if not src.is_file():
            raise FileNotFoundError(f"QA report {src} does not exist; give the path of the report file to --report")
        text = src.read_text(encoding="utf-8", errors="replace")
    cleaned = db.cleanup_of(url, run_id)
    if cleaned is not None:
        # Writing the report and weblog now would recreate a directory the archive does not hold.
        raise ContimgError(f"run {run_id} was cleaned up at {cleaned['cleaned_at']} (its products are in the "
                           "archive); a QA verdict must be given before `contimg cleanup`")
    report_path = None
    if text is not None:
        report_path = write_text_atomically(products.run_file(cfg.paths.products_root, run_id, "qa_report.txt"), text)
    else:
        previous = db.qa(url, run_id) or {}
        text, report_path = previous.get("report"), previous.get("report_path")
    db.set_qa(url, run_id, state=state, analyst=analyst or login_name(), report=text,
              report_path=str(report_path) if report_path else None)
    from .weblog import render_run

    page = render_run(cfg, run_id)
    return {**db.qa(url, run_id), "weblog": str(page)}
