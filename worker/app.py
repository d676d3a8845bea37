"""The worker application: consume uploads, produce verdicts, commit after acknowledgement.

Checkpoint order per batch (the at-least-once contract):
  1. every outcome (verdict or dead letter) is handed to the producer,
  2. the producer is flushed and each send is confirmed by the broker (acks=all),
  3. only then are the batch's offsets committed.
A crash anywhere before 3 replays the batch; verdicts are idempotent (same
upload id, same content hash, same bundle -> same verdict, mostly from the
cache), so replay costs duplicates, never gaps.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import structlog
from kafka import OffsetAndMetadata, TopicPartition
from kafka.errors import CommitFailedError, KafkaError

from worker.bundle import LoadedBundle
from worker.cache import VerdictCache
from worker.config import WorkerConfig
from worker.kafka_io import ensure_topics, make_consumer, make_producer
from worker.pipeline import BatchProcessor, Outcome
from worker.wire import InputRecord

log = structlog.get_logger(__name__)


class DeliveryError(RuntimeError):
    """The broker did not acknowledge an outcome; the batch must not be committed."""


class WorkerApp:
    """Owns the bundle, cache, decode pool and Kafka clients of one worker process."""

    def __init__(self, cfg: WorkerConfig) -> None:
        if cfg.bundle is None:
            raise SystemExit("no model bundle given: --bundle PATH or AIGIS_BUNDLE")
        self.cfg = cfg
        self.bundle = LoadedBundle(cfg.bundle, cfg.provider_list, cfg.intra_op_threads)
        self.cache = VerdictCache(cfg.redis_url, self.bundle.sha256, cfg.cache_ttl_s, cfg.redis_timeout_s) if cfg.redis_url else None
        self.pool = ThreadPoolExecutor(cfg.decode_threads, thread_name_prefix="decode")
        self.processor = BatchProcessor(cfg, self.bundle, self.cache, self.pool)
        self._stop = False
        self.stats = {"records": 0, "verdicts": 0, "dead_letters": 0, "batches": 0}
        log.info(
            "bundle_loaded",
            bundle=self.bundle.ref.name,
            version=self.bundle.ref.version,
            sha256=self.bundle.sha256,
            providers=self.bundle.providers,
            calibrated=self.bundle.manifest.calibration.calibrated,
        )

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        log.info("stop_requested", signal=signum)
        self._stop = True

    def _collect(self, consumer) -> list[InputRecord]:  # type: ignore[no-untyped-def]
        """Poll until max_batch records or max_wait_ms after the first one arrived."""
        records: list[InputRecord] = []
        deadline: float | None = None
        while len(records) < self.cfg.max_batch and not self._stop:
            timeout_ms = 200 if deadline is None else int(max(0.0, deadline - time.monotonic()) * 1000)
            polled = consumer.poll(timeout_ms=timeout_ms, max_records=self.cfg.max_batch - len(records))
            for batch in polled.values():
                records.extend(InputRecord.from_kafka(r) for r in batch)
            if not records:
                return records
            if deadline is None:
                deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
            if time.monotonic() >= deadline:
                break
        return records

    def _publish(self, producer, outcomes: list[Outcome]) -> None:  # type: ignore[no-untyped-def]
        futures = []
        for o in outcomes:
            topic = self.cfg.verdict_topic if o.verdict is not None else self.cfg.dead_letter_topic
            futures.append((o, producer.send(topic, key=o.key, value=o.value())))
        producer.flush()
        for o, fut in futures:
            try:
                fut.get(timeout=30)
            except KafkaError as exc:
                raise DeliveryError(f"broker did not acknowledge outcome for {o.upload_id!r}: {exc}") from exc

    @staticmethod
    def _offsets(records: list[InputRecord]) -> dict[TopicPartition, OffsetAndMetadata]:
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            last[tp] = max(last.get(tp, -1), r.offset)
        return {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in last.items()}

    def _log_outcomes(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            r = o.record
            if o.verdict is not None:
                v = o.verdict
                log.info(
                    "verdict",
                    upload_id=v.upload_id,
                    label=v.label.value,
                    score=round(v.score, 5),
                    cache=v.cache.value,
                    partition=r.partition,
                    offset=r.offset,
                    total_ms=round(v.timings.total_ms, 2),
                )

    def run(self) -> int:
        cfg = self.cfg
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if cfg.create_topics:
            ensure_topics(
                cfg.bootstrap_servers,
                [cfg.input_topic, cfg.verdict_topic, cfg.dead_letter_topic],
                cfg.topic_partitions,
                cfg.max_image_bytes,
            )
        consumer = make_consumer(
            cfg.bootstrap_servers,
            cfg.input_topic,
            cfg.group_id,
            cfg.max_image_bytes,
            cfg.client_id,
            auto_offset_reset=cfg.auto_offset_reset,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=min(cfg.heartbeat_interval_ms, cfg.session_timeout_ms // 3),
            max_poll_interval_ms=cfg.max_poll_interval_ms,
        )
        producer = make_producer(cfg.bootstrap_servers, cfg.max_image_bytes, cfg.client_id)
        log.info("worker_started", input_topic=cfg.input_topic, group_id=cfg.group_id, max_batch=cfg.max_batch)
        last_input = time.monotonic()
        try:
            while not self._stop:
                records = self._collect(consumer)
                if not records:
                    if cfg.exit_when_idle_s and time.monotonic() - last_input > cfg.exit_when_idle_s:
                        log.info("idle_exit", idle_s=cfg.exit_when_idle_s)
                        break
                    continue
                last_input = time.monotonic()
                outcomes = self.processor.process(records)
                self._publish(producer, outcomes)
                self._log_outcomes(outcomes)
                try:
                    consumer.commit(self._offsets(records))
                except CommitFailedError as exc:
                    # The group rebalanced under us: the new owner replays these records.
                    log.warning("commit_failed_rebalanced", error=str(exc))
                self.stats["records"] += len(records)
                self.stats["batches"] += 1
                self.stats["verdicts"] += sum(o.verdict is not None for o in outcomes)
                self.stats["dead_letters"] += sum(o.dead_letter is not None for o in outcomes)
        finally:
            producer.flush(timeout=10)
            producer.close(timeout=10)
            consumer.close()  # leaves the group so partitions move at once
            self.pool.shutdown(wait=False, cancel_futures=True)
            if self.cache:
                self.cache.close()
            log.info("worker_stopped", **self.stats)
        return 0
