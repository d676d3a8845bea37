"""The shared harness: private topics, publishing, worker processes, reading outputs, probes.

Used by the integration tests, the benchmarks and the demo, so each of them
drives a worker the same way.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from PIL import Image

from devkit.faults import wants_faults
from devkit.servers import DevServers
from worker.runtime.clients import ensure_topics, make_consumer, make_producer

MAX_IMAGE_BYTES = 10 * 1024 * 1024
#: Group timing that makes a dead worker's partitions move in about a second.
FAST_GROUP = {"AIGIS_SESSION_TIMEOUT_MS": "2000", "AIGIS_HEARTBEAT_INTERVAL_MS": "500"}


@dataclass
class Topics:
    """One test's private topics and group on the shared broker."""

    uploads: str
    verdicts: str
    dead: str
    group: str

    @classmethod
    def fresh(cls, bootstrap: str, partitions: int = 3) -> Topics:
        tag = uuid.uuid4().hex[:8]
        t = cls(f"uploads-{tag}", f"verdicts-{tag}", f"dead-{tag}", f"workers-{tag}")
        ensure_topics(bootstrap, [t.uploads, t.verdicts, t.dead], partitions, MAX_IMAGE_BYTES)
        return t

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


def publish(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]) -> dict[int, int]:
    """Produce and wait for acknowledgement; returns partition -> next offset (end) the broker confirmed.

    (Tansu's ListOffsets answer for "latest" is off for multi-record batches, so
    tests take end offsets from the produce acknowledgements instead.)
    """
    producer = make_producer(bootstrap, MAX_IMAGE_BYTES, client_id="test-producer")
    futures = [producer.send(topic, key=key, value=value, headers=headers) for key, value, headers in items]
    producer.flush()
    ends: dict[int, int] = {}
    for f in futures:
        meta = f.get(timeout=30)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    producer.close()
    return ends


def worker_env(servers: DevServers, topics: Topics, bundle: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIGIS_BOOTSTRAP_SERVERS": servers.bootstrap_servers,
            "AIGIS_REDIS_URL": servers.redis_url,
            "AIGIS_BUNDLE": str(bundle),
            "AIGIS_PROVIDERS": "CPUExecutionProvider",
            "AIGIS_LOG_LEVEL": "info",
            **FAST_GROUP,
            **topics.env(),
        }
    )
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """The real worker CLI; through the fault-injection wrapper when the env sets one of its switches."""
    entry = "devkit.faults" if wants_faults(env) else "worker"
    return subprocess.Popen(
        [sys.executable, "-m", entry, *args],
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout)


class OutputReader:
    """Reads verdict and dead-letter topics from the beginning, without a group."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.consumer = make_consumer(bootstrap, topics.verdicts, None, MAX_IMAGE_BYTES, client_id="test-reader")
        self.consumer.unsubscribe()
        parts = []
        for topic in (topics.verdicts, topics.dead):
            for p in self._partitions(topic):
                parts.append(TopicPartition(topic, p))
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning()
        self.verdicts: list[dict] = []
        self.dead: list[dict] = []
        self.topics = topics

    def _partitions(self, topic: str) -> set[int]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            parts = self.consumer.partitions_for_topic(topic)
            if parts:
                return parts
            time.sleep(0.1)
        raise AssertionError(f"topic {topic} has no partitions")

    def poll(self, timeout_ms: int = 500) -> None:
        for tp, records in self.consumer.poll(timeout_ms).items():
            for r in records:
                doc = json.loads(r.value)
                (self.verdicts if tp.topic == self.topics.verdicts else self.dead).append(doc)

    def ids(self) -> set[str]:
        return {d["upload_id"] for d in self.verdicts} | {d["upload_id"] for d in self.dead if d.get("upload_id")}

    def wait_for_ids(self, expected: set[str], timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> set[str]:
        """Poll until every expected id has an outcome; returns the ids still missing."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            missing = expected - self.ids()
            if not missing:
                return set()
            if proc is not None and proc.poll() is not None:
                self.poll(1000)
                return expected - self.ids()
        return expected - self.ids()

    def close(self) -> None:
        self.consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (partitions never committed are left out)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=group, enable_auto_commit=False, client_id="test-offsets")
    try:
        out = {}
        for p in consumer.partitions_for_topic(topic) or ():
            off = consumer.committed(TopicPartition(topic, p))
            if off is not None:
                out[p] = off
        return out
    finally:
        consumer.close()


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
