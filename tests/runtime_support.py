"""Helpers for the worker-runtime tests: private servers, unique images, HTTP probes, bundle variants.

Destructive tests (killing Redis, restarting the broker) start their *own*
broker and redis-server in the test's temp dir, so the session-wide
``servers`` fixture the other tests share is never disturbed.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devkit.servers import DevServers, free_port, start_broker, start_redis
from schemas import BundleManifest


def _private_servers(wd: Path, storage: str = "memory://tansu/", broker_env: dict[str, str] | None = None) -> Iterator[DevServers]:
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


@pytest.fixture
def own_servers(tmp_path: Path) -> Iterator[DevServers]:
    """A broker and a redis-server that only this test uses (and may kill)."""
    yield from _private_servers(tmp_path / "servers")


@pytest.fixture
def durable_servers(tmp_path: Path) -> Iterator[DevServers]:
    """Like ``own_servers``, but the broker keeps its log and committed offsets across a restart.

    Tansu's storage engines are memory, S3 and PostgreSQL; the durable one we can
    run on a bare machine is S3, served here by moto's S3 server in this process
    (a test-only dependency, in memory: it outlives the broker, not the test).
    """
    from moto.server import ThreadedMotoServer

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
        yield from _private_servers(tmp_path / "servers", "s3://tansu/", env)
    finally:
        s3.stop()


def unique_jpegs(n: int, seed: int = 0, size: tuple[int, int] = (64, 48)) -> list[bytes]:
    """n small, distinct JPEGs (random colour fields: cheap to make, decode and score)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def raw_records(prefix: str, images: list[bytes]) -> list[tuple[bytes, bytes, list]]:
    return [(f"{prefix}-{i}".encode(), data, [("content-type", b"image/jpeg")]) for i, data in enumerate(images)]


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path; (0, error) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def metric(body: str, name: str, /, **labels: str) -> float | None:
    """Value of one series in a Prometheus text exposition (None when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in body.splitlines():
        if line.startswith("#") or not line:
            continue
        series, _, value = line.rpartition(" ")
        if series == name or (want and series == f"{name}{{{want}}}"):
            return float(value)
    return None


def metric_sum(body: str, name: str) -> float:
    """Sum of every series of a metric (all label sets)."""
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rpartition(" ")[2])
    return total


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_manifest(bundle: Path, edit: Callable[[dict], None]) -> str:
    """Edit manifest.json atomically (temp file + rename, as a rollout should); returns its new sha256."""
    import hashlib

    doc = json.loads((bundle / "manifest.json").read_text())
    edit(doc)
    BundleManifest.model_validate(doc)
    raw = json.dumps(doc, indent=2).encode()
    tmp = bundle / "manifest.json.tmp"
    tmp.write_bytes(raw)
    tmp.replace(bundle / "manifest.json")
    return hashlib.sha256(raw).hexdigest()


def log_events(path: Path) -> list[dict]:
    """The worker's structlog JSON lines (other lines skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


__all__ = [
    "copy_bundle",
    "free_port",
    "http_get",
    "log_events",
    "metric",
    "metric_sum",
    "own_servers",
    "raw_records",
    "rewrite_manifest",
    "unique_jpegs",
    "wait_until",
]
