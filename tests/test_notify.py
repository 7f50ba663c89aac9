"""Notifications (contimg/notify.py) against a real SMTP server (aiosmtpd) and a real HTTP server,
both started by the test on free loopback ports, and the products database on SQLite."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import make_config

from contimg import database as db
from contimg import notify
from contimg.errors import ConfigError
from contimg.submission import new_run_id

DATE = "2025-10-05"
RECIPIENTS = ["ops@example.org", "Night Shift <night@example.org>"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """aiosmtpd handler that keeps every message it is given."""

    def __init__(self):
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"

    def by_key(self, key: str) -> list[tuple[list[str], email.message.EmailMessage]]:
        return [(to, m) for to, m in self.messages if m["X-Contimg-Key"] == key]


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=free_port())
    ctl.start()
    inbox.port = ctl.port
    yield inbox
    ctl.stop()


class Hook:
    """A real HTTP server in a thread that records the JSON bodies POSTed to it."""

    def __init__(self, status: int = 200):
        hook = self
        self.bodies: list[dict] = []
        self.status = status

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers["Content-Length"])
                hook.bodies.append({"path": self.path, "content_type": self.headers["Content-Type"],
                                    "json": json.loads(self.rfile.read(n))})
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0KEN"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def config(tmp_path, smtp=None, hook=None, **kw):
    opts = {}
    if smtp is not None:
        opts.update(notify__smtp_host="127.0.0.1", notify__smtp_port=smtp.port,
                    notify__recipients=json.dumps(RECIPIENTS), notify__sender="contimg@dsa110.example.org")
    if hook is not None:
        opts["notify__webhook_url"] = hook.url
    opts.update(kw)
    return make_config(tmp_path, tmp_path / "data", **opts)


def make_run(cfg, states: dict[str, str], *, kind="night", reasons=None, finished=None) -> str:
    """A run whose blocks (``HH:MM:SS`` on DATE, or a full block id) have these states."""
    url = cfg.database_url
    ids = [k if "T" in k else f"{DATE}T{k}" for k in states]
    run_id = new_run_id(kind)
    time.sleep(0.01)  # distinct submission times order the runs
    db.create_run(url, run_id, kind=kind, selection={"date": DATE}, submitted_by="tester", config_toml="",
                  remap={}, block_ids=ids)
    for bid, st in zip(ids, states.values()):
        final = st in (db.DONE, db.FAILED)
        db.upsert_block(url, bid, state=st, run_id=run_id, data_dir=str(cfg.paths.data_root),
                        reason=(reasons or {}).get(bid[11:]), finished_at=(finished or db.utcnow()) if final else None)
    return run_id


# -- messages --------------------------------------------------------------------------


def test_run_done_email_to_all_recipients_and_webhook(tmp_path, smtp, hook):
    cfg = config(tmp_path, smtp, hook, notify__on='["run_done", "run_failed"]')
    rid = make_run(cfg, {"03:00:00": "done", "03:05:09": "done"})

    handled = [h for h in notify.notify_finished_runs(cfg) if "skipped" not in h["outcome"]]

    assert [(h["key"], h["event"], h["state"]) for h in handled] == [(f"run:{rid}", "run_done", "done")]
    assert handled[0]["outcome"]["email"]["status"] == "sent"
    assert handled[0]["outcome"]["webhook"] == {"status": "sent", "http_status": 200}
    [(to, msg)] = smtp.messages
    assert to == ["ops@example.org", "night@example.org"]
    assert "ops@example.org" in msg["To"] and "night@example.org" in msg["To"]
    assert rid in msg["Subject"] and "done" in msg["Subject"] and "2 of 2 blocks" in msg["Subject"]
    body = msg.get_content()
    link = (cfg.paths.products_root / "runs" / rid / "index.html").as_uri()
    assert link.startswith("file:///") and link in body
    assert rid in body and "2 done, 0 failed, 2 in all" in body
    [posted] = hook.bodies
    assert posted["path"] == "/hooks/T0KEN" and posted["content_type"] == "application/json"
    j = posted["json"]
    assert (j["event"], j["run_id"], j["state"], j["weblog"]) == ("run_done", rid, "done", link)
    assert (j["n_blocks"], j["n_done"], j["n_failed"]) == (2, 2, 0)
    assert rid in j["text"]
    assert db.notifications(cfg.database_url)[0]["outcome"]["email"]["status"] == "sent"


def test_run_with_a_failed_block_is_failed_with_reasons_and_web_link(tmp_path, smtp, hook):
    cfg = config(tmp_path, smtp, hook, notify__weblog_base_url="https://weblogs.example.org/contimg/",
                 notify__on='["run_failed"]')
    rid = make_run(cfg, {"03:00:00": "done", "03:05:09": "failed", "03:10:18": "done"},
                   reasons={"03:05:09": "only 9 of 16 subbands converted (pipeline.min_subbands=12)"})

    [h] = [h for h in notify.notify_finished_runs(cfg) if "skipped" not in h["outcome"]]

    assert (h["event"], h["state"]) == ("run_failed", "failed")
    [(_, msg)] = smtp.messages
    assert f"run {rid} failed (1 of 3 blocks failed, 2 done)" in msg["Subject"]
    body = msg.get_content()
    link = f"https://weblogs.example.org/contimg/runs/{rid}/index.html"
    assert link in body
    assert f"{DATE}T03:05:09  only 9 of 16 subbands converted" in body
    assert f"contimg resubmit --failed --run {rid}" in body
    j = hook.bodies[0]["json"]
    assert (j["state"], j["weblog"], j["n_failed"]) == ("failed", link, 1)
    assert j["failed_blocks"] == [{"block_id": f"{DATE}T03:05:09",
                                   "reason": "only 9 of 16 subbands converted (pipeline.min_subbands=12)"}]


def test_open_run_waits_until_every_block_is_final(tmp_path, smtp):
    cfg = config(tmp_path, smtp)
    rid = make_run(cfg, {"03:00:00": "done", "03:05:09": "imaging"})
    assert notify.notify_finished_runs(cfg) == []
    assert smtp.messages == [] and db.notifications(cfg.database_url) == []
    db.upsert_block(cfg.database_url, f"{DATE}T03:05:09", state="done", finished_at=db.utcnow())
    keys = [h["key"] for h in notify.notify_finished_runs(cfg)]
    assert keys == [f"run:{rid}", f"night:{DATE}"]
    assert len(smtp.by_key(f"run:{rid}")) == 1 and len(smtp.by_key(f"night:{DATE}")) == 1


def test_night_event_covers_its_runs_and_waits_for_the_date_to_end(tmp_path, smtp, hook):
    cfg = config(tmp_path, smtp, hook, notify__on='["night_done", "night_failed"]')
    url = cfg.database_url
    first = make_run(cfg, {"03:00:00": "done", "03:05:09": "failed", "03:10:18": "done"},
                     reasons={"03:05:09": "lease expired 3 times"})
    # the failed block resubmitted and done; an LST run across midnight adds a block of the next day
    again = make_run(cfg, {"03:05:09": "done"}, kind="resubmit")
    lst = make_run(cfg, {"23:55:00": "done", "2025-10-06T00:00:09": "done"}, kind="lst")
    today = db.utcnow().strftime("%Y-%m-%d")
    make_run(cfg, {f"{today}T00:00:01": "done"})  # today has not ended: no night event yet

    handled = [h for h in notify.notify_finished_runs(cfg) if "skipped" not in h["outcome"]]

    assert {(h["key"], h["event"]) for h in handled} == {(f"night:{DATE}", "night_done"),
                                                         ("night:2025-10-06", "night_done")}
    [(to, msg)] = smtp.by_key(f"night:{DATE}")
    assert to == ["ops@example.org", "night@example.org"]
    assert f"night {DATE} done (4 of 4 blocks)" in msg["Subject"]
    body = msg.get_content()
    assert (cfg.paths.products_root / "nights" / DATE / "index.html").as_uri() in body
    for rid in (first, again, lst):  # first still holds two of the night's blocks
        assert rid in body and (cfg.paths.products_root / "runs" / rid / "index.html").as_uri() in body
    j = next(b["json"] for b in hook.bodies if b["json"]["key"] == f"night:{DATE}")
    assert (j["date"], j["state"], j["n_blocks"], j["n_done"]) == (DATE, "done", 4, 4)
    assert j["run_ids"] == [first, again, lst]
    assert f"night:{today}" not in {n["key"] for n in db.notifications(url)}
    # every run was handled (skipped: not in notify.on), so nothing is left to do
    assert notify.notify_finished_runs(cfg) == []
    skipped = [n["outcome"]["skipped"] for n in db.notifications(url) if n["key"].startswith("run:")]
    assert len(skipped) == 4 and all("not in notify.on" in s for s in skipped)


def test_night_event_function_refuses_an_open_night(tmp_path):
    cfg = config(tmp_path)
    rid = make_run(cfg, {"03:00:00": "done", "03:05:09": "queued"})
    with pytest.raises(ValueError, match="1 of 2 blocks open"):
        notify.night_event(cfg, DATE, db.night_runs(cfg.database_url, DATE))
    with pytest.raises(ValueError, match=f"run {rid} is not finished"):
        notify.run_event(cfg, db.unnotified_runs(cfg.database_url)[0])


# -- once only --------------------------------------------------------------------------


def test_run_notified_once_across_passes_and_concurrent_callers(tmp_path, smtp, hook):
    cfg = config(tmp_path, smtp, hook)
    runs = [make_run(cfg, {f"0{i}:00:00": "done", f"0{i}:05:09": "failed"}) for i in range(1, 4)]

    barrier = threading.Barrier(2)
    results: list[list[dict]] = [[], []]
    errors = []

    def pass_(i):
        try:
            barrier.wait(timeout=10)
            results[i] = notify.notify_finished_runs(cfg)
        except Exception as e:  # pragma: no cover - shown by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=pass_, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    keys = [h["key"] for r in results for h in r]
    expected = {f"run:{r}" for r in runs} | {f"night:{DATE}"}
    assert sorted(keys) == sorted(expected), "each event handled by exactly one of the two callers"
    assert notify.notify_finished_runs(cfg) == []  # and a third pass finds nothing
    for key in expected:
        assert len(smtp.by_key(key)) == 1, key
        assert sum(b["json"]["key"] == key for b in hook.bodies) == 1, key
    assert len(smtp.messages) == 4 and len(hook.bodies) == 4
    assert sorted(n["key"] for n in db.notifications(cfg.database_url)) == sorted(expected)


def test_claim_notification_is_atomic(tmp_path):
    url = config(tmp_path).database_url
    assert db.claim_notification(url, "run:x") is True
    assert db.claim_notification(url, "run:x") is False
    db.record_notification(url, "run:x", {"email": {"status": "sent"}})
    [n] = db.notifications(url, ["run:x"])
    assert n["outcome"] == {"email": {"status": "sent"}} and n["sent_at"] is not None


def test_old_and_empty_runs_are_recorded_as_skipped_not_sent(tmp_path, smtp):
    cfg = config(tmp_path, smtp, notify__max_age_h=24)
    old = make_run(cfg, {"03:00:00": "done"}, finished=db.utcnow() - timedelta(days=3))
    empty = make_run(cfg, {})
    handled = notify.notify_finished_runs(cfg)
    assert smtp.messages == []
    outcomes = {n["key"]: n["outcome"] for n in db.notifications(cfg.database_url)}
    assert "notify.max_age_h=24 h" in outcomes[f"run:{old}"]["skipped"]
    assert "notify.max_age_h=24 h" in outcomes[f"night:{DATE}"]["skipped"]
    assert outcomes[f"run:{empty}"] == {"skipped": "the run has no blocks"}
    assert {h["key"] for h in handled} == {f"run:{old}", f"night:{DATE}"}


def test_nothing_happens_when_no_channel_is_configured(tmp_path):
    cfg = config(tmp_path)
    make_run(cfg, {"03:00:00": "done"})
    assert not notify.enabled(cfg)
    assert notify.notify_finished_runs(cfg) == []
    assert db.notifications(cfg.database_url) == []


# -- failures to send ---------------------------------------------------------------


def test_unreachable_smtp_and_webhook_are_logged_returned_and_never_raised(tmp_path, caplog):
    closed = free_port()  # nothing listens there
    cfg = config(tmp_path, notify__smtp_host="127.0.0.1", notify__smtp_port=closed,
                 notify__recipients='["ops@example.org"]', notify__webhook_url=f"http://127.0.0.1:{closed}/T0KEN",
                 notify__smtp_timeout_s=2, notify__webhook_timeout_s=2)
    rid = make_run(cfg, {"03:00:00": "done", "03:05:09": "failed"})

    with caplog.at_level(logging.WARNING, logger="contimg.notify"):
        handled = notify.notify_finished_runs(cfg)

    h = next(h for h in handled if h["key"] == f"run:{rid}")
    assert h["outcome"]["email"]["status"] == "failed"
    assert "ConnectionRefusedError" in h["outcome"]["email"]["reason"]
    assert h["outcome"]["webhook"]["status"] == "failed"
    assert "Connection refused" in h["outcome"]["webhook"]["reason"]
    logged = [r.getMessage() for r in caplog.records]
    assert any(f"run:{rid}" in m and "by email" in m and "ConnectionRefusedError" in m for m in logged)
    assert any(f"run:{rid}" in m and "by webhook" in m and "refused" in m for m in logged)
    assert not any("T0KEN" in m for m in logged), "the webhook's path (a token) must not be logged"
    # the failure is recorded with the key, the run is untouched and not sent again
    outcome = {n["key"]: n["outcome"] for n in db.notifications(cfg.database_url)}[f"run:{rid}"]
    assert outcome["email"]["status"] == "failed"
    assert db.runs(cfg.database_url, rid)[0]["states"] == {"done": 1, "failed": 1}
    assert notify.notify_finished_runs(cfg) == []


def test_silent_smtp_server_times_out_and_webhook_error_status_fails(tmp_path, caplog):
    silent = socket.socket()  # accepts connections (backlog) but never greets
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    hook = Hook(status=500)
    try:
        cfg = config(tmp_path, notify__smtp_host="127.0.0.1", notify__smtp_port=silent.getsockname()[1],
                     notify__recipients='["ops@example.org"]', notify__smtp_timeout_s=1, notify__webhook_url=hook.url)
        ev = notify.run_event(cfg, {"run_id": new_run_id("night"), "kind": "night", "selection": {}, "blocks": [
            {"block_id": f"{DATE}T03:00:00", "state": "done", "reason": None, "finished_at": None}]})
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="contimg.notify"):
            out = notify.notify(cfg, ev)
        assert time.monotonic() - t0 < 10
    finally:
        silent.close()
        hook.close()
    assert out["email"]["status"] == "failed" and "timed out" in out["email"]["reason"].lower()
    assert out["webhook"] == {"status": "failed", "reason": "HTTPError: HTTP Error 500: Internal Server Error"}
    assert len(hook.bodies) == 1  # it was reached; its answer was an error
    assert sum("failed" in r.getMessage() for r in caplog.records) == 2


def test_dispatcher_notify_is_rate_limited_and_never_raises(tmp_path, smtp, caplog):
    from contimg.pipeline import Dispatcher

    cfg = config(tmp_path, smtp, broker__url="redis://127.0.0.1:1/0", notify__check_s=3600,
                 notify__on='["run_done", "run_failed"]')
    disp = Dispatcher(cfg)  # the Redis client connects lazily; notify() does not use it
    rid = make_run(cfg, {"03:00:00": "done"})
    assert f"notified run:{rid} (run_done): email sent, webhook off" in disp.notify()
    rid2 = make_run(cfg, {"04:00:00": "done"})
    assert disp.notify() == []  # within notify.check_s: no pass
    events = disp.notify(force=True)  # also the finished runs' weblogs, written before notifying
    assert [e for e in events if e.startswith("notified")] == [f"notified run:{rid2} (run_done): email sent, webhook off"]
    assert any(e.startswith("weblog ") and rid2 in e for e in events)
    assert len(smtp.messages) == 2
    # a broken products database is logged, not raised
    (tmp_path / "not-a-dir").write_text("")
    cfg.database.url = f"sqlite:///{tmp_path / 'not-a-dir' / 'x.sqlite'}"
    with caplog.at_level(logging.ERROR, logger="contimg.pipeline"):
        assert disp.notify(force=True) == []
    assert any("notification pass failed" in r.getMessage() for r in caplog.records)


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize("values, key", [
    ({"notify__recipients": '["not-an-address"]'}, "notify.recipients"),
    ({"notify__recipients": '["ops@example.org, boss@example.org"]'}, "notify.recipients"),
    ({"notify__smtp_host": "smtp.example.org", "notify__recipients": '["ops@example.org"]',
      "notify__sender": "contimg"}, "notify.sender"),
    ({"notify__smtp_host": "smtp.example.org"}, "notify.recipients"),
    ({"notify__smtp_host": "smtp://smtp.example.org"}, "notify.smtp_host"),
    ({"notify__smtp_port": 70000}, "notify.smtp_port"),
    ({"notify__smtp_host": "smtp.example.org", "notify__recipients": '["ops@example.org"]',
      "notify__smtp_user": "contimg", "notify__smtp_password": "pw"}, "notify.smtp_starttls"),
    ({"notify__smtp_password": "pw"}, "notify.smtp_user"),
    ({"notify__webhook_url": "ftp://hooks.example.org/x"}, "notify.webhook_url"),
    ({"notify__webhook_url": "file:///etc/passwd"}, "notify.webhook_url"),
    ({"notify__webhook_url": "https:///no-host"}, "notify.webhook_url"),
    ({"notify__weblog_base_url": "javascript:alert(1)"}, "notify.weblog_base_url"),
    ({"notify__on": '["run_started"]'}, "notify.on"),
    ({"notify__webhook_timeout_s": 0}, "notify.webhook_timeout_s"),
    ({"notify__check_s": -1}, "notify.check_s"),
    ({"notify__max_age_h": 0}, "notify.max_age_h"),
])
def test_bad_values_are_rejected_naming_the_key(tmp_path, values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config(tmp_path, tmp_path / "data", **values)


def test_header_injection_in_an_address_is_rejected():
    from contimg.config import NotifyConfig, validate_notify

    with pytest.raises(ConfigError, match="notify.recipients"):
        validate_notify(NotifyConfig(recipients=["ops@example.org\nBcc: everyone@example.org"]))


def test_good_values_load_and_secrets_are_redacted(tmp_path):
    from contimg.cli import _redact
    from contimg.submission import _run_config_toml

    cfg = make_config(tmp_path, tmp_path / "data", notify__smtp_host="smtp.example.org", notify__smtp_port=587,
                      notify__smtp_starttls=True, notify__smtp_user="contimg", notify__smtp_password="s3cr3t-pw",
                      notify__recipients=json.dumps(RECIPIENTS), notify__webhook_url="https://hooks.example.org/T0KEN",
                      notify__weblog_base_url="https://weblogs.example.org")
    assert cfg.notify.recipients == RECIPIENTS and cfg.notify.smtp_starttls is True
    assert cfg.source["notify.smtp_password"] == "env:CONTIMG_NOTIFY__SMTP_PASSWORD"
    text = _run_config_toml(cfg)
    assert "s3cr3t-pw" not in text and "T0KEN" not in text
    assert 'webhook_url = "https://hooks.example.org/***"' in text
    assert _redact("notify.smtp_password", "s3cr3t-pw") == "***"
    assert "T0KEN" not in _redact("notify.webhook_url", "https://hooks.example.org/T0KEN")


# -- end to end --------------------------------------------------------------------


@pytest.mark.slow
def test_a_night_on_a_real_cluster_sends_one_email_per_run_and_night(tmp_path, smtp, hook):
    """No-op stage set on a private cluster: `submit night` then `pipeline.wait` (whose dispatcher
    notifies); one block misses its subbands and fails, so run and night are failed, once each."""
    from contimg.cluster import LocalCluster
    from contimg.noop import write_night
    from contimg.pipeline import wait
    from contimg.submission import select_night, submit_selection

    ids = write_night(tmp_path / "data" / DATE, DATE, 3, skip=[(1, sb) for sb in range(8)])
    cfg = config(tmp_path, smtp, hook, stage_set="noop", noop_seconds=0.1, dispatch__node_check_s=0,
                 notify__check_s=60)
    with LocalCluster(cfg, tmp_path / "cluster") as cl:
        res = submit_selection(cl.config, select_night(cl.config, DATE))
        recs = wait(cl.config, [s.block_id for s in res.submitted], timeout_s=300)
        assert [r["state"] for r in recs] == ["done", "failed", "done"]
    assert [m["X-Contimg-Key"] for _, m in smtp.messages] == [f"run:{res.run_id}", f"night:{DATE}"]
    [(to, msg)] = smtp.by_key(f"run:{res.run_id}")
    assert to == ["ops@example.org", "night@example.org"]
    assert f"run {res.run_id} failed (1 of 3 blocks failed, 2 done)" in msg["Subject"]
    assert ids[1] in msg.get_content()
    assert sorted(b["json"]["event"] for b in hook.bodies) == ["night_failed", "run_failed"]
