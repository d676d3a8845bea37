"""Delivery: produce a batch's outcomes, wait for every acknowledgement, then mark their offsets done.

Contract: outcomes produced -> producer flushed and each send acknowledged
(acks=all) -> offsets marked done -> the poll thread commits the contiguous done
prefix. A crash anywhere replays from the last commit: duplicates, never gaps.

Per record, not per batch: an acknowledged outcome is marked done at once and
never sent again; only the ones that failed are retried.

* A broker that is away (timeouts, no leader, connection errors: anything
  kafka-python calls retriable, and anything we cannot attribute to one
  record) is waited out with backoff, for as long as it takes or until the
  worker aborts. The producer is recreated after such a failure: kafka-python's
  idempotent producer enters a fatal state it never leaves when, e.g., a
  restarted broker fails its InitProducerId.
* A broker that refuses *one record* (too large, invalid, corrupt) would
  otherwise stop its partition for good. After ``max_record_attempts`` refusals
  the outcome is replaced by the minimal dead letter; if even that is refused as
  often, the record is counted (``aigis_outcomes_dropped_total``), logged and
  committed past. :mod:`worker.pipeline.outcomes` already sizes every outcome to
  the producer's limit, so this is the last line, not the first.
"""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import structlog
from kafka import KafkaProducer, TopicPartition
from kafka.errors import CorruptRecordError, InvalidRecordError, KafkaError, KafkaTimeoutError, MessageSizeTooLargeError, RecordListTooLargeError

from schemas import DriftReport, ErrorCode
from worker.ops.health import Liveness
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.outcomes import Outcome, minimal_dead_letter
from worker.runtime.lifecycle import Lifecycle
from worker.runtime.offsets import OffsetTracker
from worker.runtime.work import Work

log = structlog.get_logger(__name__)

#: Errors that are about one record, not about the broker: retrying the same bytes cannot help.
RECORD_REFUSALS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, CorruptRecordError)


@dataclass
class _Pending:
    work: Work
    outcome: Outcome
    refusals: int = 0
    minimal: bool = False


class Deliverer:
    """Owns the producer (context manager); ``deliver`` is the deliver stage's one call.

    ``connect`` makes a producer (:func:`worker.runtime.clients.make_producer` with the worker's settings);
    it is called again after a broker failure.
    """

    def __init__(
        self,
        *,
        connect: Callable[[], KafkaProducer],
        verdict_topic: str,
        dead_letter_topic: str,
        drift_topic: str,
        tracker: OffsetTracker,
        emit_lock: threading.Lock,
        lifecycle: Lifecycle,
        liveness: Liveness,
        metrics: WorkerMetrics,
        max_record_attempts: int = 3,
    ) -> None:
        self._connect = connect
        self.topics = (verdict_topic, dead_letter_topic)
        self.drift_topic = drift_topic
        self.tracker = tracker
        self.emit_lock = emit_lock
        self.lifecycle = lifecycle
        self.liveness = liveness
        self.metrics = metrics
        self.max_record_attempts = max_record_attempts
        self.producer: KafkaProducer | None = None

    def __enter__(self) -> Deliverer:
        self.producer = self._connect()
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        if self.producer is not None:
            self.producer.close(timeout=5)

    def deliver(self, works: Sequence[Work], outcomes: Sequence[Outcome]) -> None:
        """Produce every outcome until acknowledged (or given up per record, see the module docstring)."""
        pending = [_Pending(w, o) for w, o in zip(works, outcomes, strict=True)]
        backoff = 0.2
        while pending and not self.lifecycle.abort.is_set():
            self.liveness.busy("deliver")  # waiting for an absent broker is waiting, not a wedged stage
            with self.emit_lock, self.metrics.timed("deliver"):
                live = [p for p in pending if self.tracker.is_current(p.work.tp, p.work.generation)]
                self.count_stale(len(pending) - len(live))
                errors = self._send([p.outcome for p in live])
                self._mark_done([(p.work, p.outcome) for p, err in zip(live, errors, strict=True) if err is None])
            pending, trouble = [], None
            for p, err in zip(live, errors, strict=True):
                if err is None:
                    continue
                if not isinstance(err, RECORD_REFUSALS):
                    trouble = err
                    pending.append(p)
                elif self._refused(p, err):
                    pending.append(p)
            if trouble is not None and pending:
                self.metrics.delivery_retries.inc()
                log.warning("delivery_failed_retrying", error=str(trouble)[:300], records=len(pending), backoff_s=backoff)
                self._reconnect()
                self.lifecycle.abort.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def publish_reports(self, reports: Sequence[DriftReport]) -> None:
        """Best effort: a drift report that cannot be delivered is logged (its gauges and warning line stay), never retried."""
        if not reports or self.producer is None:
            return
        try:
            futures = [self.producer.send(self.drift_topic, key=r.bundle.sha256.encode(), value=r.model_dump_json().encode()) for r in reports]
            self.producer.flush(timeout=10)
            for fut in futures:
                fut.get(timeout=0)
        except KafkaError as exc:
            log.warning("drift_report_not_delivered", reports=len(reports), error=str(exc)[:300])

    def _refused(self, p: _Pending, err: Exception) -> bool:
        """The broker refused this record: retry, reduce to the minimal dead letter, or give up. True to send again."""
        p.refusals += 1
        rec = p.outcome.record
        if p.refusals < self.max_record_attempts:
            return True
        if not p.minimal:
            value = rec.value or b""
            p.outcome = minimal_dead_letter(rec, ErrorCode.outcome_refused, hashlib.sha256(value).hexdigest(), len(value))
            p.minimal, p.refusals = True, 0
            self.metrics.outcomes_reduced.inc(1, "refused_by_broker")
            log.warning("outcome_refused_reduced", partition=rec.partition, offset=rec.offset, error=str(err)[:300])
            return True
        self.metrics.outcomes_dropped.inc(1, type(err).__name__)
        self.lifecycle.stats.dropped += 1
        log.error("outcome_dropped", partition=rec.partition, offset=rec.offset, error=str(err)[:300], attempts=2 * self.max_record_attempts)
        with self.emit_lock:
            if self.tracker.is_current(p.work.tp, p.work.generation):
                self.tracker.complete(p.work.tp, p.work.generation, [rec.offset])
                self.lifecycle.progress.set()
        return False

    def _send(self, outcomes: Sequence[Outcome]) -> list[Exception | None]:
        """One produce round: None per acknowledged outcome, the error for the others."""
        if self.producer is None:
            return [KafkaTimeoutError("no producer (broker unreachable when it was created)")] * len(outcomes)
        verdicts, dead = self.topics
        sent: list[Any] = []
        for o in outcomes:
            try:
                sent.append(self.producer.send(verdicts if o.verdict is not None else dead, key=o.key, value=o.payload))
            except KafkaError as exc:  # too large for this producer, or no metadata within max_block_ms
                sent.append(exc)
        try:
            self.producer.flush(timeout=30)
        except KafkaError:
            pass  # the futures that did not complete say so below
        out: list[Exception | None] = []
        for fut in sent:
            if isinstance(fut, Exception):
                out.append(fut)
            elif not fut.is_done:
                out.append(KafkaTimeoutError("not acknowledged within the flush timeout"))
            else:
                out.append(fut.exception if fut.failed() else None)
        return out

    def _mark_done(self, done: list[tuple[Work, Outcome]]) -> None:
        if not done:
            return
        by_part: dict[tuple[TopicPartition, int], list[int]] = defaultdict(list)
        for w, o in done:
            by_part[(w.tp, w.generation)].append(w.record.offset)
            if o.verdict is not None:
                self.metrics.verdicts.inc(1, o.verdict.label.value, o.verdict.cache.value)
                log.debug(
                    "verdict",
                    upload_id=o.verdict.upload_id,
                    label=o.verdict.label.value,
                    score=round(o.verdict.score, 5),
                    cache=o.verdict.cache.value,
                    partition=o.record.partition,
                    offset=o.record.offset,
                )
            elif o.dead_letter is not None:
                self.metrics.dead_letters.inc(1, o.dead_letter.error_code.value)
        for (tp, gen), offsets in by_part.items():
            self.tracker.complete(tp, gen, offsets)
        stats = self.lifecycle.stats
        stats.batches += 1
        stats.verdicts += sum(o.verdict is not None for _, o in done)
        stats.dead_letters += sum(o.dead_letter is not None for _, o in done)
        self.lifecycle.progress.set()

    def count_stale(self, n: int) -> None:
        """Records dropped because their partition was revoked while they were in the pipeline."""
        if n:
            self.metrics.stale_dropped.inc(n)
            self.lifecycle.stats.stale_dropped += n

    def _reconnect(self) -> None:
        """Replace the producer after a failed delivery (only the deliver stage produces: no lock needed)."""
        old, self.producer = self.producer, None
        try:
            if old is not None:
                old.close(timeout=0)
        except Exception:
            pass
        try:
            self.producer = self._connect()
        except KafkaError as exc:  # broker still away: the next attempt tries again
            log.warning("producer_recreate_failed", error=str(exc)[:300])
