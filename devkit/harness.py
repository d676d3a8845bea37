"""The shared harness: private topics, publishing, worker processes, reading outputs, probes.

Used by the integration tests, the benchmarks and the demo, so each of them
drives a worker the same way: the real CLI (``python -m worker``) in its own
process, configured only through ``AIGIS_*`` environment variables, talking to
the real broker and Redis. Reading outputs lives in :mod:`devkit.outputs`
(re-exported here).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from PIL import Image

from devkit.faults import SWITCHES, wants_faults
from devkit.outputs import MAX_IMAGE_BYTES, Output, OutputReader, committed_offsets, log_tail
from devkit.servers import DevServers
from worker.runtime.clients import ensure_topics, make_producer

__all__ = [
    "FAST_GROUP",
    "MAX_IMAGE_BYTES",
    "ROOT",
    "Output",
    "OutputReader",
    "Topics",
    "committed_offsets",
    "create_topics",
    "http_get",
    "jpeg_bytes",
    "log_events",
    "log_tail",
    "metric",
    "metric_sum",
    "open_producer",
    "publish",
    "raw_records",
    "series",
    "settings_env",
    "start_module",
    "start_worker",
    "stop",
    "wait_until",
    "worker_env",
]

#: The repository root: processes the harness starts run here, so ``python -m bench.…``/``devkit.…`` resolve from a checkout.
ROOT = Path(__file__).resolve().parents[1]
#: Group timing that makes a dead worker's partitions move in about a second (and Tansu's joins take ~1 s, not ~5 s).
FAST_GROUP = {"AIGIS_SESSION_TIMEOUT_MS": "2000", "AIGIS_HEARTBEAT_INTERVAL_MS": "500"}

#: (key, value) or (key, value, headers), as :func:`publish` takes them.
Item = tuple[bytes | None, bytes] | tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def create_topics(bootstrap: str, names: Sequence[str], partitions: int = 3) -> None:
    """Create topics (if missing) that carry the harness's largest inline image."""
    ensure_topics(bootstrap, list(names), partitions, MAX_IMAGE_BYTES)


@dataclass
class Topics:
    """One test's (or benchmark run's) private topics and group on a shared broker."""

    uploads: str
    verdicts: str
    dead: str
    group: str

    @classmethod
    def fresh(cls, bootstrap: str, partitions: int = 3, uploads: str | None = None) -> Topics:
        """New topics and group; ``uploads`` reuses an existing input topic (several workers over one backlog)."""
        tag = uuid.uuid4().hex[:8]
        t = cls(uploads or f"uploads-{tag}", f"verdicts-{tag}", f"dead-{tag}", f"workers-{tag}")
        create_topics(bootstrap, [t.verdicts, t.dead] if uploads else [t.uploads, t.verdicts, t.dead], partitions)
        return t

    def create(self, bootstrap: str, partitions: int = 3) -> Topics:
        """Create these (named) topics if missing; returns self."""
        create_topics(bootstrap, [self.uploads, self.verdicts, self.dead], partitions)
        return self

    def env(self) -> dict[str, str]:
        return {
            "AIGIS_INPUT_TOPIC": self.uploads,
            "AIGIS_VERDICT_TOPIC": self.verdicts,
            "AIGIS_DEAD_LETTER_TOPIC": self.dead,
            "AIGIS_GROUP_ID": self.group,
        }


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def open_producer(bootstrap: str, linger_ms: int = 2, client_id: str = "harness-producer") -> KafkaProducer:
    """A producer sized like the worker's (whole images); ``linger_ms=0`` for an open-loop load generator."""
    return make_producer(bootstrap, MAX_IMAGE_BYTES, client_id=client_id, linger_ms=linger_ms)


def publish(bootstrap: str, topic: str, items: Iterable[Item], linger_ms: int = 2) -> dict[int, int]:
    """Produce and wait for every acknowledgement; returns partition -> next offset (end) the broker confirmed.

    (Tansu's ListOffsets answer for "latest" is off for multi-record batches, so
    tests take end offsets from the produce acknowledgements instead.)
    """
    producer = open_producer(bootstrap, linger_ms)
    futures = [producer.send(topic, key=it[0], value=it[1], headers=it[2] if len(it) > 2 else None) for it in items]
    producer.flush()
    ends: dict[int, int] = {}
    for f in futures:
        meta = f.get(timeout=60)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    producer.close()
    return ends


def settings_env(settings: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """``AIGIS_*`` variables for worker settings named by config field (``max_batch``) or variable (``AIGIS_MAX_BATCH``).

    Returns them and the variables this worker does not read: a benchmark of an
    older worker drops those with a note instead of failing.
    """
    from worker.config import env_var, env_var_names

    known = env_var_names()
    env: dict[str, str] = {}
    unknown: list[str] = []
    for name, value in settings.items():
        var = name if name.startswith("AIGIS_") else env_var(name)
        if var in known:
            env[var] = str(value)
        else:
            unknown.append(var)
    return env, unknown


#: Drift settings that let a test see a report after tens of images (window 200, judged every 5 once it holds 30; batches of 8).
SMALL_DRIFT_WINDOW = {"AIGIS_DRIFT_WINDOW_IMAGES": "200", "AIGIS_DRIFT_MIN_IMAGES": "30", "AIGIS_DRIFT_EVAL_EVERY": "5", "AIGIS_MAX_BATCH": "8"}


def worker_env(servers: DevServers, topics: Topics, bundle: Path, *, inherit_settings: bool = False, **extra: str) -> dict[str, str]:
    """The environment for one worker on ``servers``.

    Worker settings and fault switches in the caller's own environment are
    dropped unless ``inherit_settings`` (the demo passes settings on; tests and
    benchmarks must not depend on the shell they run in). ``extra`` wins over
    everything.
    """
    from worker.config import env_var_names

    drop = set(SWITCHES) | (set() if inherit_settings else env_var_names())
    env = {k: v for k, v in os.environ.items() if k not in drop}
    for name, value in {"AIGIS_PROVIDERS": "CPUExecutionProvider", "AIGIS_LOG_LEVEL": "info", **FAST_GROUP}.items():
        env.setdefault(name, value)  # harness defaults: an inherited setting keeps its value
    env.update(
        {
            "AIGIS_BOOTSTRAP_SERVERS": servers.bootstrap_servers,
            "AIGIS_REDIS_URL": servers.redis_url,
            "AIGIS_BUNDLE": str(bundle),
            **topics.env(),
        }
    )
    env.update(extra)
    return env


def start_module(module: str, args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m module args`` from the repository root, output appended to ``log_path``, in its own session."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=dict(env) if env is not None else None,
        cwd=ROOT,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """The real worker CLI; through the fault-injection wrapper when the env sets one of its switches."""
    return start_module("devkit.faults" if wants_faults(env) else "worker", args, log_path, env)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Send ``sig`` (SIGTERM: the worker drains and leaves its group) and wait; SIGKILL its process group after ``timeout``.

    Returns the exit code (negative for a signal, -9 when it had to be killed).
    """
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait(10)


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


_SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def series(body: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text exposition: (name, labels, value)."""
    out = []
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SERIES.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group("labels") or ""))
            out.append((m.group("name"), labels, float(m.group("value"))))
    return out


def metric(body: str, name: str, /, **labels: str) -> float | None:
    """Value of one series in a Prometheus text exposition (None when absent); labels match in any order."""
    for n, have, value in series(body):
        if n == name and have == labels:
            return value
    return None


def metric_sum(body: str, name: str) -> float:
    """Sum of every series of a metric (all label sets)."""
    return sum(value for n, _, value in series(body) if n == name)


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


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
