"""Dynamic micro-batching, decoupled from Kafka polling (as Triton's dynamic batcher).

The poll thread drops records into an inbox queue as they arrive; the batcher
takes the first record as soon as there is one, then takes whatever else is
already queued, up to ``max_batch``. If that leaves the batch short, it waits
for company only while the next stage is busy (``downstream_idle`` false), and
at most ``max_wait_ms`` since the first record: a record that would only wait
for an idle stage leaves at once. Under load batches fill at once
(throughput); while the next stage works on the previous batch, records
gather into the next (that wait costs nothing, the stage could not take them
sooner); under light load a record goes straight through (latency). How
records were grouped by the consumer's fetches does not matter.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    #: While a short batch waits, how often the batcher looks whether the next stage became idle.
    IDLE_CHECK_S = 0.001

    def __init__(
        self,
        inbox: queue.Queue[T],
        max_batch: int,
        max_wait_ms: int,
        stopping: Callable[[], bool],
        downstream_idle: Callable[[], bool] = lambda: False,
    ) -> None:
        self.inbox = inbox
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.stopping = stopping
        self.downstream_idle = downstream_idle
        #: Seconds the last batch waited for company after its first record (the latency batching costs).
        self.last_wait_s = 0.0

    def next_batch(self, idle_poll_s: float = 0.1) -> list[T]:
        """The next batch, or [] when stopping was requested while waiting for the first record."""
        while True:
            if self.stopping():
                return []
            try:
                first = self.inbox.get(timeout=idle_poll_s)
                break
            except queue.Empty:
                continue
        batch = [first]
        started = time.monotonic()
        deadline = started + self.max_wait_s
        while len(batch) < self.max_batch:
            # Take what is already queued without waiting.
            try:
                while len(batch) < self.max_batch:
                    batch.append(self.inbox.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.downstream_idle():
                break
            try:
                batch.append(self.inbox.get(timeout=min(remaining, self.IDLE_CHECK_S)))
            except queue.Empty:
                continue
        self.last_wait_s = time.monotonic() - started
        return batch
