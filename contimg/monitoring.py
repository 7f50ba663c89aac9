"""Flower, the Celery monitor, started against the configured broker.

:func:`flower_command` builds the argument list and environment (no shell);
``contimg flower`` executes it in place, so that systemd's signals reach
Flower itself. Flower takes the broker from the same configuration as the
workers (``CONTIMG_CONFIG``), and its credentials from ``FLOWER_BASIC_AUTH``
in its environment, never from its command line, which any user may read.
"""

from __future__ import annotations

import os
import sys

from .config import Config
from .errors import ConfigError


def flower_command(cfg: Config, *, port: int | None = None, address: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The argument list and the environment additions that start Flower for ``cfg``.

    Raises
    ------
    ConfigError
        No broker is configured, or Flower would listen beyond loopback without a password.
    """
    if cfg.local:
        raise ConfigError("broker.url: Flower watches a running broker; set broker.url "
                          "(`contimg run --local` prints the URL of its private one)")
    fl = cfg.flower
    address = address or fl.address
    port = port or fl.port
    if address not in ("127.0.0.1", "localhost", "::1") and not fl.basic_auth:
        raise ConfigError(f"flower.address: {address} is reachable from other machines; set flower.basic_auth "
                          "(user:password, e.g. in CONTIMG_FLOWER__BASIC_AUTH) or listen on 127.0.0.1")
    argv = [sys.executable, "-m", "celery", "-A", "contimg.tasks.app", "flower",
            f"--address={address}", f"--port={port}"]
    if fl.url_prefix:
        argv.append(f"--url_prefix={fl.url_prefix}")
    env = {}
    if cfg.file is not None:
        env["CONTIMG_CONFIG"] = str(cfg.file)
    if fl.basic_auth:
        env["FLOWER_BASIC_AUTH"] = fl.basic_auth
    return argv, env


def exec_flower(cfg: Config, *, port: int | None = None, address: str | None = None) -> None:
    """Replace this process by Flower (does not return)."""
    argv, extra = flower_command(cfg, port=port, address=address)
    env = dict(os.environ, **extra)
    os.execve(argv[0], argv, env)


def node_report(cfg: Config, timeout_s: float = 1.0) -> dict:
    """Each node of the node map: worker answering, tasks waiting in its queue, blocks it images.

    Returns ``{"nodes": [...], "pending_blocks": n}``; the view behind ``contimg nodes``.
    """
    import redis

    from .dispatch import WorkQueue
    from .tasks.app import configure

    if cfg.local:
        raise ConfigError("broker.url: `contimg nodes` asks a running cluster; set broker.url")
    replies = configure(cfg).control.ping(timeout=timeout_s) or []
    live = {name.split("@", 1)[0]: name for r in replies for name in r}
    client = redis.Redis.from_url(cfg.broker.url)
    queue = WorkQueue(client)
    inflight = queue.inflight()
    nodes = []
    for name, n in cfg.nodes.items():
        nodes.append({
            "node": name,
            "up": name in live,
            "worker": live.get(name),
            "queued_tasks": int(client.llen(n.queue)),
            "subbands": list(n.subbands),
            "imaging": n.imaging,
            "blocks_in_flight": sorted(b for b, holder in inflight.items() if holder == name),
        })
    return {"nodes": nodes, "pending_blocks": len(queue.pending())}
