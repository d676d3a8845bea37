"""Prometheus metrics in the text exposition format, without a client library.

Why not ``prometheus-client``: the worker needs three metric types, labels and
one text rendering, about 150 lines; writing them keeps the torch-free runtime
image free of one more dependency and lets every update on the hot path be a
dict lookup plus an add under one lock (the batch loop updates a few dozen
series per batch, never per pixel). The output follows the text format 0.0.4
(``# HELP``/``# TYPE`` lines, ``_bucket{le=...}``/``_sum``/``_count`` for
histograms), which every Prometheus-compatible scraper reads.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency buckets (seconds) for per-stage timings: 1 ms .. 30 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Batch-size buckets.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labels(names: Sequence[str], values: Sequence[str], extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Metric:
    kind = "untyped"

    def __init__(self, registry: Registry, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._lock = registry.lock
        registry.register(self)

    def _key(self, labels: Sequence[str]) -> tuple[str, ...]:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError


class Counter(_Metric):
    """Monotonic count; ``inc(n, *labels)``."""

    kind = "counter"

    def __init__(self, registry: Registry, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(registry, name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def total(self) -> float:
        with self._lock:
            return sum(self._values.values())

    def render(self) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, k)} {_fmt(v)}" for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    """A value that goes up and down; ``set(v, *labels)``. ``callback`` computes it at scrape time."""

    kind = "gauge"

    def __init__(self, registry: Registry, name: str, help: str, labels: Sequence[str] = (), callback: Callable[[], float] | None = None) -> None:
        super().__init__(registry, name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._callback = callback

    def set(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def replace(self, values: dict[tuple[str, ...], float]) -> None:
        """Swap the whole label set at once (e.g. lag for the partitions assigned now)."""
        with self._lock:
            self._values = {self._key(k): float(v) for k, v in values.items()}

    def value(self, *labels: str) -> float | None:
        with self._lock:
            return self._values.get(self._key(labels))

    def render(self) -> list[str]:
        if self._callback is not None:
            return [f"{self.name} {_fmt(self._callback())}"]
        return [f"{self.name}{_labels(self.label_names, k)} {_fmt(v)}" for k, v in sorted(self._values.items())]


class Histogram(_Metric):
    """Cumulative buckets plus sum and count per label set."""

    kind = "histogram"

    def __init__(self, registry: Registry, name: str, help: str, labels: Sequence[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        super().__init__(registry, name, help, labels)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], list[float]] = {}  # per bucket counts (non-cumulative), then sum, count

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            s = self._series.get(key)
            if s is None:
                s = self._series[key] = [0.0] * (len(self.buckets) + 2)
            for i, b in enumerate(self.buckets):
                if value <= b:
                    s[i] += 1
                    break
            s[-2] += value
            s[-1] += 1

    def count(self, *labels: str) -> float:
        with self._lock:
            s = self._series.get(self._key(labels))
            return s[-1] if s else 0.0

    def render(self) -> list[str]:
        out = []
        for key, s in sorted(self._series.items()):
            cum = 0.0
            for i, b in enumerate(self.buckets):
                cum += s[i]
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, ('le', _fmt(b)))} {_fmt(cum)}")
            out.append(f"{self.name}_bucket{_labels(self.label_names, key, ('le', '+Inf'))} {_fmt(s[-1])}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_fmt(s[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {_fmt(s[-1])}")
        return out


class Registry:
    """A set of metrics rendered together; one lock serialises updates and scrapes."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._metrics: list[_Metric] = []

    def register(self, metric: _Metric) -> None:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics.append(metric)

    def render(self) -> str:
        lines: list[str] = []
        with self.lock:
            for m in self._metrics:
                lines += m.header()
                lines += m.render()
        return "\n".join(lines) + "\n"


class WorkerMetrics:
    """Every series the worker exports (the README's metrics list is this class)."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.messages_in = Counter(r, "aigis_messages_in_total", "Records taken from the input topic.", ["topic"])
        self.verdicts = Counter(r, "aigis_verdicts_total", "Verdicts acknowledged by the broker, by label and cache status.", ["label", "cache"])
        self.dead_letters = Counter(r, "aigis_dead_letters_total", "Dead letters acknowledged by the broker, by error code.", ["code"])
        self.batch_size = Histogram(r, "aigis_batch_size", "Records per micro-batch.", buckets=BATCH_BUCKETS)
        self.stage_seconds = Histogram(
            r,
            "aigis_stage_seconds",
            "Wall time per batch and stage (prepare, decode, cache_read, inference, shadow, cache_write, deliver, commit).",
            ["stage"],
        )
        self.cache_lookups = Counter(r, "aigis_cache_lookups_total", "Cache lookups by result (hit, near_duplicate, miss, unavailable).", ["result"])
        self.cache_hit_ratio = Gauge(r, "aigis_cache_hit_ratio", "(hit + near_duplicate) / lookups since start.", callback=self._hit_ratio)
        self.cache_errors = Counter(r, "aigis_cache_errors_total", "Redis calls that failed or timed out.", ["op"])
        self.cache_circuit = Gauge(r, "aigis_cache_circuit_state", "Redis circuit breaker: 0 closed, 1 half-open, 2 open.")
        self.consumer_lag = Gauge(
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
        self.bundle_info = Gauge(r, "aigis_bundle_info", "Loaded bundles (value 1), by role.", ["role", "name", "version", "sha256"])
        self.bundle_reloads = Counter(r, "aigis_bundle_reloads_total", "Hot-swap attempts by result.", ["result"])
        self.decode_abandoned = Gauge(r, "aigis_decode_threads_abandoned", "Decode threads still busy on an item that hit the decode time limit.")
        self.loop_age = Gauge(r, "aigis_loop_progress_age_seconds", "Seconds since the poll loop last made progress.")

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Observe the wall time of the ``with`` block as ``aigis_stage_seconds{stage=...}``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.observe(time.perf_counter() - t0, stage)

    def _hit_ratio(self) -> float:
        hits = self.cache_lookups.value("hit") + self.cache_lookups.value("near_duplicate")
        total = self.cache_lookups.total()
        return hits / total if total else 0.0

    def render(self) -> str:
        return self.registry.render()
