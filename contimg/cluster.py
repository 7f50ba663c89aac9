"""A private local cluster: a redis-server and one worker process per node.

Used by ``contimg run --local`` (the default when no broker is configured),
the demo and the tests. Every process it starts is in its own session, gets
SIGTERM if this process dies (Linux parent-death signal), and is stopped when
the context exits — normally, on an exception, or on Ctrl-C.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import config as _config
from .errors import ContimgError

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    exe = shutil.which("redis-server")
    if not exe:
        raise ContimgError(
            "redis-server is not installed; install it (apt-get install redis-server) or run `make setup`"
        )
    return exe


class RedisServer:
    """A redis-server on a free loopback port, with a password."""

    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None,
                 appendonly: bool = False):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.password = password if password is not None else secrets.token_hex(16)
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--daemonize", "no",
                "--logfile", str(self.workdir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent, start_new_session=True)
        import redis

        client = redis.Redis.from_url(self.url)
        t0 = time.monotonic()
        while True:
            try:
                if client.ping():
                    return self
            except redis.exceptions.ConnectionError:
                pass
            if self.proc.poll() is not None:
                raise ContimgError(f"redis-server exited at start; see {self.workdir / 'redis.log'}")
            if time.monotonic() - t0 > timeout_s:
                raise ContimgError(f"redis-server did not answer on port {self.port} within {timeout_s} s")
            time.sleep(0.05)

    def stop(self) -> None:
        _stop(self.proc, 5.0)
        self.proc = None


def _stop(proc: subprocess.Popen | None, grace_s: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def worker_command(config_path: Path, node: str, concurrency: int = 1, loglevel: str = "INFO") -> list[str]:
    """Argument list that starts a worker for ``node`` (no shell)."""
    return [sys.executable, "-m", "contimg.cli", "--config", str(config_path), "worker", "--node", node,
            "--concurrency", str(concurrency), "--loglevel", loglevel]


class LocalCluster:
    """Private Redis + one worker process per node of the configuration.

    Use as a context manager; ``.config`` is the effective configuration with
    the private broker, written to ``{workdir}/config.toml`` for the workers.
    """

    def __init__(self, cfg: _config.Config, workdir: Path, nodes: list[str] | None = None,
                 concurrency: int = 1, env: dict[str, str] | None = None, appendonly: bool = False):
        self.base_config = cfg
        self.workdir = Path(workdir)
        self.nodes = nodes or list(cfg.nodes)
        self.concurrency = concurrency
        self.env = env or {}
        self.redis = RedisServer(self.workdir / "redis", appendonly=appendonly)
        self.workers: dict[str, subprocess.Popen] = {}
        self.config: _config.Config | None = None
        self.config_path = self.workdir / "config.toml"

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        self.config = self.base_config.with_broker(self.redis.url)
        _config.write(self.config, self.config_path)
        os.chmod(self.config_path, 0o600)  # it holds the broker password
        for node in self.nodes:
            self.start_worker(node)
        self.wait_ready(timeout_s)

    def start_worker(self, node: str) -> subprocess.Popen:
        logdir = self.workdir / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        log = open(logdir / f"worker-{node}.log", "ab")
        proc = subprocess.Popen(worker_command(self.config_path, node, self.concurrency), stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=str(self.workdir),
                                preexec_fn=_die_with_parent, start_new_session=True)
        log.close()
        self.workers[node] = proc
        return proc

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until every worker answers a ping."""
        from .tasks.app import configure

        app = configure(self.config)
        want = {f"{n}@" for n in self.nodes}
        t0 = time.monotonic()
        while True:
            replies = app.control.ping(timeout=0.5) or []
            seen = {name.split("@")[0] + "@" for r in replies for name in r}
            if want <= seen:
                return
            for node, p in self.workers.items():
                if p.poll() is not None:
                    raise ContimgError(
                        f"worker for node {node} exited at start; see {self.workdir / 'logs' / f'worker-{node}.log'}"
                    )
            if time.monotonic() - t0 > timeout_s:
                raise ContimgError(f"workers {sorted(want - seen)} did not answer within {timeout_s} s")
            time.sleep(0.2)

    def wait_idle(self, timeout_s: float = 120.0) -> bool:
        """Wait until every node queue is empty and no worker runs a task.

        Follow-up work (scratch cleanup) is sent after a block is recorded as
        done; a normal finish lets it run before the cluster stops. Returns
        False if work was still in flight after ``timeout_s``.
        """
        import redis

        from .tasks.app import configure

        app = configure(self.config)
        client = redis.Redis.from_url(self.redis.url)
        queues = [self.config.node(n).queue for n in self.nodes]
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if not any(client.llen(q) for q in queues):
                insp = app.control.inspect(timeout=1.0)
                active, reserved = insp.active() or {}, insp.reserved() or {}
                if not any(active.values()) and not any(reserved.values()) and not any(client.llen(q) for q in queues):
                    return True
            time.sleep(0.2)
        return False

    def restart_redis(self, down_s: float = 0.0) -> None:
        """Stop redis-server (SIGTERM: it writes its append-only file) and start it again
        on the same port, directory and password after ``down_s`` seconds.

        Call it from a thread that lives as long as the cluster: the server gets a
        parent-death signal, which Linux ties to the thread that started it.
        """
        self.redis.stop()
        time.sleep(down_s)
        self.redis.start()

    def worker_children(self, node: str) -> list[int]:
        """Process ids of the pool processes (the ones that run tasks) of a node's worker."""
        parent = self.workers[node].pid
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                kids.append(int(stat.parent.name))
        return sorted(kids)

    def stop_worker(self, node: str, grace_s: float = 20.0) -> None:
        _stop(self.workers.pop(node, None), grace_s)

    def stop(self) -> None:
        for node in list(self.workers):
            p = self.workers[node]
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for node in list(self.workers):
            self.stop_worker(node, grace_s=20.0)
        self.redis.stop()
