"""The result backend: Celery's Redis backend, with a chord step that outlives a restarting Redis.

The subband tasks store no result of their own (``ignore_result``): each one's
only backend write is the chord step (``on_chord_part_return``), one Lua script
that adds the result to the chord's list and, for the last one, claims and sends
the callback. Celery retries stored results while Redis restarts
(``result_backend_always_retry``) but not this step, so a task ending during the
outage would drop its part and the block's callback would never run. The step is
idempotent (the script keeps the set of parts already counted, keyed by task id),
so it is retried here on connection errors, with backoff, for up to
``RETRY_S`` seconds (tests/test_faults.py::test_redis_restart_mid_night).

Senders that never wait on results (the dispatcher) send inside
:func:`results_not_followed`.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from celery.backends.redis import RedisBackend as _CeleryRedisBackend

log = logging.getLogger(__name__)

RETRY_S = 300.0
"""How long a chord step waits for Redis to come back before giving up (and the task fails)."""


class RedisBackend(_CeleryRedisBackend):
    """Celery's Redis result backend whose chord step is retried while Redis is unreachable,
    and whose sender can send without following the results (:func:`results_not_followed`)."""

    follow_results = True
    """False while :func:`results_not_followed` is in effect (per backend, i.e. per thread)."""

    def add_pending_result(self, result, weak=False, start_drainer=True):
        if not self.follow_results:
            return result
        return super().add_pending_result(result, weak=weak, start_drainer=start_drainer)

    def on_chord_part_return(self, request, state, result, propagate=None, **kwargs):
        deadline, delay = time.monotonic() + RETRY_S, 0.2
        while True:
            try:
                return super().on_chord_part_return(request, state, result, propagate=propagate, **kwargs)
            except self.connection_errors as e:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("chord step of task %s: Redis unreachable (%s); retrying in %.1f s",
                            request.id, e, delay)
                time.sleep(delay)
                delay = min(2 * delay, 5.0)


@contextmanager
def results_not_followed(app):
    """Send tasks without subscribing to their results, inside this block, on this thread.

    Sending a chord makes Celery build result objects that subscribe to the result
    channel of every header task (a ``GroupResult`` and its ready barrier): one
    Redis round trip per subband task, a quarter of the time to send a block's
    chord. The dispatcher never waits on Celery results (the products database
    says when a block ends), so it sends inside this. Outside it, and for a result
    waited on later (``get``), Celery follows results as usual.
    """
    backend = app.backend
    if not isinstance(backend, RedisBackend):  # another backend (tests, eager): nothing to skip
        yield
        return
    before = backend.follow_results
    backend.follow_results = False
    try:
        yield
    finally:
        backend.follow_results = before


def backend_url(broker_url: str) -> str:
    """The ``result_backend`` setting that selects this class for a ``redis://`` (or ``rediss://``)
    URL; an empty URL (no broker configured yet) stays empty."""
    return f"{__name__}:RedisBackend+{broker_url}" if broker_url else broker_url
