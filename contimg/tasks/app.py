"""The Celery application of contimg.

Configured from the one configuration (:mod:`contimg.config`) with the
settings FIELD-NOTES §4 asks for: JSON only, late acknowledgement with
rejection on a lost worker, prefetch 1, a visibility timeout above the longest
task and results that outlive any chord wait. One queue per node.

The plain celery command line works too, with the configuration named by
``CONTIMG_CONFIG``::

    CONTIMG_CONFIG=/etc/contimg.toml celery -A contimg.tasks.app worker \\
        -Q node1 -n node1@%h --concurrency 1 --prefetch-multiplier 1
"""

from __future__ import annotations

import logging

from celery import Celery

from .. import config as _config
from .backend import backend_url

log = logging.getLogger(__name__)

app = Celery("contimg", include=["contimg.tasks.subband", "contimg.tasks.block", "contimg.tasks.night"])
_current: _config.Config | None = None
_queue = None


def celery_settings(cfg: _config.Config) -> dict:
    """The Celery settings derived from a configuration."""
    b = cfg.broker
    return dict(
        broker_url=b.url,
        result_backend=backend_url(b.url),  # Celery's Redis backend, chord step retried (backend.py)
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": b.visibility_timeout_s},
        result_backend_transport_options={"visibility_timeout": b.visibility_timeout_s},
        result_expires=b.result_expires_s,
        task_time_limit=b.task_time_limit_s,
        task_soft_time_limit=soft_time_limit_s(cfg),
        task_track_started=False,  # the products database and the task events (Flower) say it; one backend write less per task
        task_default_queue="contimg-unrouted",  # every task is routed; a message here is a bug
        worker_max_memory_per_child=b.worker_max_memory_mb * 1024,  # KiB; CASA-heavy processes grow slowly
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a restarting Redis must not end the worker
        # A message sent while Redis restarts waits for it (about 2 min at most) instead of
        # failing: a chord cut in half by an outage would leave its block unfinished until
        # its lease expired (tests/test_faults.py::test_redis_restart_mid_night).
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 60, "interval_start": 0.2, "interval_step": 0.5,
                                   "interval_max": 2.0},
        result_backend_always_retry=True,  # results and chord counters survive a Redis restart
        result_backend_max_retries=30,
        worker_hijack_root_logger=False,
        worker_disable_rate_limits=True,  # no task has a rate limit; skips the check per message
        worker_send_task_events=b.task_events,  # Flower
        task_send_sent_event=b.task_events and b.task_sent_events,
    )


TASK_LINE_LOGGERS = ("celery.app.trace", "celery.worker.strategy")
"""Celery's loggers of the per-task lines: "succeeded"/"retry" (in the pool process) and "received"."""


def quiet_task_lines(quiet: bool) -> None:
    """Keep Celery's per-task INFO lines out of the worker log (``broker.log_task_lines``).

    Celery decides once, when a worker builds its task tracers and message
    strategies, whether these loggers log at INFO; the configuration is applied
    on import (``_configure_on_import``), before that.
    """
    for name in TASK_LINE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)


def soft_time_limit_s(cfg: _config.Config) -> int:
    """The soft limit raises in the task, 30 s (or half the limit) before the hard limit kills it."""
    hard = int(cfg.broker.task_time_limit_s)
    return max(1, hard // 2 if hard < 60 else hard - 30)


def configure(cfg: _config.Config) -> Celery:
    """Configure the app for ``cfg`` (call before sending or consuming tasks).

    Moving to another broker (a new private cluster in the same process) drops
    the connections, producer pool and result backend bound to the old one.
    """
    global _current, _queue
    if _current is not None and _current.broker.url != cfg.broker.url:
        app.close()  # the broker connection pool and its producers
        app._local.__dict__.pop("backend", None)  # the per-thread result backend
        for cached in ("control", "amqp"):  # the mailbox and producer pool keep the old connection
            app.__dict__.pop(cached, None)
        _queue = None
    _current = cfg
    settings = celery_settings(cfg)
    app.conf.update(settings)
    quiet_task_lines(not cfg.broker.log_task_lines)
    # Tasks bound earlier keep the limits they were bound with, and senders put those in the
    # messages: a process that moves to another configuration must update them.
    for task in app.tasks.values():
        if task.name.startswith("contimg."):
            task.time_limit = settings["task_time_limit"]
            task.soft_time_limit = settings["task_soft_time_limit"]
            task._exec_options = None  # Celery caches the send options, limits included
    return app


def current_config() -> _config.Config:
    """The configuration this process was configured with (loaded on first use)."""
    if _current is None:
        configure(_config.load())
    assert _current is not None
    return _current


def work_queue():
    """The dispatch work queue on this process's broker (one client per process)."""
    global _queue
    if _queue is None:
        from ..dispatch import WorkQueue

        _queue = WorkQueue.from_url(current_config().broker.url, patient=True)  # a restarting Redis
    return _queue


def lease_holds(block_id: str, token: str | None) -> bool:
    """Renew the block's lease; False when this task's token is stale.

    A task sent without a token (a chord built outside the dispatcher) always
    proceeds. A stale token means the block's lease expired and the block was
    handed out again: this copy must not touch its products.
    """
    if token is None:
        return True
    return work_queue().renew(block_id, token, current_config().dispatch.lease_s)


def _configure_on_import() -> None:
    # `celery -A contimg.tasks.app` imports this module: take the configuration
    # from CONTIMG_CONFIG / ./contimg.toml / the environment then.
    try:
        cfg = _config.load()
    except _config.ConfigError as e:
        log.error("%s", e)
        raise
    if cfg.broker.url:
        configure(cfg)


_configure_on_import()
