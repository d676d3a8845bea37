"""The poll loop: the only thread that touches the consumer (kafka-python consumers are not thread-safe).

Each turn: beat liveness, apply backpressure, poll, hand records to the
pipeline, commit the done prefix, and once a second export lag and the group
coordinator's heartbeat age. It keeps polling while batches compute, so
``max.poll.interval.ms`` is never at risk however slow inference is; it pauses
every assigned partition when ``max_in_flight`` records are in the pipeline and
resumes at half.

Stopping (SIGTERM, idle exit, a crash): take no more records, let the stages
drain within ``shutdown_grace_s``, then commit and leave the group (the
revoke listener commits what the last deliveries finished).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import MemberState

from worker.ingest.wire import InputRecord
from worker.ops.health import Liveness
from worker.ops.metrics import WorkerMetrics
from worker.runtime.checkpoint import Checkpoint
from worker.runtime.lifecycle import EXIT_FATAL, EXIT_GRACE_EXPIRED, EXIT_OK, Lifecycle
from worker.runtime.offsets import OffsetTracker
from worker.runtime.rebalance import RebalanceListener
from worker.runtime.work import Work

log = structlog.get_logger(__name__)


class PollLoop:
    """Owns the consumer (context manager: created on enter, committed and closed on exit)."""

    def __init__(
        self,
        *,
        connect: Callable[[RebalanceListener], KafkaConsumer],
        tracker: OffsetTracker,
        emit_lock: threading.Lock,
        inbox: queue.Queue[Work],
        lifecycle: Lifecycle,
        liveness: Liveness,
        metrics: WorkerMetrics,
        max_in_flight: int,
        heartbeat_interval_ms: int,
        exit_when_idle_s: float,
        stages_alive: Callable[[], bool],
        each_second: Callable[[], None] = lambda: None,
    ) -> None:
        self._connect = connect
        self.tracker = tracker
        self.inbox = inbox
        self.lifecycle = lifecycle
        self.liveness = liveness
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.heartbeat_limit_s = max(3 * heartbeat_interval_ms / 1000, 1.0)
        self.exit_when_idle_s = exit_when_idle_s
        self.stages_alive = stages_alive
        self.each_second = each_second
        self.listener = RebalanceListener(tracker, emit_lock, metrics)
        self.checkpoint = Checkpoint(tracker, self.listener.committed, metrics)
        self.consumer: KafkaConsumer | None = None
        self._member_stable = False
        self._heartbeat_age: float | None = None
        self._last_input: float | None = None

    def __enter__(self) -> PollLoop:
        self.consumer = self.listener.consumer = self._connect(self.listener)
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        if self.consumer is not None:
            self.checkpoint.commit(self.consumer, wait=True)
            self.consumer.close(autocommit=False, timeout_ms=10_000)  # revoke listener commits the rest, then leaves the group

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        """Poll until stopped and drained; returns the process exit code."""
        consumer = self.consumer
        assert consumer is not None, "use PollLoop as a context manager"
        deadline: float | None = None
        last_second = 0.0
        code = EXIT_OK
        while True:
            self.liveness.beat()
            if self.lifecycle.stop.is_set() and deadline is None:
                deadline = time.monotonic() + self.lifecycle.shutdown_grace_s
                log.info("draining", in_flight=self.tracker.in_flight, grace_s=self.lifecycle.shutdown_grace_s)
            self._poll(consumer)
            self.checkpoint.commit(consumer)
            now = time.monotonic()
            if now - last_second >= 1.0:
                self._each_second(consumer)
                last_second = now
            if deadline is not None and not self.stages_alive():
                break
            if deadline is not None and now > deadline:
                log.warning("grace_expired", in_flight=self.tracker.in_flight)
                self.lifecycle.abort.set()
                code = EXIT_GRACE_EXPIRED
                break
            if deadline is None and self._idle(now):
                log.info("idle_exit", idle_s=self.exit_when_idle_s)
                self.lifecycle.request_stop()
        self.lifecycle.stop.set()
        return EXIT_FATAL if self.lifecycle.fatal is not None else code

    def _poll(self, consumer: KafkaConsumer) -> None:
        paused = self._backpressure(consumer)
        if paused:
            # Nothing can be fetched: wake as soon as the pipeline finishes something (to commit it and
            # resume), instead of sleeping out a poll timeout that would cap throughput at
            # max_in_flight records per timeout.
            self.lifecycle.progress.wait(0.1)
            self.lifecycle.progress.clear()
        room = self.max_in_flight - self.tracker.in_flight
        polled = consumer.poll(timeout_ms=0 if paused else 100, max_records=max(1, room))
        if not self.lifecycle.stop.is_set():
            self._take(polled)
        self._member_stable = consumer.group_metadata().state == MemberState.STABLE

    def _take(self, polled: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in polled.items():
            gen = self.tracker.added(tp, [r.offset for r in records])
            if gen is None:  # not ours (any more): never handed over, never committed
                continue
            for r in records:
                self.inbox.put(Work(InputRecord.from_kafka(r), tp, gen))
            self.metrics.messages_in.inc(len(records), tp.topic)
            self.lifecycle.stats.records += len(records)
        if polled:
            self._last_input = time.monotonic()

    def _idle(self, now: float) -> bool:
        """Exit-when-idle: no input for that long, counted from the first assignment, nothing in flight."""
        if not self.exit_when_idle_s or self.listener.assigned_at is None or self.tracker.in_flight:
            return False
        last = max(self._last_input or 0.0, self.listener.assigned_at)
        return now - last > self.exit_when_idle_s

    def _backpressure(self, consumer: KafkaConsumer) -> bool:
        """Pause every assigned partition at max_in_flight, resume at half; True while paused."""
        assigned = consumer.assignment() or set()
        paused = consumer.paused()
        in_flight = self.tracker.in_flight
        if self.lifecycle.stop.is_set() or in_flight >= self.max_in_flight:
            to_pause = assigned - paused
            if to_pause:
                consumer.pause(*to_pause)
                log.debug("partitions_paused", in_flight=in_flight)
        elif paused and in_flight <= self.max_in_flight // 2:
            consumer.resume(*paused)
            log.debug("partitions_resumed", in_flight=in_flight)
        self.metrics.in_flight.set(in_flight)
        now_paused = consumer.paused()
        self.metrics.paused.set(len(now_paused))
        self.metrics.assigned.set(len(assigned))
        return bool(now_paused)

    def _each_second(self, consumer: KafkaConsumer) -> None:
        lag: dict[tuple[str, ...], float] = {}
        for tp in consumer.assignment() or ():
            try:
                hw = consumer.highwater(tp)
                pos = consumer.position(tp, timeout_ms=100)
            except KafkaError:
                continue
            if hw is not None and pos is not None:
                lag[(tp.topic, str(tp.partition))] = max(0, hw - pos)
        self.metrics.consumer_lag.replace(lag)
        self.metrics.consumer_lag_sum.set(sum(lag.values()))
        self._heartbeat_age = _last_heartbeat(consumer)
        self.each_second()
        log.debug(
            "loop_status",
            assigned=sorted(tp.partition for tp in consumer.assignment() or ()),
            paused=sorted(tp.partition for tp in consumer.paused()),
            tracked=sorted(tp.partition for tp in self.tracker.assigned()),
            in_flight=self.tracker.in_flight,
            lag=self.metrics.consumer_lag_sum.value(),
            inbox=self.inbox.qsize(),
        )

    # -- readiness -----------------------------------------------------------------------
    def readiness_problems(self) -> list[str]:
        out = []
        if self.lifecycle.stop.is_set():
            out.append("draining for shutdown")
        if not self._member_stable:
            out.append("not a stable member of the consumer group (joining or rebalancing)")
        if self._heartbeat_age is None or self._heartbeat_age > self.heartbeat_limit_s:
            out.append(f"no heartbeat answered by the group coordinator for {self._heartbeat_age or 0:.1f}s (broker unreachable?)")
        return out


def _last_heartbeat(consumer: KafkaConsumer) -> float | None:
    """Seconds since the group coordinator last answered a heartbeat (kafka-python's own metric)."""
    try:
        age = consumer.metrics().get("consumer-coordinator-metrics", {}).get("last-heartbeat-seconds-ago")
    except Exception:  # metrics are a convenience; never let them stop the loop
        return None
    return float(age) if age is not None and age >= 0 else None
