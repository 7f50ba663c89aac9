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
