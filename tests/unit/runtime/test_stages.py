"""The stage threads overlap: batch N+1 is received (its URIs fetched) while batch N is still being prepared.

Pure threading logic: the processor and the deliverer are stand-ins that record
what ran when; no broker is involved (the real worker is covered end to end in
tests/integration).
"""

from __future__ import annotations

import queue
import threading
from types import SimpleNamespace

from kafka import TopicPartition

from worker.ingest.wire import InputRecord
from worker.ops.health import Liveness
from worker.ops.metrics import WorkerMetrics
from worker.runtime.lifecycle import Lifecycle
from worker.runtime.offsets import OffsetTracker
from worker.runtime.stages import Stages
from worker.runtime.work import Work


class _Processor:
    """receive returns at once; prepare of the first batch blocks until the second batch has been received."""

    def __init__(self) -> None:
        self.received: list[list[int]] = []
        self.second_received = threading.Event()
        self.first_prepare_saw_second = False

    def receive(self, records: list[InputRecord]) -> SimpleNamespace:
        self.received.append([r.offset for r in records])
        if len(self.received) == 2:
            self.second_received.set()
        return SimpleNamespace(offsets=[r.offset for r in records])

    def prepare(self, batch: SimpleNamespace) -> SimpleNamespace:
        if batch.offsets[0] == 0:
            self.first_prepare_saw_second = self.second_received.wait(5)
        return batch

    def finish(self, batch: SimpleNamespace) -> list[int]:
        return batch.offsets


class _Deliverer:
    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.done = threading.Event()

    def count_stale(self, n: int) -> None:
        assert n == 0

    def deliver(self, works: list[Work], outcomes: list[int]) -> None:
        self.delivered.extend(outcomes)
        if len(self.delivered) == 4:
            self.done.set()

    def publish_reports(self, reports: list[object]) -> None:
        pass


def test_the_next_batch_is_received_while_the_previous_one_is_prepared() -> None:
    tp = TopicPartition("uploads", 0)
    tracker = OffsetTracker()
    tracker.assign({tp})
    inbox: queue.Queue[Work] = queue.Queue()
    processor, deliverer = _Processor(), _Deliverer()
    lifecycle = Lifecycle(shutdown_grace_s=5)
    drift = SimpleNamespace(observe=lambda outcomes: [])
    stages = Stages(
        inbox=inbox,
        processor=processor,  # type: ignore[arg-type]
        deliverer=deliverer,  # type: ignore[arg-type]
        drift=drift,  # type: ignore[arg-type]
        tracker=tracker,
        lifecycle=lifecycle,
        liveness=Liveness(30),
        metrics=WorkerMetrics(),
        max_batch=2,
        max_wait_ms=50,
    )
    gen = tracker.added(tp, [0, 1, 2, 3])
    assert gen is not None
    for offset in range(4):
        inbox.put(Work(InputRecord("uploads", 0, offset, None, str(offset).encode(), b"x"), tp, gen))
    with stages:
        assert deliverer.done.wait(10), f"delivered only {deliverer.delivered}"
        lifecycle.request_stop()
    assert processor.received == [[0, 1], [2, 3]]
    assert processor.first_prepare_saw_second, "batch 2 was not received while batch 1 was in the prepare stage"
    assert deliverer.delivered == [0, 1, 2, 3]
