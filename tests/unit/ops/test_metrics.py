"""Metrics through prometheus_client: the exposition, label escaping, replaced gauges, scrape-time gauges."""

from __future__ import annotations

import pytest

from devkit.harness import metric
from worker.ops.metrics import Counter, Gauge, Histogram, Registry, ReplacedGauge, WorkerMetrics


def test_metrics_render_through_prometheus_client() -> None:
    r = Registry()
    c = Counter(r, "x_total", "Things.", ["code"])
    g = Gauge(r, "x_gauge", "A level.")
    h = Histogram(r, "x_seconds", "Latency.", ["stage"], buckets=(0.1, 1.0))
    lag = ReplacedGauge(r, "x_lag", "Per partition.", ["partition"])
    c.inc(2, 'we"ird\n')
    g.set(3.5)
    for v in (0.05, 0.5, 5.0):
        h.observe(v, "a")
    lag.replace({("0",): 4, ("1",): 2})
    lag.replace({("1",): 7})  # the whole set is swapped: partition 0 is gone
    text = r.render()
    assert "# TYPE x_total counter" in text and metric(text, "x_total", code='we\\"ird\\n') == 2
    assert metric(text, "x_gauge") == 3.5 and c.value('we"ird\n') == 2 and g.value() == 3.5
    assert [metric(text, "x_seconds_bucket", stage="a", le=le) for le in ("0.1", "1.0", "+Inf")] == [1, 2, 3]
    assert metric(text, "x_seconds_sum", stage="a") == 5.55 and h.count("a") == 3
    assert metric(text, "x_lag", partition="1") == 7 and metric(text, "x_lag", partition="0") is None
    assert metric(text, "process_resident_memory_bytes") and "x_total_created" not in text
    with pytest.raises(ValueError):
        c.inc(1)  # wrong label count is a bug, not a silent new series


def test_a_scrape_time_gauge_can_read_other_metrics() -> None:
    """The cache hit ratio is computed at scrape time from the lookup counter (no recursion through the registry)."""
    m = WorkerMetrics()
    m.cache_lookups.inc(3, "hit")
    m.cache_lookups.inc(1, "miss")
    assert metric(m.render(), "aigis_cache_hit_ratio") == 0.75
