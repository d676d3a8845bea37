"""The four stage threads, each calling one method: receive, prepare, finish, deliver.

::

    inbox ──► receive ──(1)──► prepare ──(1)──► infer ──(1)──► deliver
              BatchProcessor   BatchProcessor   BatchProcessor  Deliverer
              .receive         .prepare         .finish         .deliver

* **receive** forms micro-batches (``max_batch``; a short batch waits up to
  ``max_wait_ms`` for company only while prepare is busy), drops
  records whose partition was revoked meanwhile, parses them and fetches the
  URIs (on the fetcher's own threads, one deadline per batch): with its own
  thread, batch N+1's fetches wait on the store while batch N decodes;
* **prepare** runs hash, cache lookup and the decode fan-out;
* **infer** runs ONNX Runtime (overlapping the next batch's decode), the shadow
  bundle, the cache write and builds the outcomes;
* **deliver** produces them and marks their offsets done once acknowledged,
  then feeds the verdicts to the drift monitors and publishes any report.

Queues of one between stages bound the memory held. A stage that raises is a
bug: the worker stops, commits nothing past it, and exits 2.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from worker.ops.health import Liveness
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.batch import BatchProcessor
from worker.pipeline.items import PreparedBatch
from worker.pipeline.outcomes import Outcome
from worker.runtime.batcher import MicroBatcher
from worker.runtime.delivery import Deliverer
from worker.runtime.drift_reports import DriftReports
from worker.runtime.lifecycle import Lifecycle
from worker.runtime.offsets import OffsetTracker
from worker.runtime.work import Work

A = TypeVar("A")
B = TypeVar("B")


class Stages:
    """Starts the stage threads (context manager); ``alive`` tells the poll loop when a drain is over."""

    def __init__(
        self,
        *,
        inbox: queue.Queue[Work],
        processor: BatchProcessor,
        deliverer: Deliverer,
        drift: DriftReports,
        tracker: OffsetTracker,
        lifecycle: Lifecycle,
        liveness: Liveness,
        metrics: WorkerMetrics,
        max_batch: int,
        max_wait_ms: int,
    ) -> None:
        self.processor = processor
        self.deliverer = deliverer
        self.drift = drift
        self.tracker = tracker
        self.lifecycle = lifecycle
        self.liveness = liveness
        self.metrics = metrics
        self._busy: set[str] = set()
        self.batcher = MicroBatcher(inbox, max_batch, max_wait_ms, lifecycle.stop.is_set, downstream_idle=self._prepare_idle)
        self._to_prepare: queue.Queue[tuple[list[Work], PreparedBatch] | None] = queue.Queue(maxsize=1)
        self._to_infer: queue.Queue[tuple[list[Work], PreparedBatch] | None] = queue.Queue(maxsize=1)
        self._to_deliver: queue.Queue[tuple[list[Work], list[Outcome]] | None] = queue.Queue(maxsize=1)
        self._threads = [
            threading.Thread(target=self._guard, args=(name, body), name=f"stage-{name}", daemon=True)
            for name, body in (("receive", self._receive), ("prepare", self._prepare), ("infer", self._infer), ("deliver", self._deliver))
        ]

    def __enter__(self) -> Stages:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.lifecycle.stop.set()  # the threads are daemons; a drain already waited for them if it could

    def _prepare_idle(self) -> bool:
        """Prepare would start a batch handed over now (nothing queued for it, nothing in its hands)."""
        return self._to_prepare.empty() and "prepare" not in self._busy

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _guard(self, name: str, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:  # a bug: stop cleanly, replay what is not committed
            self.lifecycle.crash(name, exc)

    def _receive(self) -> None:
        try:
            while works := self.batcher.next_batch():
                live = [w for w in works if self.tracker.is_current(w.tp, w.generation)]
                self.deliverer.count_stale(len(works) - len(live))
                if not live:
                    continue
                self.metrics.batch_size.observe(len(live))
                self.metrics.stage_seconds.observe(self.batcher.last_wait_s, "batch_wait")
                self.liveness.busy("receive")
                batch = self.processor.receive([w.record for w in live])
                self.liveness.idle("receive")
                self._to_prepare.put((live, batch))
        finally:
            # Records still in the inbox when draining were never started: the next owner of their
            # partitions replays them from the committed offset.
            self._to_prepare.put(None)

    def _prepare(self) -> None:
        self._relay("prepare", self._to_prepare, self.processor.prepare, self._to_infer)

    def _infer(self) -> None:
        self._relay("infer", self._to_infer, self.processor.finish, self._to_deliver)

    def _relay(
        self, name: str, source: queue.Queue[tuple[list[Work], A] | None], call: Callable[[A], B], sink: queue.Queue[tuple[list[Work], B] | None]
    ) -> None:
        """One middle stage: take a batch, apply ``call`` (skipped once aborting), pass it on; pass the end-of-stream on too."""
        try:
            while (item := source.get()) is not None:
                works, batch = item
                if self.lifecycle.abort.is_set():
                    continue
                self.liveness.busy(name)
                self._busy.add(name)
                try:
                    result = call(batch)
                finally:
                    self._busy.discard(name)
                self.liveness.idle(name)
                sink.put((works, result))
        finally:
            sink.put(None)

    def _deliver(self) -> None:
        while (item := self._to_deliver.get()) is not None:
            works, outcomes = item
            self.liveness.busy("deliver")
            self.deliverer.deliver(works, outcomes)
            self.deliverer.publish_reports(self.drift.observe(outcomes))
            self.liveness.idle("deliver")
