"""Checkpointing: commit the contiguous done prefix of each partition, never more.

Only offsets whose outcomes the broker acknowledged are done (see
:mod:`worker.runtime.delivery`), so whatever is committed here can be skipped
by the next owner without losing an upload. In the poll loop the commit is
asynchronous with one in flight: a synchronous commit is a broker round trip
during which the loop cannot poll (a few ms per batch, most of the low-load
latency budget). The last commit at close, and the revoke listener's, wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from worker.ops.metrics import WorkerMetrics
from worker.runtime.offsets import OffsetTracker

log = structlog.get_logger(__name__)

#: An asynchronous commit unanswered for this long is given up on (the client's request timeout is 30 s).
COMMIT_ANSWER_S = 35.0


class Checkpoint:
    def __init__(self, tracker: OffsetTracker, on_committed: Callable[[dict[TopicPartition, OffsetAndMetadata]], None], metrics: WorkerMetrics) -> None:
        self.tracker = tracker
        self.on_committed = on_committed
        self.metrics = metrics
        self._commit_in_flight = False
        self._commit_started = 0.0

    def commit(self, consumer: KafkaConsumer, wait: bool = False) -> None:
        """Commit the done prefix; asynchronously in the loop (one commit in flight), synchronously at the end.

        A synchronous commit is a broker round trip during which the loop cannot
        poll (a few ms per batch, most of the low-load latency budget); the
        asynchronous one returns at once and its acknowledgement updates the
        tracker when it comes. Either way only acknowledged outcomes are ever
        committed, so a crash replays, never skips.
        """
        if not wait and self._commit_in_flight and time.monotonic() - self._commit_started < COMMIT_ANSWER_S:
            return
        offsets = self.tracker.to_commit()
        if not offsets:
            return
        if not wait:
            self._commit_in_flight, self._commit_started = True, time.monotonic()
            # A clock pair, not metrics.timed(): the commit's time ends in the callback, which fires
            # on a later poll, long after this block has returned.
            started = time.perf_counter()

            def done(_offsets: object, result: object) -> None:
                self._commit_in_flight = False
                self.metrics.stage_seconds.observe(time.perf_counter() - started, "commit")
                if isinstance(result, Exception):
                    self._commit_failed(result)
                else:
                    self.on_committed(offsets)

            try:
                consumer.commit_async(offsets, callback=done)
            except KafkaError as exc:
                self._commit_in_flight = False
                self._commit_failed(exc)
            return
        with self.metrics.timed("commit"):
            try:
                consumer.commit(offsets, timeout_ms=10_000)
            except KafkaError as exc:
                self._commit_failed(exc)
                return
        self.on_committed(offsets)

    def _commit_failed(self, exc: BaseException) -> None:
        # Rebalancing or broker away: the done prefix stays done and is committed next time
        # (or by the revoke listener); a crash before then replays, never skips.
        self.metrics.commits.inc(1, "failed")
        log.warning("commit_failed", error=str(exc)[:300])
