"""The worker process: its components, wired, and a run that reads as a few named calls.

One upload through the worker, file by file: ``runtime/loop.py`` polls it and
puts it in the inbox; ``runtime/stages.py`` batches it and calls
``pipeline/batch.py`` (``receive``: parse, fetch; ``prepare``: hash, cache
lookup, decode; ``finish``: inference, cache write), whose cache steps are in
``pipeline/caching.py``; ``pipeline/outcomes.py`` turns it into a verdict or
dead letter that always fits the producer; ``runtime/delivery.py``
produces it, waits for the acknowledgement and marks its offset done; the poll
loop commits the done prefix.

Every component is a context manager that owns one client or thread and is
given explicit parameters; :class:`WorkerApp` only builds them, in an
``ExitStack`` that tears them down in reverse order (consumer committed and
closed first, the health port last).
"""

from __future__ import annotations

import queue
import signal
import threading
from contextlib import ExitStack

import structlog

from worker.cache.circuit import CircuitBreaker, State
from worker.cache.verdicts import VerdictCache
from worker.config import WorkerConfig
from worker.ingest.decode_pool import DecodePool
from worker.ingest.fetcher import fetcher_from_config
from worker.model.rollout import Rollout, bundle_loader
from worker.ops.drift import DriftSettings
from worker.ops.health import HealthServer, Liveness
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.batch import BatchProcessor
from worker.pipeline.items import PipelineSettings
from worker.runtime.clients import ConsumerSettings, ensure_topics, make_producer
from worker.runtime.delivery import Deliverer
from worker.runtime.drift_reports import DriftReports
from worker.runtime.lifecycle import Lifecycle
from worker.runtime.loop import PollLoop
from worker.runtime.offsets import OffsetTracker
from worker.runtime.stages import Stages
from worker.runtime.work import Work

log = structlog.get_logger(__name__)


def drift_settings(cfg: WorkerConfig) -> DriftSettings | None:
    """The drift monitors' settings from the ``--drift-*`` options; None with ``--no-drift-monitor``."""
    if not cfg.drift_monitor:
        return None
    return DriftSettings(
        window_images=cfg.drift_window_images,
        window_s=cfg.drift_window_s,
        min_images=min(cfg.drift_min_images, cfg.drift_window_images),  # a window smaller than the minimum is judged when full
        eval_every=cfg.drift_eval_every,
        alpha=cfg.drift_alpha,
        psi_min=cfg.drift_psi_min,
        rate_min_excess=cfg.drift_rate_min_excess,
    )


class WorkerApp:
    """Builds the components of one worker process from its configuration and runs them."""

    def __init__(self, cfg: WorkerConfig) -> None:
        if cfg.bundle is None:
            raise SystemExit("no model bundle given: --bundle PATH or AIGIS_BUNDLE")
        self.cfg = cfg
        self.metrics = WorkerMetrics()
        self.liveness = Liveness(cfg.liveness_timeout_s)
        self.lifecycle = Lifecycle(cfg.shutdown_grace_s)
        self.tracker = OffsetTracker()
        self.emit_lock = threading.Lock()
        self.inbox: queue.Queue[Work] = queue.Queue()
        self.max_in_flight = cfg.max_in_flight or 4 * cfg.max_batch

    def run(self) -> int:
        cfg = self.cfg
        with ExitStack() as stack:
            rollout = stack.enter_context(self._rollout())
            pool = DecodePool(cfg.decode_threads)
            stack.callback(pool.shutdown, wait=False, cancel_futures=True)
            cache = stack.enter_context(self._cache()) if cfg.redis_url else None
            fetcher = stack.enter_context(fetcher_from_config(cfg))
            processor = BatchProcessor(PipelineSettings.from_config(cfg), rollout, cache, pool, self.metrics, fetcher)
            deliverer = self._deliverer()
            drift = DriftReports(drift_settings(cfg), rollout, self.metrics, cfg.client_id)
            stack.callback(drift.close)
            stages = self._stages(processor, deliverer, drift)
            loop = self._poll_loop(pool, stages)
            if cfg.metrics_port:
                stack.enter_context(self._health(pool, loop))
            if cfg.create_topics:
                topics = [cfg.input_topic, cfg.verdict_topic, cfg.dead_letter_topic, cfg.drift_topic]
                ensure_topics(cfg.bootstrap_servers, topics, cfg.topic_partitions, cfg.max_image_bytes)
            for component in (loop, deliverer, stages):  # consumer, producer, then the threads that use them
                stack.enter_context(component)
            self._install_signals(rollout)
            log.info("worker_started", input_topic=cfg.input_topic, group_id=cfg.group_id, max_batch=cfg.max_batch, max_in_flight=self.max_in_flight)
            code = loop.run()
        log.info("worker_stopped", exit_code=code, **self.lifecycle.stats.as_dict())
        return code

    # -- components ----------------------------------------------------------------------
    def _rollout(self) -> Rollout:
        cfg = self.cfg
        assert cfg.bundle is not None
        rollout = Rollout(
            cfg.bundle,
            cfg.shadow_bundle,
            bundle_loader(cfg.provider_list, cfg.intra_op_threads, cfg.intra_op_spinning),
            cfg.bundle_watch_interval_s,
            self.metrics,
        )
        m = rollout.current()
        b = m.primary
        log.info(
            "bundle_loaded",
            bundle=b.ref.name,
            version=b.ref.version,
            sha256=b.sha256,
            providers=b.providers,
            io_binding=b.io_binding,
            calibrated=b.manifest.calibration.calibrated,
            shadow=m.shadow.sha256 if m.shadow else None,
        )
        return rollout

    def _cache(self) -> VerdictCache:
        cfg = self.cfg

        def changed(state: State) -> None:
            self.metrics.cache_circuit.set(int(state))
            log.warning("cache_circuit", state=state.name)

        breaker = CircuitBreaker(cfg.cache_breaker_failures, cfg.cache_breaker_reset_s, on_change=changed)
        return VerdictCache(
            cfg.redis_url,
            cfg.cache_ttl_s,
            cfg.redis_timeout_s,
            breaker=breaker,
            on_error=lambda op: self.metrics.cache_errors.inc(1, op),
            scope=cfg.cache_scope,
            near_scan_limit=cfg.near_duplicate_scan_limit,
        )

    def _poll_loop(self, pool: DecodePool, stages: Stages) -> PollLoop:
        cfg = self.cfg

        return PollLoop(
            connect=ConsumerSettings.from_config(cfg).connect,
            tracker=self.tracker,
            emit_lock=self.emit_lock,
            inbox=self.inbox,
            lifecycle=self.lifecycle,
            liveness=self.liveness,
            metrics=self.metrics,
            max_in_flight=self.max_in_flight,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            exit_when_idle_s=cfg.exit_when_idle_s,
            stages_alive=stages.alive,
            each_second=lambda: self.metrics.decode_abandoned.set(pool.abandoned),
        )

    def _deliverer(self) -> Deliverer:
        cfg = self.cfg
        return Deliverer(
            connect=lambda: make_producer(cfg.bootstrap_servers, cfg.max_image_bytes, cfg.client_id),
            verdict_topic=cfg.verdict_topic,
            dead_letter_topic=cfg.dead_letter_topic,
            drift_topic=cfg.drift_topic,
            tracker=self.tracker,
            emit_lock=self.emit_lock,
            lifecycle=self.lifecycle,
            liveness=self.liveness,
            metrics=self.metrics,
        )

    def _stages(self, processor: BatchProcessor, deliverer: Deliverer, drift: DriftReports) -> Stages:
        return Stages(
            inbox=self.inbox,
            processor=processor,
            deliverer=deliverer,
            drift=drift,
            tracker=self.tracker,
            lifecycle=self.lifecycle,
            liveness=self.liveness,
            metrics=self.metrics,
            max_batch=self.cfg.max_batch,
            max_wait_ms=self.cfg.max_wait_ms,
        )

    def _health(self, pool: DecodePool, loop: PollLoop) -> HealthServer:
        return HealthServer(
            self.cfg.metrics_port,
            self.metrics,
            lambda: self.liveness.problems() + pool.problems() + self.lifecycle.problems(),
            loop.readiness_problems,
            lambda: self.metrics.loop_age.set(self.liveness.loop_age()),
        )

    def _install_signals(self, rollout: Rollout) -> None:
        signal.signal(signal.SIGTERM, self.lifecycle.request_stop)
        signal.signal(signal.SIGINT, self.lifecycle.request_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, rollout.request_reload)
