"""The worker runtime: a poll thread that owns the consumer, and a three-stage pipeline.

Threads and hand-offs::

    poll (main) ──inbox──► prepare ──(1)──► infer ──(1)──► deliver
      ▲  consumer.poll / pause / resume / commit          │ produce, flush, ack
      └──────────── OffsetTracker (done offsets) ◄─────────┘

* **poll** is the only thread that touches the consumer (kafka-python
  consumers are not thread-safe). It keeps polling while batches compute, so
  ``max.poll.interval.ms`` is never at risk however slow inference is; it
  hands records to the pipeline through the inbox, pauses every assigned
  partition when ``max_in_flight`` records are in the pipeline and resumes at
  half, commits the tracker's contiguous done offsets, and exports lag.
* **prepare** forms micro-batches (``--max-batch`` / ``--max-wait-ms``) and runs
  parse, fetch, sha256, Redis MGET and the decode/preprocess fan-out in the
  decode pool; **infer** runs ONNX Runtime (overlapping the next batch's
  decode), the shadow bundle and the Redis SET; **deliver** produces verdicts
  and dead letters, waits for every acknowledgement, and only then marks the
  offsets done. Queues of one between stages bound the memory held.

Delivery contract: outcomes produced -> producer flushed and every send
acknowledged (acks=all) -> offsets marked done -> the poll thread commits the
contiguous done prefix per partition. A crash anywhere replays from the last
commit: duplicates, never gaps. Verdicts are idempotent (same upload id, same
content hash, same bundle -> same verdict, mostly from the cache).

Rebalances: the listener runs on the consumer's IO thread while the poll thread
is blocked in ``poll``. On revoke it takes the emit lock (so no deliver is
half-way), retires the partitions' generation (in-flight work for them is
dropped, never emitted), and commits what was done for them before the
partitions move. SIGTERM drains: stop taking records, let the pipeline finish
and deliver what it holds, commit, leave the group, exit, all within
``--shutdown-grace-s``.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from types import FrameType

import structlog
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import MemberState

from worker.cache.circuit import CircuitBreaker
from worker.cache.verdicts import VerdictCache
from worker.config import WorkerConfig
from worker.ingest.decode_pool import DecodePool
from worker.ingest.wire import InputRecord
from worker.model.bundle import LoadedBundle
from worker.model.rollout import BundleWatcher
from worker.ops.health import HealthServer, Liveness
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.batch import BatchProcessor, Outcome, PreparedBatch
from worker.runtime.batcher import MicroBatcher
from worker.runtime.clients import ensure_topics, make_consumer, make_producer
from worker.runtime.offsets import OffsetTracker

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_GRACE_EXPIRED = 1
EXIT_FATAL = 2


class DeliveryError(RuntimeError):
    """The broker did not acknowledge an outcome; the batch must not be committed."""


@dataclass(frozen=True)
class Work:
    """A record in the pipeline, tagged with its partition's assignment generation."""

    record: InputRecord
    tp: TopicPartition
    generation: int


class _Rebalance(AsyncConsumerRebalanceListener):
    """Runs on the consumer's IO thread; async so the commit is awaited without blocking heartbeats."""

    def __init__(self, app: WorkerApp) -> None:
        self.app = app
        self.consumer: KafkaConsumer | None = None

    async def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
        offsets = self.app.revoke(set(revoked), lost=False)
        if offsets and self.consumer is not None:
            try:
                await self.consumer.commit_async(offsets)
                self.app.tracker_committed(offsets)
                log.info("revoke_committed", offsets={f"{tp.topic}/{tp.partition}": om.offset for tp, om in offsets.items()})
            except Exception as exc:  # the next owner replays from the previous commit: duplicates, not gaps
                self.app.metrics.commits.inc(1, "failed")
                log.warning("revoke_commit_failed", error=str(exc)[:300])

    async def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
        restart = self.app.assign(set(assigned))
        for tp, offset in restart.items():
            # Back to the first record dropped at the revoke; seek is local state, safe on the IO thread.
            assert self.consumer is not None
            self.consumer.seek(tp, offset)

    async def on_partitions_lost(self, lost):  # type: ignore[no-untyped-def]
        self.app.revoke(set(lost), lost=True)


class WorkerApp:
    """Owns the bundle(s), cache, decode pool, Kafka clients and threads of one worker process."""

    def __init__(self, cfg: WorkerConfig) -> None:
        if cfg.bundle is None:
            raise SystemExit("no model bundle given: --bundle PATH or AIGIS_BUNDLE")
        self.cfg = cfg
        self.metrics = WorkerMetrics()
        self.liveness = Liveness(cfg.liveness_timeout_s)
        self.pool = DecodePool(cfg.decode_threads)
        self.cache: VerdictCache | None = None
        if cfg.redis_url:
            breaker = CircuitBreaker(cfg.cache_breaker_failures, cfg.cache_breaker_reset_s, on_change=self._breaker_changed)
            self.cache = VerdictCache(
                cfg.redis_url, "", cfg.cache_ttl_s, cfg.redis_timeout_s, breaker=breaker, on_error=lambda op: self.metrics.cache_errors.inc(1, op)
            )
        self.watcher = BundleWatcher(cfg, self._swap, self.metrics)
        self.processor = self._processor(self.watcher.primary, self.watcher.shadow)
        self.tracker = OffsetTracker()
        self.emit_lock = threading.Lock()
        self.max_in_flight = cfg.max_in_flight or 4 * cfg.max_batch
        self.inbox: queue.Queue[Work] = queue.Queue()
        self._to_infer: queue.Queue[tuple[list[Work], PreparedBatch] | None] = queue.Queue(maxsize=1)
        self._to_deliver: queue.Queue[tuple[list[Work], list[Outcome]] | None] = queue.Queue(maxsize=1)
        self._stop = threading.Event()  # SIGTERM/SIGINT or idle exit: begin draining
        self._abort = threading.Event()  # grace expired: give up on in-flight work
        self._progress = threading.Event()  # the deliver stage finished a batch (wakes a paused poll loop)
        self._fatal: BaseException | None = None
        self._member_stable = False
        self._heartbeat_age: float | None = None
        self._restart_at: dict[TopicPartition, int] = {}
        self._last_input = time.monotonic()
        self._ever_assigned = False
        self.producer = None
        self.stats = {"records": 0, "verdicts": 0, "dead_letters": 0, "batches": 0, "stale_dropped": 0}
        b = self.bundle
        log.info(
            "bundle_loaded",
            bundle=b.ref.name,
            version=b.ref.version,
            sha256=b.sha256,
            providers=b.providers,
            io_binding=b.io_binding,
            calibrated=b.manifest.calibration.calibrated,
            shadow=self.watcher.shadow.sha256 if self.watcher.shadow else None,
        )

    # -- bundles ------------------------------------------------------------------------
    @property
    def bundle(self) -> LoadedBundle:
        return self.processor.bundle

    def _processor(self, primary: LoadedBundle, shadow: LoadedBundle | None) -> BatchProcessor:
        return BatchProcessor(self.cfg, primary, self.cache, self.pool, shadow=shadow, metrics=self.metrics)

    def _swap(self, primary: LoadedBundle, shadow: LoadedBundle | None) -> None:
        self.processor = self._processor(primary, shadow)  # one attribute write: the next batch picks it up

    def _breaker_changed(self, state) -> None:  # type: ignore[no-untyped-def]
        self.metrics.cache_circuit.set(int(state))
        log.warning("cache_circuit", state=state.name)

    # -- signals ------------------------------------------------------------------------
    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if not self._stop.is_set():
            log.info("stop_requested", signal=signum, grace_s=self.cfg.shutdown_grace_s)
        self._stop.set()

    # -- rebalance (called on the consumer's IO thread) -----------------------------------
    def assign(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Start fresh generations; returns where to re-fetch partitions that came straight back to us."""
        self.tracker.assign(tps)
        if tps:
            self._last_input = time.monotonic()  # idle time counts from the first assignment, not from start-up
            self._ever_assigned = True
        restart = {tp: off for tp, off in self._restart_at.items() if tp in tps}
        self._restart_at = {}
        self.metrics.rebalances.inc(1, "assigned")
        log.info(
            "partitions_assigned", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in tps), rewound={str(tp.partition): o for tp, o in restart.items()}
        )
        return restart

    def revoke(self, tps: set[TopicPartition], lost: bool) -> dict:
        # The emit lock waits out a delivery in progress, so after this returns no record of these partitions is emitted.
        with self.emit_lock:
            before = self.tracker.in_flight
            offsets, restart = self.tracker.revoke(tps)
            dropped = before - self.tracker.in_flight
        self._restart_at = restart
        self.metrics.rebalances.inc(1, "lost" if lost else "revoked")
        log.info("partitions_revoked", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in tps), in_flight_dropped=dropped, lost=lost)
        return {} if lost else offsets

    def tracker_committed(self, offsets: dict) -> None:
        self.tracker.committed(offsets)
        self.metrics.commits.inc(1, "ok")

    # -- readiness ------------------------------------------------------------------------
    def readiness_problems(self) -> list[str]:
        out = []
        if self._stop.is_set():
            out.append("draining for shutdown")
        if not self._member_stable:
            out.append("not a stable member of the consumer group (joining or rebalancing)")
        limit = max(3 * self.cfg.heartbeat_interval_ms / 1000, 1.0)
        if self._heartbeat_age is None or self._heartbeat_age > limit:
            out.append(f"no heartbeat answered by the group coordinator for {self._heartbeat_age or 0:.1f}s (broker unreachable?)")
        return out

    def health_problems(self) -> list[str]:
        return self.liveness.problems() + self.pool.problems() + ([f"fatal: {self._fatal!r}"] if self._fatal else [])

    # -- pipeline stages -------------------------------------------------------------------
    def _stage(self, name: str, body) -> None:  # type: ignore[no-untyped-def]
        try:
            body()
        except BaseException as exc:  # a bug: stop cleanly, replay what is not committed
            self._fatal = exc
            log.exception("stage_crashed", stage=name)
            self._stop.set()
            self._abort.set()

    def _prepare_loop(self) -> None:
        batcher = MicroBatcher(self.inbox, self.cfg.max_batch, self.cfg.max_wait_ms, self._stop.is_set)
        try:
            while True:
                works = batcher.next_batch()
                if not works:
                    return
                live = [w for w in works if self.tracker.is_current(w.tp, w.generation)]
                self._count_stale(len(works) - len(live))
                if not live:
                    continue
                self.metrics.batch_size.observe(len(live))
                self.liveness.busy("prepare")
                pb = self.processor.prepare_batch([w.record for w in live])
                self.liveness.idle("prepare")
                self._to_infer.put((live, pb))
        finally:
            # Records still in the inbox when draining were never started: the next owner of their
            # partitions replays them from the committed offset.
            self._to_infer.put(None)

    def _infer_loop(self) -> None:
        try:
            while (item := self._to_infer.get()) is not None:
                works, pb = item
                if self._abort.is_set():
                    continue
                self.liveness.busy("infer")
                outcomes = pb.processor.finish_batch(pb)
                self.liveness.idle("infer")
                self._to_deliver.put((works, outcomes))
        finally:
            self._to_deliver.put(None)

    def _deliver_loop(self) -> None:
        while (item := self._to_deliver.get()) is not None:
            works, outcomes = item
            self.liveness.busy("deliver")
            self._deliver(works, outcomes)
            self.liveness.idle("deliver")

    def _count_stale(self, n: int) -> None:
        if n:
            self.metrics.stale_dropped.inc(n)
            self.stats["stale_dropped"] += n

    def _deliver(self, works: list[Work], outcomes: list[Outcome]) -> None:
        """Produce, await every ack, then mark done; retried while the broker is away, until aborted."""
        backoff = 0.2
        while not self._abort.is_set():
            self.liveness.busy("deliver")  # retrying against an absent broker is waiting, not a wedged stage
            with self.emit_lock:
                live = [(w, o) for w, o in zip(works, outcomes, strict=True) if self.tracker.is_current(w.tp, w.generation)]
                if not live:
                    self._count_stale(len(works))
                    return
                t0 = time.perf_counter()
                try:
                    self._produce([o for _, o in live])
                except DeliveryError as exc:
                    error = exc
                else:
                    self.metrics.stage_seconds.observe(time.perf_counter() - t0, "deliver")
                    self._count_stale(len(works) - len(live))
                    self._mark_done(live)
                    return
            self.metrics.delivery_retries.inc()
            log.warning("delivery_failed_retrying", error=str(error)[:300], records=len(live), backoff_s=backoff)
            self._new_producer()
            self._abort.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _new_producer(self) -> None:
        """Replace the producer after a failed delivery.

        kafka-python's idempotent producer enters a fatal state it never leaves
        when, e.g., a restarted broker fails its InitProducerId; a fresh
        producer is the reliable way back. Only the deliver stage produces, so
        the swap needs no lock.
        """
        old, self.producer = self.producer, None
        try:
            if old is not None:
                old.close(timeout=0)
        except Exception:
            pass
        try:
            self.producer = make_producer(self.cfg.bootstrap_servers, self.cfg.max_image_bytes, self.cfg.client_id)
        except KafkaError as exc:  # broker still away: the next attempt tries again
            log.warning("producer_recreate_failed", error=str(exc)[:300])

    def _produce(self, outcomes: list[Outcome]) -> None:
        if self.producer is None:
            raise DeliveryError("no producer (broker unreachable when it was created)")
        cfg = self.cfg
        try:
            futures = []
            for o in outcomes:
                topic = cfg.verdict_topic if o.verdict is not None else cfg.dead_letter_topic
                futures.append((o, self.producer.send(topic, key=o.key, value=o.value())))
            self.producer.flush(timeout=30)
            for _, fut in futures:
                fut.get(timeout=30)
        except KafkaError as exc:
            raise DeliveryError(f"broker did not acknowledge every outcome: {exc}") from exc

    def _mark_done(self, live: list[tuple[Work, Outcome]]) -> None:
        by_part: dict[tuple[TopicPartition, int], list[int]] = defaultdict(list)
        for w, o in live:
            by_part[(w.tp, w.generation)].append(w.record.offset)
            if o.verdict is not None:
                self.metrics.verdicts.inc(1, o.verdict.label.value, o.verdict.cache.value)
                log.debug(
                    "verdict",
                    upload_id=o.verdict.upload_id,
                    label=o.verdict.label.value,
                    score=round(o.verdict.score, 5),
                    cache=o.verdict.cache.value,
                    partition=w.record.partition,
                    offset=w.record.offset,
                )
            else:
                assert o.dead_letter is not None
                self.metrics.dead_letters.inc(1, o.dead_letter.error_code.value)
        for (tp, gen), offsets in by_part.items():
            self.tracker.complete(tp, gen, offsets)
        self._progress.set()
        self.stats["batches"] += 1
        self.stats["verdicts"] += sum(o.verdict is not None for _, o in live)
        self.stats["dead_letters"] += sum(o.dead_letter is not None for _, o in live)

    # -- the poll loop ---------------------------------------------------------------------
    def _commit(self, consumer: KafkaConsumer) -> None:
        offsets = self.tracker.to_commit()
        if not offsets:
            return
        t0 = time.perf_counter()
        try:
            consumer.commit(offsets, timeout_ms=10_000)
        except KafkaError as exc:
            # Rebalancing or broker away: the done prefix stays done and is committed next time
            # (or by the revoke listener); a crash before then replays, never skips.
            self.metrics.commits.inc(1, "failed")
            log.warning("commit_failed", error=str(exc)[:300])
            return
        self.tracker_committed(offsets)
        self.metrics.stage_seconds.observe(time.perf_counter() - t0, "commit")

    def _backpressure(self, consumer: KafkaConsumer) -> bool:
        """Pause every assigned partition at max_in_flight, resume at half; True while paused."""
        assigned = consumer.assignment() or set()
        paused = consumer.paused()
        in_flight = self.tracker.in_flight
        if self._stop.is_set() or in_flight >= self.max_in_flight:
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

    def _export_lag(self, consumer: KafkaConsumer) -> None:
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

    @staticmethod
    def _last_heartbeat(consumer: KafkaConsumer) -> float | None:
        """Seconds since the group coordinator last answered a heartbeat (kafka-python's own metric)."""
        try:
            age = consumer.metrics().get("consumer-coordinator-metrics", {}).get("last-heartbeat-seconds-ago")
        except Exception:  # metrics are a convenience; never let them stop the loop
            return None
        return float(age) if age is not None and age >= 0 else None

    def _take(self, polled: dict) -> None:  # type: ignore[type-arg]
        for tp, records in polled.items():
            gen = self.tracker.added(tp, [r.offset for r in records])
            if gen is None:  # not ours (any more): never handed over, never committed
                continue
            for r in records:
                self.inbox.put(Work(InputRecord.from_kafka(r), tp, gen))
            self.metrics.messages_in.inc(len(records), tp.topic)
            self.stats["records"] += len(records)
        if polled:
            self._last_input = time.monotonic()

    def _threads(self) -> list[threading.Thread]:
        return [
            threading.Thread(target=self._stage, args=("prepare", self._prepare_loop), name="stage-prepare", daemon=True),
            threading.Thread(target=self._stage, args=("infer", self._infer_loop), name="stage-infer", daemon=True),
            threading.Thread(target=self._stage, args=("deliver", self._deliver_loop), name="stage-deliver", daemon=True),
        ]

    def run(self) -> int:
        cfg = self.cfg
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self.watcher.request_reload)
        health = None
        if cfg.metrics_port:
            health = HealthServer(
                cfg.metrics_port, self.metrics, self.health_problems, self.readiness_problems, lambda: self.metrics.loop_age.set(self.liveness.loop_age())
            )
            health.start()
        if cfg.create_topics:
            ensure_topics(cfg.bootstrap_servers, [cfg.input_topic, cfg.verdict_topic, cfg.dead_letter_topic], cfg.topic_partitions, cfg.max_image_bytes)
        listener = _Rebalance(self)
        consumer = make_consumer(
            cfg.bootstrap_servers,
            cfg.input_topic,
            cfg.group_id,
            cfg.max_image_bytes,
            cfg.client_id,
            listener=listener,
            auto_offset_reset=cfg.auto_offset_reset,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=min(cfg.heartbeat_interval_ms, cfg.session_timeout_ms // 3),
            max_poll_interval_ms=cfg.max_poll_interval_ms,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
        )
        listener.consumer = consumer
        self.producer = make_producer(cfg.bootstrap_servers, cfg.max_image_bytes, cfg.client_id)
        threads = self._threads()
        for t in threads:
            t.start()
        self.watcher.start()
        log.info("worker_started", input_topic=cfg.input_topic, group_id=cfg.group_id, max_batch=cfg.max_batch, max_in_flight=self.max_in_flight)
        code = EXIT_OK
        drain_deadline: float | None = None
        last_lag = 0.0
        try:
            while True:
                self.liveness.beat()
                if self._stop.is_set() and drain_deadline is None:
                    drain_deadline = time.monotonic() + cfg.shutdown_grace_s
                    log.info("draining", in_flight=self.tracker.in_flight, grace_s=cfg.shutdown_grace_s)
                paused = self._backpressure(consumer)
                if paused:
                    # Nothing can be fetched: wake as soon as the pipeline finishes something (to commit it and
                    # resume), instead of sleeping out a poll timeout that would cap throughput at
                    # max_in_flight records per timeout.
                    self._progress.wait(0.1)
                    self._progress.clear()
                room = self.max_in_flight - self.tracker.in_flight
                polled = consumer.poll(timeout_ms=0 if paused else 100, max_records=max(1, room))
                if not self._stop.is_set():
                    self._take(polled)
                self._member_stable = consumer.group_metadata().state == MemberState.STABLE
                self._commit(consumer)
                now = time.monotonic()
                if now - last_lag >= 1.0:
                    self._export_lag(consumer)
                    self._heartbeat_age = self._last_heartbeat(consumer)
                    log.debug(
                        "loop_status",
                        assigned=sorted(tp.partition for tp in consumer.assignment() or ()),
                        paused=sorted(tp.partition for tp in consumer.paused()),
                        tracked=sorted(tp.partition for tp in self.tracker.assigned()),
                        in_flight=self.tracker.in_flight,
                        lag=self.metrics.consumer_lag_sum.value(),
                        inbox=self.inbox.qsize(),
                    )
                    self.metrics.decode_abandoned.set(self.pool.abandoned)
                    last_lag = now
                if drain_deadline is not None:
                    if not any(t.is_alive() for t in threads):
                        break
                    if now > drain_deadline:
                        log.warning("grace_expired", in_flight=self.tracker.in_flight)
                        self._abort.set()
                        code = EXIT_GRACE_EXPIRED
                        break
                elif cfg.exit_when_idle_s and self._ever_assigned and self.tracker.in_flight == 0 and now - self._last_input > cfg.exit_when_idle_s:
                    log.info("idle_exit", idle_s=cfg.exit_when_idle_s)
                    self.request_stop()
        finally:
            self._stop.set()
            if self._fatal is not None:
                code = EXIT_FATAL
            self._commit(consumer)
            consumer.close(autocommit=False, timeout_ms=10_000)  # revoke listener commits the rest, then leaves the group
            if self.producer is not None:
                self.producer.close(timeout=5)
            self.watcher.stop()
            self.pool.shutdown(wait=False, cancel_futures=True)
            if self.cache:
                self.cache.close()
            if health:
                health.stop()
            log.info("worker_stopped", exit_code=code, **self.stats)
        return code
