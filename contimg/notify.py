"""Notifications: an email and a webhook when a run or a night finishes.

Celery-free: the dispatcher calls :func:`notify_finished_runs` every
``notify.check_s`` seconds (``contimg/pipeline.py``); anything else may too.

What counts as finished
-----------------------
- A **run** is finished when every one of its blocks is ``done`` or ``failed``.
  Its state is ``done`` when every block is done, and ``failed`` when at least
  one block failed: the run went to its end but completed with failures, and
  the message says how many of how many blocks failed, and why each did. A run
  with no blocks is never sent.
- A **night** (UTC date D) is finished when every block of D that a run
  submitted is done or failed *and* the date D has ended, so that a night
  submitted block by block as its data arrive is not declared finished after
  its first block. Its state is ``done`` or ``failed`` as for a run, over the
  night's blocks; its runs are the runs that last submitted them.

Once only, never in the way
---------------------------
Before sending, a process claims the event's key (``run:{run_id}``,
``night:{date}``) in the ``notifications`` table with one atomic insert; a
second dispatcher, or a second pass, finds the key taken and sends nothing.
So an event is sent at most once: a process killed between claim and send
loses it, and a failed send is not retried. What came of each channel is
recorded with the key. :func:`notify` never raises: a failure to send is
logged with its reason and returned, and never fails a block or a run.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from . import database as db
from . import products
from .config import Config

log = logging.getLogger(__name__)

MAX_LISTED = 50
"""Failed blocks listed by name and reason in one message; the counts always cover them all."""
FINAL = (db.DONE, db.FAILED)


@dataclass(frozen=True)
class Event:
    """One notification, ready for every channel."""

    key: str
    """``run:{run_id}`` or ``night:{date}``: the event is sent once per key."""
    name: str
    """``run_done``, ``run_failed``, ``night_done`` or ``night_failed`` (what ``notify.on`` selects)."""
    state: str
    """``done`` (every block done) or ``failed`` (at least one block failed)."""
    subject: str
    """The email subject: the run id or date, the state and the counts."""
    text: str
    """The email body: the same, the weblog link, each failed block's reason and what to do next."""
    payload: dict[str, Any] = field(default_factory=dict)
    """The webhook's JSON body (``text`` holds subject and link for chat services)."""


# -- building events ----------------------------------------------------------------


def is_finished(blocks: list[dict]) -> bool:
    """Every block done or failed (and at least one block)."""
    return bool(blocks) and all(b["state"] in FINAL for b in blocks)


def _counts(blocks: list[dict]) -> tuple[int, int, int]:
    n_done = sum(b["state"] == db.DONE for b in blocks)
    n_failed = sum(b["state"] == db.FAILED for b in blocks)
    return len(blocks), n_done, n_failed


def _verdict(n: int, n_done: int, n_failed: int) -> str:
    if n_failed == 0:
        return f"done ({n_done} of {n} blocks)"
    return f"failed ({n_failed} of {n} blocks failed, {n_done} done)"


def _finished_at(blocks: list[dict]) -> str | None:
    times = [b["finished_at"] for b in blocks if b.get("finished_at")]
    return max(times) if times else None


def _link(cfg: Config, path: Path) -> str:
    """``notify.weblog_base_url`` stands for ``paths.products_root``; without it, a file:// URI."""
    base = cfg.notify.weblog_base_url.rstrip("/")
    if not base:
        return path.as_uri()
    return f"{base}/{quote(path.relative_to(cfg.paths.products_root).as_posix())}"


def run_weblog_link(cfg: Config, run_id: str) -> str | None:
    """Link to a run's weblog (``products.run_weblog``); None for an id that is not a run id."""
    try:
        return _link(cfg, products.run_weblog(cfg.paths.products_root, run_id))
    except ValueError:
        return None


def night_weblog_link(cfg: Config, date: str) -> str | None:
    """Link to a night's weblog (``products.night_weblog``)."""
    try:
        return _link(cfg, products.night_weblog(cfg.paths.products_root, date))
    except ValueError:
        return None


def _failed_lines(failed: list[dict]) -> list[str]:
    lines = [f"  {b['block_id']}  {b.get('reason') or '(no reason recorded)'}" for b in failed[:MAX_LISTED]]
    if len(failed) > MAX_LISTED:
        lines.append(f"  ... and {len(failed) - MAX_LISTED} more (contimg status shows them all)")
    return lines


def run_event(cfg: Config, run: dict) -> Event:
    """The notification of a finished run.

    Parameters
    ----------
    cfg : Config
        For the weblog link (``notify.weblog_base_url``, ``paths.products_root``).
    run : dict
        A run record with its blocks (:func:`contimg.database.unnotified_runs`).

    Raises
    ------
    ValueError
        When a block of the run is still open.
    """
    rid, blocks = run["run_id"], run["blocks"]
    if not is_finished(blocks):
        open_ = [b["block_id"] for b in blocks if b["state"] not in FINAL]
        raise ValueError(f"run {rid} is not finished: {len(open_)} of {len(blocks)} blocks open")
    n, n_done, n_failed = _counts(blocks)
    state = db.FAILED if n_failed else db.DONE
    failed = [b for b in blocks if b["state"] == db.FAILED]
    weblog = run_weblog_link(cfg, rid)
    finished = _finished_at(blocks)
    subject = f"[contimg] run {rid} {_verdict(n, n_done, n_failed)}"
    text = [f"Run {rid} finished: {_verdict(n, n_done, n_failed)}.", "",
            f"what:      {run['kind']} {json.dumps(run.get('selection') or {}, sort_keys=True)}",
            f"submitted: {run.get('submitted_at')} by {run.get('submitted_by')}",
            f"finished:  {finished}",
            f"blocks:    {n_done} done, {n_failed} failed, {n} in all",
            f"weblog:    {weblog or '(none)'}"]
    if failed:
        text += ["", "Failed blocks:", *_failed_lines(failed), "",
                 f"Next: contimg status --run {rid}; contimg resubmit --failed --run {rid}"]
    payload = {
        "event": f"run_{state}", "key": f"run:{rid}", "kind": "run", "run_id": rid, "run_kind": run["kind"],
        "selection": run.get("selection") or {}, "state": state, "n_blocks": n, "n_done": n_done,
        "n_failed": n_failed, "submitted_by": run.get("submitted_by"), "submitted_at": run.get("submitted_at"),
        "finished_at": finished, "weblog": weblog,
        "failed_blocks": [{"block_id": b["block_id"], "reason": b.get("reason")} for b in failed[:MAX_LISTED]],
        "text": f"{subject}\n{weblog or ''}".strip(),
    }
    return Event(f"run:{rid}", f"run_{state}", state, subject, "\n".join(text) + "\n", payload)


def night_event(cfg: Config, date: str, runs: list[dict]) -> Event:
    """The notification of a finished night: the blocks of UTC date ``date`` in ``runs``.

    ``runs`` are run records with their blocks (:func:`contimg.database.night_runs`);
    blocks of other dates in them (an LST run across midnight) are left out, and a
    block in several runs (resubmitted) counts once, with its current state.

    Raises
    ------
    ValueError
        When a block of the night is still open, or there is none.
    """
    blocks = list({b["block_id"]: b for r in runs for b in r["blocks"] if b["block_id"][:10] == date}.values())
    blocks.sort(key=lambda b: b["block_id"])
    if not is_finished(blocks):
        raise ValueError(f"night {date} is not finished: "
                         f"{sum(b['state'] not in FINAL for b in blocks)} of {len(blocks)} blocks open")
    n, n_done, n_failed = _counts(blocks)
    state = db.FAILED if n_failed else db.DONE
    failed = [b for b in blocks if b["state"] == db.FAILED]
    weblog = night_weblog_link(cfg, date)
    finished = _finished_at(blocks)
    run_rows = []
    for r in runs:
        rn, rd, rf = _counts([b for b in r["blocks"] if b["block_id"][:10] == date])
        run_rows.append({"run_id": r["run_id"], "kind": r["kind"], "n_blocks": rn, "n_done": rd, "n_failed": rf,
                         "weblog": run_weblog_link(cfg, r["run_id"])})
    subject = f"[contimg] night {date} {_verdict(n, n_done, n_failed)}"
    text = [f"Night {date} finished: {_verdict(n, n_done, n_failed)}.", "",
            f"blocks:    {n_done} done, {n_failed} failed, {n} in all, from {len(runs)} run(s)",
            f"finished:  {finished}",
            f"weblog:    {weblog or '(none)'}", "", "Runs:"]
    text += [f"  {r['run_id']}  {r['kind']:<9} {r['n_done']}/{r['n_blocks']} done  {r['weblog'] or ''}".rstrip()
             for r in run_rows]
    if failed:
        text += ["", "Failed blocks:", *_failed_lines(failed), "",
                 "Next: contimg status --state failed; contimg resubmit --failed --run RUN_ID"]
    payload = {
        "event": f"night_{state}", "key": f"night:{date}", "kind": "night", "date": date, "state": state,
        "n_blocks": n, "n_done": n_done, "n_failed": n_failed, "finished_at": finished, "weblog": weblog,
        "runs": run_rows, "run_ids": [r["run_id"] for r in run_rows],
        "failed_blocks": [{"block_id": b["block_id"], "reason": b.get("reason")} for b in failed[:MAX_LISTED]],
        "text": f"{subject}\n{weblog or ''}".strip(),
    }
    return Event(f"night:{date}", f"night_{state}", state, subject, "\n".join(text) + "\n", payload)


# -- channels -----------------------------------------------------------------------


def email_message(cfg: Config, event: Event) -> EmailMessage:
    """The email of an event, to every ``notify.recipients``."""
    nt = cfg.notify
    msg = EmailMessage()
    msg["Subject"] = event.subject
    msg["From"] = nt.sender
    msg["To"] = ", ".join(nt.recipients)
    msg["Date"] = formatdate(usegmt=True)
    # the sender's domain, not socket.getfqdn(), which can block on a slow resolver
    msg["Message-ID"] = make_msgid("contimg", domain=parseaddr(nt.sender)[1].rpartition("@")[2] or "localhost")
    msg["X-Contimg-Event"] = event.name
    msg["X-Contimg-Key"] = event.key
    msg.set_content(event.text)
    return msg


def send_email(cfg: Config, event: Event) -> dict[str, Any]:
    """Send the event's email through ``notify.smtp_host``; raises on failure (:func:`notify` catches).

    STARTTLS (certificate checked) when ``notify.smtp_starttls``, login when
    ``notify.smtp_user``; every socket operation times out after
    ``notify.smtp_timeout_s``. Returns ``{"status": "sent", "to": [...]}`` plus
    ``refused`` (address -> server's answer) when the server took some
    recipients only.
    """
    nt = cfg.notify
    to = [parseaddr(r)[1] for r in nt.recipients]
    with smtplib.SMTP(nt.smtp_host, nt.smtp_port, timeout=nt.smtp_timeout_s) as smtp:
        if nt.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
        if nt.smtp_user:
            smtp.login(nt.smtp_user, nt.smtp_password)
        refused = smtp.send_message(email_message(cfg, event), from_addr=parseaddr(nt.sender)[1], to_addrs=to)
    out: dict[str, Any] = {"status": "sent", "to": [a for a in to if a not in refused]}
    if refused:
        out["refused"] = {a: f"{code} {msg.decode(errors='replace')}" for a, (code, msg) in refused.items()}
    return out


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook answers 2xx; a redirect is an error (and would drop the POST body)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def post_webhook(cfg: Config, event: Event) -> dict[str, Any]:
    """POST the event's payload as JSON to ``notify.webhook_url``; raises on failure (:func:`notify` catches).

    http and https only; a redirect or a non-2xx answer is a failure; the
    request times out after ``notify.webhook_timeout_s``.
    """
    url = cfg.notify.webhook_url
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"notify.webhook_url: scheme {urlsplit(url).scheme!r} is not http or https")
    req = urllib.request.Request(url, data=json.dumps(event.payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "contimg-notify"})
    with urllib.request.build_opener(_NoRedirect).open(req, timeout=cfg.notify.webhook_timeout_s) as resp:
        return {"status": "sent", "http_status": resp.status}


def _where(cfg: Config, channel: str) -> str:
    nt = cfg.notify
    if channel == "email":
        return f"{nt.smtp_host}:{nt.smtp_port}"
    return urlsplit(nt.webhook_url).netloc.rpartition("@")[2]  # never the path: it may hold a token


def notify(cfg: Config, event: Event) -> dict[str, dict[str, Any]]:
    """Send an event by email and webhook; never raises.

    Returns, per channel (``email``, ``webhook``), ``{"status": "sent", ...}``,
    ``{"status": "failed", "reason": ...}`` (also logged as a warning) or
    ``{"status": "off"}`` when the channel is not configured.
    """
    nt = cfg.notify
    out: dict[str, dict[str, Any]] = {}
    for channel, on, send in (("email", bool(nt.smtp_host), send_email),
                              ("webhook", bool(nt.webhook_url), post_webhook)):
        if not on:
            out[channel] = {"status": "off"}
            continue
        try:
            out[channel] = send(cfg, event)
            log.info("notified %s (%s) by %s via %s", event.key, event.name, channel, _where(cfg, channel))
        except Exception as e:  # any failure to send is reported, never raised: the run is unaffected
            reason = f"{type(e).__name__}: {e}"
            out[channel] = {"status": "failed", "reason": reason}
            log.warning("notification %s (%s) by %s via %s failed: %s; the run itself is unaffected",
                        event.key, event.name, channel, _where(cfg, channel), reason)
    return out


# -- finding what to send -----------------------------------------------------------


def enabled(cfg: Config) -> bool:
    """Whether any channel is configured."""
    return bool(cfg.notify.smtp_host or cfg.notify.webhook_url)


def _night_ended(date: str, now: datetime) -> bool:
    try:
        return now >= datetime.strptime(date, "%Y-%m-%d") + timedelta(days=1)
    except ValueError:
        return False


def _send_once(cfg: Config, event: Event, horizon: datetime) -> dict[str, Any] | None:
    """Claim the event's key and send it (or record why not); None when another process has it."""
    url, nt = cfg.database_url, cfg.notify
    finished = event.payload.get("finished_at")
    skipped = None
    if event.name not in nt.on:
        skipped = f"{event.name} is not in notify.on"
    elif finished and db.parse_iso(finished) < horizon:
        skipped = f"finished at {finished}, more than notify.max_age_h={nt.max_age_h:g} h ago"
    if not db.claim_notification(url, event.key):
        return None
    outcome = {"skipped": skipped} if skipped else notify(cfg, event)
    db.record_notification(url, event.key, outcome)
    return {"key": event.key, "event": event.name, "state": event.state, "outcome": outcome}


def notify_finished_runs(cfg: Config, now: datetime | None = None) -> list[dict[str, Any]]:
    """Send the notifications of runs and nights that finished and were not notified yet.

    Each key is claimed atomically before sending, so concurrent callers
    (several dispatchers) send each event once. Events not selected by
    ``notify.on``, older than ``notify.max_age_h``, or of a run without blocks
    are recorded as skipped. Returns what was handled in this pass:
    ``{"key", "event", "state", "outcome"}`` each. Does nothing when no
    channel is configured. Sending never raises (:func:`notify`); a database
    error does.
    """
    if not enabled(cfg):
        return []
    url = cfg.database_url
    now = now or db.utcnow()
    horizon = now - timedelta(hours=cfg.notify.max_age_h)
    handled = []
    for run in db.unnotified_runs(url):
        if not run["blocks"]:
            if db.claim_notification(url, f"run:{run['run_id']}"):
                db.record_notification(url, f"run:{run['run_id']}", {"skipped": "the run has no blocks"})
            continue
        if is_finished(run["blocks"]):
            done = _send_once(cfg, run_event(cfg, run), horizon)
            if done:
                handled.append(done)
    for date in db.unnotified_nights(url):
        if not _night_ended(date, now):
            continue
        runs = db.night_runs(url, date)
        blocks = [b for r in runs for b in r["blocks"] if b["block_id"][:10] == date]
        if is_finished(blocks):
            done = _send_once(cfg, night_event(cfg, date, runs), horizon)
            if done:
                handled.append(done)
    return handled


def describe(handled: dict[str, Any]) -> str:
    """One line for the dispatcher's log: ``notified run:ID (run_failed): email sent, webhook failed (reason)``."""
    outcome = handled["outcome"]
    if "skipped" in outcome:
        what = f"skipped: {outcome['skipped']}"
    else:
        what = ", ".join(f"{ch} {o['status']}" + (f" ({o['reason']})" if o.get("reason") else "")
                         for ch, o in outcome.items())
    return f"notified {handled['key']} ({handled['event']}): {what}"
