"""Prometheus metrics through ``prometheus_client``, behind the few calls the worker makes.

The worker's code says ``metrics.verdicts.inc(1, label, cache)``: positional
label values, one line per update. The thin adapters here keep that form over
``prometheus_client``'s metric types, so the exposition is the ecosystem's own
(text format 0.0.4, ``_bucket``/``_sum``/``_count`` histograms, escaping), the
standard process collectors come for free (``process_resident_memory_bytes``,
CPU seconds, open fds, GC), and multiprocess mode is there if ever needed.
The series names are the ones the worker exported before it used the library.

``*_created`` series are turned off (``disable_created_metrics``): they double
the series count and no dashboard of ours reads them.

Measured cost: see the README's performance section (cache-path benchmark with
and without the library).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

#: Latency buckets (seconds) for per-stage timings: 1 ms .. 30 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Batch-size buckets.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

prometheus_client.disable_created_metrics()


class Registry:
    """One ``CollectorRegistry`` per worker (never the library's global one), with the process collectors."""

    def __init__(self, process_collectors: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process_collectors:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def render(self) -> str:
        return generate_latest(self.registry).decode("utf-8")


class _Labelled:
    _metric: Any  # the prometheus_client Counter / Gauge / Histogram behind the adapter

    def __init__(self, registry: Registry, name: str, labels: Sequence[str]) -> None:
        self.name = name
        self.label_names = tuple(labels)

    def _child(self, labels: Sequence[str]) -> Any:  # a prometheus_client metric, or its child for these labels
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return self._metric.labels(*labels) if labels else self._metric

    def _samples(self, name: str, labels: Sequence[str] | None = None) -> list[float]:
        """Values of this metric's samples called ``name`` (with these label values), read from the metric
        itself: collecting the whole registry from inside a scrape-time callback would recurse."""
        want = None if labels is None else dict(zip(self.label_names, (str(v) for v in labels), strict=True))
        return [s.value for m in self._metric.collect() for s in m.samples if s.name == name and (want is None or s.labels == want)]


class Counter(_Labelled):
    """Monotonic count; ``inc(n, *labels)``. The name ends in ``_total``."""

    def __init__(self, registry: Registry, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(registry, name, labels)
        self._metric = prometheus_client.Counter(name, help, self.label_names, registry=registry.registry)

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        self._child(labels).inc(amount)

    def value(self, *labels: str) -> float:
        return sum(self._samples(self.name, labels))

    def total(self) -> float:
        return sum(self._samples(self.name))


class Gauge(_Labelled):
    """A value that goes up and down; ``set(v, *labels)``. ``callback`` computes it at scrape time."""

    def __init__(self, registry: Registry, name: str, help: str, labels: Sequence[str] = (), callback: Callable[[], float] | None = None) -> None:
        super().__init__(registry, name, labels)
        self._metric = prometheus_client.Gauge(name, help, self.label_names, registry=registry.registry)
        if callback is not None:
            self._metric.set_function(callback)

    def set(self, value: float, *labels: str) -> None:
        self._child(labels).set(value)

    def value(self, *labels: str) -> float | None:
        found = self._samples(self.name, labels)
        return found[0] if found else None

    def remove(self, *labels: str) -> None:
        """Drop one label set (e.g. the drift series of a bundle no longer served); absent is fine."""
        try:
            self._metric.remove(*labels)
        except KeyError:
            pass


class ReplacedGauge(Collector):
    """A gauge whose whole label set is swapped at once (lag of the partitions assigned now, the loaded bundles).

    A custom collector, so a scrape sees either the old set or the new one,
    never a half-cleared mix.
    """

    def __init__(self, registry: Registry, name: str, help: str, labels: Sequence[str]) -> None:
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        registry.registry.register(self)

    def replace(self, values: Mapping[tuple[str, ...], float]) -> None:
        checked = {}
        for key, v in values.items():
            if len(key) != len(self.label_names):
                raise ValueError(f"{self.name} takes labels {self.label_names}, got {key}")
            checked[tuple(str(k) for k in key)] = float(v)
        with self._lock:
            self._values = checked

    def value(self, *labels: str) -> float | None:
        with self._lock:
            return self._values.get(tuple(labels))

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.name, self.help, labels=self.label_names)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.name, self.help, labels=self.label_names)
        with self._lock:
            for key, v in sorted(self._values.items()):
                family.add_metric(list(key), v)
        return [family]


class Histogram(_Labelled):
    """Cumulative buckets plus sum and count per label set."""

    def __init__(self, registry: Registry, name: str, help: str, labels: Sequence[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        super().__init__(registry, name, labels)
        self._metric = prometheus_client.Histogram(name, help, self.label_names, buckets=tuple(buckets), registry=registry.registry)

    def observe(self, value: float, *labels: str) -> None:
        self._child(labels).observe(value)

    def count(self, *labels: str) -> float:
        return sum(self._samples(f"{self.name}_count", labels))


@dataclass
class Timing:
    """What :meth:`WorkerMetrics.timed` measured: set when its block ends."""

    seconds: float = 0.0


class WorkerMetrics:
    """Every series the worker exports (the README's metrics list is this class).

    ``process_collectors=False`` (:meth:`unexposed`) leaves out the process,
    platform and GC collectors: they describe the whole process and belong to
    the one registry ``/metrics`` serves, not to the private registry a
    component makes for itself when it is given none.
    """

    def __init__(self, process_collectors: bool = True) -> None:
        r = self.registry = Registry(process_collectors)
        self.messages_in = Counter(r, "aigis_messages_in_total", "Records taken from the input topic.", ["topic"])
        self.verdicts = Counter(r, "aigis_verdicts_total", "Verdicts acknowledged by the broker, by label and cache status.", ["label", "cache"])
        self.dead_letters = Counter(r, "aigis_dead_letters_total", "Dead letters acknowledged by the broker, by error code.", ["code"])
        self.batch_size = Histogram(r, "aigis_batch_size", "Records per micro-batch.", buckets=BATCH_BUCKETS)
        self.stage_seconds = Histogram(
            r,
            "aigis_stage_seconds",
            "Wall time per batch and stage (batch_wait, prepare, fetch, decode, cache_read, inference, shadow, cache_write, deliver, commit).",
            ["stage"],
        )
        self.cache_lookups = Counter(r, "aigis_cache_lookups_total", "Cache lookups by result (hit, near_duplicate, miss, unavailable).", ["result"])
        self.cache_hit_ratio = Gauge(r, "aigis_cache_hit_ratio", "(hit + near_duplicate) / lookups since start.", callback=self._hit_ratio)
        self.cache_errors = Counter(r, "aigis_cache_errors_total", "Redis calls that failed or timed out.", ["op"])
        self.cache_circuit = Gauge(r, "aigis_cache_circuit_state", "Redis circuit breaker: 0 closed, 1 half-open, 2 open.")
        self.consumer_lag = ReplacedGauge(
            r, "aigis_consumer_lag", "Records behind the partition end (highwater - position), per assigned partition.", ["topic", "partition"]
        )
        self.consumer_lag_sum = Gauge(r, "aigis_consumer_lag_sum", "Sum of aigis_consumer_lag over this worker's partitions.")
        self.in_flight = Gauge(r, "aigis_in_flight_records", "Records handed to the pipeline and not yet acknowledged or dropped.")
        self.paused = Gauge(r, "aigis_partitions_paused", "Partitions paused by backpressure.")
        self.assigned = Gauge(r, "aigis_partitions_assigned", "Partitions this worker owns now.")
        self.rebalances = Counter(r, "aigis_rebalances_total", "Partition revocations and assignments seen.", ["event"])
        self.stale_dropped = Counter(r, "aigis_stale_records_dropped_total", "In-flight records dropped because their partition was revoked.")
        self.commits = Counter(r, "aigis_commits_total", "Offset commits by result.", ["result"])
        self.delivery_retries = Counter(r, "aigis_delivery_retries_total", "Batches whose outcomes had to be produced again.")
        self.outcomes_reduced = Counter(
            r, "aigis_outcomes_reduced_total", "Outcomes replaced by a minimal dead letter because the broker refused them, by reason.", ["reason"]
        )
        self.outcomes_dropped = Counter(
            r, "aigis_outcomes_dropped_total", "Records committed past without an outcome: the broker refused even the minimal dead letter.", ["error"]
        )
        self.inference_retries = Counter(r, "aigis_inference_retries_total", "Inference chunks that failed and were split.")
        self.bundle_info = ReplacedGauge(
            r,
            "aigis_bundle_info",
            "Loaded bundles (value 1), by role; weights: where the backbone's weights came from.",
            ["role", "name", "version", "sha256", "weights"],
        )
        self.bundle_reloads = Counter(r, "aigis_bundle_reloads_total", "Hot-swap attempts by result.", ["result"])
        self.decode_abandoned = Gauge(r, "aigis_decode_threads_abandoned", "Decode threads still busy on an item that hit the decode or provenance time limit.")
        self.loop_age = Gauge(r, "aigis_loop_progress_age_seconds", "Seconds since the poll loop last made progress.")
        # Drift statistics (worker/ops/drift.py), per served bundle; statistic: score_shift | uncertain_rate | novelty_rate.
        drift = ["role", "name", "version", "statistic", "signal"]
        self.drift_value = Gauge(r, "aigis_drift_value", "Drift statistic over the window: PSI for score_shift, a share of images for the rates.", drift)
        self.drift_threshold = Gauge(r, "aigis_drift_threshold", "Value above which the drift statistic is in alarm, for the window's size now.", drift)
        self.drift_expected = Gauge(r, "aigis_drift_expected", "What the bundle's validation reference predicts for a rate, at the window's fake share.", drift)
        self.drift_alarm = Gauge(r, "aigis_drift_alarm", "1 while the drift statistic is in alarm, else 0.", drift)
        self.drift_window = Gauge(r, "aigis_drift_window_images", "Fresh verdicts in the drift window.", ["role", "name", "version"])
        self.drift_fake_share = Gauge(
            r, "aigis_drift_fake_share", "Share of AI-generated images in the drift window, estimated from the score distribution.", ["role", "name", "version"]
        )
        self.drift_reports = Counter(
            r, "aigis_drift_reports_total", "DriftReport events raised, by statistic and status (alarm, recovered).", [*drift[:4], "status"]
        )
        self.provenance_signals = Counter(
            r, "aigis_provenance_signals_total", "Provenance signals read, by kind and status (found, absent, unreadable, not_checked).", ["kind", "status"]
        )
        self.provenance_ai = Counter(
            r, "aigis_provenance_ai_declared_total", "Found provenance signals that declare AI generation, by kind and strength.", ["kind", "strength"]
        )
        self.decisions = Counter(r, "aigis_label_decisions_total", "Verdict labels by who set them (model or provenance).", ["decided_by"])

    @classmethod
    def unexposed(cls) -> WorkerMetrics:
        """The default of components built without the worker's metrics (offline scorer, tests): counts kept, nothing process-wide."""
        return cls(process_collectors=False)

    def count_provenance(self, signals: Iterable[Any], decided_by: str) -> None:
        """One verdict's provenance: each signal by kind and status (and strength when it declares AI), and who decided."""
        for sig in signals:
            self.provenance_signals.inc(1, str(sig.kind.value), str(sig.status.value))
            if sig.ai_declared:
                self.provenance_ai.inc(1, str(sig.kind.value), str(sig.strength.value))
        self.decisions.inc(1, decided_by)

    @contextmanager
    def timed(self, stage: str) -> Iterator[Timing]:
        """Observe the wall time of the ``with`` block as ``aigis_stage_seconds{stage=...}``.

        ``with metrics.timed("inference") as took:`` gives the same figure as
        ``took.seconds`` after the block, for callers that also report it (the
        verdict's ``inference_ms``), so no stage needs its own clock pair.
        """
        took = Timing()
        t0 = time.perf_counter()
        try:
            yield took
        finally:
            took.seconds = time.perf_counter() - t0
            self.stage_seconds.observe(took.seconds, stage)

    def _hit_ratio(self) -> float:
        hits = self.cache_lookups.value("hit") + self.cache_lookups.value("near_duplicate")
        total = self.cache_lookups.total()
        return hits / total if total else 0.0

    def render(self) -> str:
        return self.registry.render()
