"""The rebalance listener: partitions come and go without a duplicate or a gap.

It runs on the consumer's IO thread while the poll thread is blocked in
``poll``; async, so its commit is awaited without blocking heartbeats.

* **revoke**: take the emit lock (so no delivery is half-way), retire the
  partitions' generation (in-flight work for them is dropped, never emitted),
  and commit what was done for them before the partitions move.
* **lost** (the group moved on without us): drop in-flight work, commit nothing.
* **assign**: fresh generations; a partition that came straight back to this
  consumer is rewound to the first record dropped at the revoke, because
  kafka-python keeps its fetch position across the rebalance and would skip the
  dropped records otherwise.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata, TopicPartition

from worker.ops.metrics import WorkerMetrics
from worker.runtime.offsets import OffsetTracker

log = structlog.get_logger(__name__)


def _names(tps: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in tps)


class RebalanceListener(AsyncConsumerRebalanceListener):
    def __init__(self, tracker: OffsetTracker, emit_lock: threading.Lock, metrics: WorkerMetrics) -> None:
        self.tracker = tracker
        self.emit_lock = emit_lock
        self.metrics = metrics
        self.consumer: KafkaConsumer | None = None  # set once the consumer exists (it needs the listener first)
        self.assigned_at: float | None = None  # when partitions were last assigned (idle exit counts from the first)
        self._restart_at: dict[TopicPartition, int] = {}

    async def on_partitions_revoked(self, revoked: Any) -> None:
        offsets = self._revoke(set(revoked), lost=False)
        if offsets and self.consumer is not None:
            try:
                await self.consumer.commit_async(offsets)
                self.committed(offsets)
                log.info("revoke_committed", offsets={f"{tp.topic}/{tp.partition}": om.offset for tp, om in offsets.items()})
            except Exception as exc:  # the next owner replays from the previous commit: duplicates, not gaps
                self.metrics.commits.inc(1, "failed")
                log.warning("revoke_commit_failed", error=str(exc)[:300])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        tps = set(assigned)
        self.tracker.assign(tps)
        if tps:
            self.assigned_at = time.monotonic()
        restart = {tp: off for tp, off in self._restart_at.items() if tp in tps}
        self._restart_at = {}
        self.metrics.rebalances.inc(1, "assigned")
        log.info("partitions_assigned", partitions=_names(tps), rewound={str(tp.partition): o for tp, o in restart.items()})
        for tp, offset in restart.items():
            assert self.consumer is not None
            self.consumer.seek(tp, offset)  # local state, safe on the IO thread

    async def on_partitions_lost(self, lost: Any) -> None:
        self._revoke(set(lost), lost=True)

    def committed(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.tracker.committed(offsets)
        self.metrics.commits.inc(1, "ok")

    def _revoke(self, tps: set[TopicPartition], lost: bool) -> dict[TopicPartition, OffsetAndMetadata]:
        # The emit lock waits out a delivery in progress, so after this returns no record of these partitions is emitted.
        with self.emit_lock:
            before = self.tracker.in_flight
            offsets, self._restart_at = self.tracker.revoke(tps)
            dropped = before - self.tracker.in_flight
        self.metrics.rebalances.inc(1, "lost" if lost else "revoked")
        log.info("partitions_revoked", partitions=_names(tps), in_flight_dropped=dropped, lost=lost)
        return {} if lost else offsets
