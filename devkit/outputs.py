"""Reading what workers (and the benchmarks' other consumers) wrote: output topics from the start, no group.

One reader for the integration tests, the benchmarks and the demo. Each record
is kept twice over: as parsed documents in arrival order (``verdicts`` and
``dead``, duplicates included, which is what the at-least-once tests count),
and as the first :class:`Output` per record key with the broker's timestamp
(when the worker produced it) and the time this reader saw it, which is what
the benchmarks date rates and latencies from. ``keep_values=False`` skips the
parsing and the values, for runs of many thousands of records where only
timestamps matter.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from worker.runtime.clients import make_consumer

#: Largest image the harness publishes inline (the worker's default limit).
MAX_IMAGE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Output:
    """One record on an output topic."""

    key: str
    topic: str
    #: The record's broker timestamp: when the producing process (the worker) sent it.
    timestamp_ms: int
    #: ``time.time()`` when this reader received it.
    received_s: float
    value: bytes

    def doc(self) -> dict[str, Any]:
        return json.loads(self.value)


def log_tail(path: Path | None, n: int = 3000) -> str:
    """The last ``n`` characters of a process log ('' when there is none)."""
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class OutputReader:
    """Reads output topics from the beginning, without a consumer group.

    ``topics`` is a :class:`~devkit.harness.Topics` (its verdict and dead-letter
    topics are read) or a list of topic names (records on the first count as
    verdicts, on any other as dead letters).
    """

    def __init__(self, bootstrap: str, topics: Any, *, keep_values: bool = True, partition_wait_s: float = 15.0) -> None:
        names = [topics.verdicts, topics.dead] if hasattr(topics, "verdicts") else list(topics)
        self.verdict_topic = names[0]
        self.keep_values = keep_values
        # No group: make_consumer subscribes, so drop that and assign every partition explicitly.
        self.consumer = make_consumer(bootstrap, names[0], None, MAX_IMAGE_BYTES, client_id="harness-reader", fetch_max_wait_ms=100)
        self.consumer.unsubscribe()
        self.consumer.assign([TopicPartition(t, p) for t in names for p in self._partitions(t, partition_wait_s)])
        self.consumer.seek_to_beginning()
        #: Parsed documents in arrival order, duplicates included (empty with keep_values=False).
        self.verdicts: list[dict] = []
        self.dead: list[dict] = []
        #: The first record per key.
        self.outputs: dict[str, Output] = {}
        #: Records whose key was already in ``outputs`` (redeliveries).
        self.duplicates = 0

    def _partitions(self, topic: str, wait_s: float) -> set[int]:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            parts = self.consumer.partitions_for_topic(topic)
            if parts:
                return parts
            time.sleep(0.1)
        raise TimeoutError(f"topic {topic} has no partitions after {wait_s:.0f}s")

    def poll(self, timeout_ms: int = 500) -> int:
        """Read what has arrived; returns how many records were new by key."""
        new = 0
        for tp, records in self.consumer.poll(timeout_ms, max_records=5000).items():
            now = time.time()
            for r in records:
                if self.keep_values:
                    (self.verdicts if tp.topic == self.verdict_topic else self.dead).append(json.loads(r.value))
                key = r.key.decode(errors="replace") if r.key is not None else f"<no key {tp.topic}/{tp.partition}@{r.offset}>"
                if key in self.outputs:
                    self.duplicates += 1
                    continue
                self.outputs[key] = Output(key, tp.topic, r.timestamp, now, r.value if self.keep_values else b"")
                new += 1
        return new

    def ids(self) -> set[str]:
        """Upload ids with an outcome (verdicts, and dead letters that could name their upload)."""
        return {d["upload_id"] for d in self.verdicts} | {d["upload_id"] for d in self.dead if d.get("upload_id")}

    def wait_for_ids(self, expected: set[str], timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> set[str]:
        """Poll until every expected upload id has an outcome; returns the ids still missing."""
        return self._wait(expected, self.ids, timeout_s, proc)

    def wait_for_keys(self, expected: set[str], timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> set[str]:
        """Poll until every expected record key has an output; returns the keys still missing (also when ``proc`` exits)."""
        return self._wait(expected, self.outputs.keys, timeout_s, proc)

    def require(self, expected: set[str], timeout_s: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None, what: str = "worker") -> None:
        """:meth:`wait_for_keys`, raising with the end of ``log`` when outputs are missing (the benchmarks' way)."""
        missing = self.wait_for_keys(expected, timeout_s, proc)
        if not missing:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited (rc {proc.returncode}) with {len(missing)} outputs missing:\n{log_tail(log)}")
        raise RuntimeError(f"{what}: {len(missing)} of {len(expected)} outputs missing after {timeout_s:.0f}s\n{log_tail(log)}")

    def _wait(self, expected: set[str], have: Callable[[], Iterable[str]], timeout_s: float, proc: subprocess.Popen[bytes] | None) -> set[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            missing = expected - set(have())
            if not missing:
                return set()
            if proc is not None and proc.poll() is not None:
                self.poll(1000)  # what it delivered before it exited
                return expected - set(have())
        return expected - set(have())

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> OutputReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (partitions never committed are left out)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=group, enable_auto_commit=False, client_id="harness-offsets")
    try:
        out = {}
        for p in consumer.partitions_for_topic(topic) or ():
            off = consumer.committed(TopicPartition(topic, p))
            if off is not None:
                out[p] = off
        return out
    finally:
        consumer.close()
