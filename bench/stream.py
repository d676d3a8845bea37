"""Driving the real broker and the real worker for the streaming benchmarks.

The worker is started the way an operator starts it, ``python -m worker`` with
``AIGIS_*`` environment variables, so the harness keeps working whatever the
runtime does inside. Settings the installed worker does not know are dropped
with a note rather than passed (its config forbids unknown fields).

Throughput is read off the output topic, not the harness's clock: each verdict
record's timestamp is when the worker produced it and its ``timings.total_ms``
dates the pick-up, so the rate (``steady_rate``) excludes process start-up
(imports, bundle load, group join) and the reader's own polling delay never
counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from bench.stats import percentile

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Group timing that makes the broker's join take ~1 s instead of ~5 s (Tansu joins take about session_timeout / 2).
FAST_GROUP = {"session_timeout_ms": "2000", "heartbeat_interval_ms": "500"}
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Topics:
    uploads: str
    verdicts: str
    dead: str
    group: str

    @classmethod
    def fresh(cls, bootstrap: str, partitions: int = 2, tag: str = "") -> Topics:
        t = tag or uuid.uuid4().hex[:8]
        topics = cls(f"bench-up-{t}", f"bench-verdicts-{t}", f"bench-dead-{t}", f"bench-workers-{t}")
        create_topics(bootstrap, [topics.uploads, topics.verdicts, topics.dead], partitions)
        return topics


def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="bench-admin")
    try:
        new = [NewTopic(n, num_partitions=partitions, replication_factor=1, topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)}) for n in names]
        try:
            admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass
    finally:
        admin.close()


def producer(bootstrap: str, linger_ms: int = 5) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        client_id="bench-producer",
        acks="all",
        linger_ms=linger_ms,
        batch_size=1024 * 1024,
        max_request_size=MAX_MESSAGE_BYTES,
    )


def publish(bootstrap: str, topic: str, items: Iterable[tuple[bytes, bytes]]) -> int:
    """Produce (key, value) pairs and wait for every acknowledgement; returns the count."""
    prod = producer(bootstrap)
    futures = [prod.send(topic, key=k, value=v) for k, v in items]
    prod.flush()
    for f in futures:
        f.get(timeout=60)
    prod.close()
    return len(futures)


# -- the worker ------------------------------------------------------------------------------


def worker_env(
    bootstrap: str, topics: Topics, bundle: Path, redis_url: str = "", log_level: str = "warning", **settings: Any
) -> tuple[dict[str, str], list[str]]:
    """AIGIS_* environment for one worker; returns it and the settings the installed worker does not know."""
    from worker.config import env_var, env_var_names

    known = env_var_names()
    providers = "CUDAExecutionProvider,CPUExecutionProvider" if _gpu() else "CPUExecutionProvider"
    wanted: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "input_topic": topics.uploads,
        "verdict_topic": topics.verdicts,
        "dead_letter_topic": topics.dead,
        "group_id": topics.group,
        "bundle": str(bundle),
        "providers": providers,
        "redis_url": redis_url,
        "log_level": log_level,
        **FAST_GROUP,
        **settings,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGIS_")}
    dropped = []
    for name, value in wanted.items():
        var = name if name.startswith("AIGIS_") else env_var(name)
        if var in known:
            env[var] = str(value)
        else:
            dropped.append(var)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env, dropped


def _gpu() -> bool:
    from bench.machine import gpus

    return bool(gpus())


@dataclass
class WorkerProc:
    """One ``python -m worker`` (or helper) process, its log, and how to stop it."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, env: dict[str, str], log_path: Path) -> WorkerProc:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "worker"]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        return cls(proc, log_path)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the worker drains and leaves its group), SIGKILL if it does not exit in time."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        try:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


class Profiler:
    """py-spy attached to a running process (all threads, raw collapsed stacks), stopped with SIGINT.

    Attached after the worker is warm, so imports and bundle loading do not
    dilute the profile of the steady state.
    """

    def __init__(self, pid: int, out: Path, rate_hz: int = 200) -> None:
        spy = Path(sys.executable).parent / "py-spy"
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            str(rate_hz),
            "--threads",
            "--gil",
            "--full-filenames",
            "--nonblocking",
            "-o",
            str(out),
        ]
        self.out = out
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return (err or b"").decode(errors="replace")[-500:]


def available_py_spy() -> bool:
    return (Path(sys.executable).parent / "py-spy").exists()


# -- reading outputs -------------------------------------------------------------------------


@dataclass
class Output:
    key: str
    topic: str
    timestamp_ms: int
    value: bytes


@dataclass
class Collector:
    """Reads output topics from the beginning (no group) and keeps one record per key."""

    bootstrap: str
    topics: Sequence[str]
    keep_values: bool = True
    seen: dict[str, Output] = field(default_factory=dict)
    duplicates: int = 0

    def __post_init__(self) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap.split(","),
            client_id="bench-reader",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        parts = []
        for topic in self.topics:
            deadline = time.monotonic() + 15
            found = None
            while not found and time.monotonic() < deadline:
                found = self.consumer.partitions_for_topic(topic)
                if not found:
                    time.sleep(0.1)
            if not found:
                raise RuntimeError(f"topic {topic} has no partitions")
            parts.extend(TopicPartition(topic, p) for p in found)
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning()

    def poll(self, timeout_ms: int = 300) -> int:
        got = 0
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms, max_records=5000).items():
            for r in records:
                key = (r.key or b"").decode(errors="replace")
                if key in self.seen:
                    self.duplicates += 1
                    continue
                self.seen[key] = Output(key, tp.topic, r.timestamp, r.value if self.keep_values else b"")
                got += 1
        return got

    def wait_for(self, keys: set[str], timeout_s: float, worker: WorkerProc | None = None, what: str = "worker") -> set[str]:
        """Poll until every key has an output; raises with the worker's log if it died or time ran out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            missing = keys - self.seen.keys()
            if not missing:
                return set()
            if worker is not None and not worker.alive():
                self.poll(1000)
                missing = keys - self.seen.keys()
                if missing:
                    raise RuntimeError(f"{what} exited (rc {worker.proc.returncode}) with {len(missing)} outputs missing:\n{worker.log_tail()}")
        missing = keys - self.seen.keys()
        if missing:
            tail = worker.log_tail() if worker else ""
            raise RuntimeError(f"{what}: {len(missing)} of {len(keys)} outputs missing after {timeout_s:.0f}s\n{tail}")
        return missing

    def close(self) -> None:
        self.consumer.close()


def steady_rate(timestamps_ms: Sequence[int], group_ms: int = 5, starts_ms: Sequence[float] = ()) -> dict[str, float]:
    """Outputs per second from output timestamps, start-up (process start, bundle load, group join) excluded.

    With ``starts_ms`` (per verdict: its timestamp minus ``timings.total_ms``,
    i.e. when the worker picked the record up), ``rate`` is all outputs over the
    span from the first pick-up to the last output: the wall time the worker
    spent on the backlog, first batch included, the same thing the offline
    scorer's wall time measures.

    Without (consumers that report no timings), ``rate`` is the outputs after
    the first group (records within ``group_ms`` of the first one: the first
    batch) over the time from that group to the last output; for a
    one-at-a-time consumer that is (n - 1) / span. ``middle80_rate`` is the rate
    over the middle 80 % of outputs, for comparison; it is coarse when a run has
    few batches.
    """
    ts = sorted(timestamps_ms)
    n = len(ts)
    out = {"outputs": float(n), "span_s": (ts[-1] - ts[0]) / 1000 if n > 1 else 0.0}
    first = sum(1 for t in ts if t <= ts[0] + group_ms) if n else 0
    out["first_group"] = float(first)
    out["full_rate"] = (n - 1) / out["span_s"] if out["span_s"] > 0 else float("nan")
    if starts_ms and n:
        busy = (ts[-1] - min(starts_ms)) / 1000
        out["busy_s"] = busy
        out["rate"] = n / busy if busy > 0 else float("nan")
        out["rate_basis"] = "first pick-up to last verdict"  # type: ignore[assignment]
    else:
        out["rate"] = (n - first) / out["span_s"] if out["span_s"] > 0 and n > first else float("nan")
        out["rate_basis"] = "after the first batch"  # type: ignore[assignment]
    lo, hi = int(n * 0.1), max(int(n * 0.9) - 1, 0)
    window = (ts[hi] - ts[lo]) / 1000 if hi > lo else 0.0
    out["middle80_rate"] = (hi - lo) / window if window > 0 else float("nan")
    return out


def verdict_field(value: bytes, *path: str) -> Any:
    doc = json.loads(value)
    for p in path:
        doc = doc.get(p) if isinstance(doc, dict) else None
    return doc


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": float(len(latencies_ms)),
        "p50_ms": percentile(latencies_ms, 50),
        "p90_ms": percentile(latencies_ms, 90),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms) if latencies_ms else float("nan"),
    }
