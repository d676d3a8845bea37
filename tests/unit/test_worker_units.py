"""Pure-logic pieces of the worker runtime: offsets, circuit breaker, batcher, decode pool, metrics, pHash, IO binding."""

from __future__ import annotations

import io
import queue
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import TopicPartition
from PIL import Image

from devkit.harness import metric
from export.photos import load_rgb, photo_paths
from worker.cache.circuit import CircuitBreaker, State
from worker.cache.phash import band_layout, bands, hamming, phash
from worker.ingest.decode_pool import DecodePool
from worker.model.bundle import LoadedBundle
from worker.ops.metrics import Counter, Gauge, Histogram, Registry, ReplacedGauge, WorkerMetrics
from worker.runtime.batcher import MicroBatcher
from worker.runtime.offsets import OffsetTracker

TP = TopicPartition("t", 0)


# -- offsets -----------------------------------------------------------------------
def test_only_the_contiguous_done_prefix_is_committable_even_across_offset_gaps() -> None:
    tr = OffsetTracker()
    tr.assign({TP})
    gen = tr.added(TP, [5, 6, 7, 9])  # 8 is a transaction marker the consumer never returns
    assert gen is not None and tr.in_flight == 4
    assert tr.complete(TP, gen, [6, 7]) and tr.to_commit() == {}
    tr.complete(TP, gen, [5])
    assert tr.to_commit()[TP].offset == 8 and tr.in_flight == 1
    tr.committed(tr.to_commit())
    assert tr.to_commit() == {}
    tr.complete(TP, gen, [9])
    assert tr.to_commit()[TP].offset == 10 and tr.in_flight == 0


def test_revoke_retires_the_generation_and_says_where_to_restart() -> None:
    tr = OffsetTracker()
    tr.assign({TP})
    gen = tr.added(TP, [0, 1, 2, 3])
    assert gen is not None
    tr.complete(TP, gen, [0, 1])
    final, restart = tr.revoke({TP})
    assert final[TP].offset == 2 and restart == {TP: 2} and tr.in_flight == 0
    assert not tr.complete(TP, gen, [2, 3]), "work from a revoked generation must be refused"
    tr.assign({TP})
    new_gen = tr.generation(TP)
    assert new_gen is not None and new_gen != gen and not tr.is_current(TP, gen)
    assert tr.added(TopicPartition("t", 9), [0]) is None  # never assigned: never handed over


# -- circuit breaker -------------------------------------------------------------------
def test_breaker_opens_after_failures_probes_once_and_closes_on_success() -> None:
    now = [0.0]
    changes: list[State] = []
    b = CircuitBreaker(failure_threshold=2, reset_after_s=5, clock=lambda: now[0], on_change=changes.append)
    assert b.allow()
    b.failure()
    assert b.state is State.closed and b.allow()
    b.failure()
    assert b.state is State.open and not b.allow()
    now[0] = 5.0
    assert b.allow(), "one probe after the reset time"
    assert not b.allow(), "only one probe at a time"
    b.failure()
    assert b.state is State.open and not b.allow()
    now[0] = 10.0
    assert b.allow()
    b.success()
    assert b.state is State.closed and b.allow()
    assert changes == [State.open, State.half_open, State.open, State.half_open, State.closed]


# -- micro-batcher -----------------------------------------------------------------------
def test_batcher_fills_to_max_batch_without_waiting_and_waits_at_most_max_wait_for_company() -> None:
    q: queue.Queue[int] = queue.Queue()
    for i in range(10):
        q.put(i)
    b = MicroBatcher(q, max_batch=4, max_wait_ms=10_000, stopping=lambda: False)
    assert b.next_batch() == [0, 1, 2, 3]
    assert b.next_batch() == [4, 5, 6, 7]
    short = MicroBatcher(q, max_batch=4, max_wait_ms=50, stopping=lambda: False)
    threading.Timer(0.01, q.put, args=(10,)).start()
    assert short.next_batch() == [8, 9, 10]  # the late record joins within max_wait; then the batch goes
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    assert MicroBatcher(q, 4, 50, stop.is_set).next_batch(idle_poll_s=0.01) == []


# -- decode pool -------------------------------------------------------------------------
def test_decode_pool_times_out_a_stuck_task_and_keeps_its_capacity() -> None:
    pool = DecodePool(1, name="t-pool")
    release = threading.Event()
    try:
        stuck = pool.submit_limited(0.1, lambda: TimeoutError("too slow"), release.wait, 30)
        with pytest.raises(TimeoutError, match="too slow"):
            stuck.result(timeout=10)
        assert pool.abandoned == 1 and pool.timeouts == 1
        # the replacement thread serves the next task while the stuck one is still running
        assert pool.submit(lambda: 42).result(timeout=10) == 42
        release.set()
        time.sleep(0.2)
        assert pool.abandoned == 0
    finally:
        release.set()
        pool.shutdown(wait=False)


def test_decode_pool_limit_counts_from_start_not_from_submission() -> None:
    pool = DecodePool(1, name="t-pool2")
    try:
        futures = [pool.submit_limited(1.0, lambda: TimeoutError("late"), time.sleep, 0.4) for _ in range(3)]
        # the third waits ~0.8 s in the queue, longer than... nothing: only its own 0.4 s run counts
        assert [f.result(timeout=10) for f in futures] == [None, None, None]
        assert pool.timeouts == 0
    finally:
        pool.shutdown(wait=False)


# -- metrics ------------------------------------------------------------------------------
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


# -- pHash ----------------------------------------------------------------------------------
def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_phash_is_close_for_a_re_encoded_photo_and_far_for_another_photo() -> None:
    a, b = (load_rgb(p) for p in photo_paths(include_grey=False)[:2])
    h = phash(a)
    near = phash(_jpeg(a.resize((a.width * 3 // 4, a.height * 3 // 4)), 50))
    assert hamming(h, near) <= 6
    assert hamming(h, phash(b)) > 16
    assert 0 <= h < 2**64


@pytest.mark.parametrize("distance", [0, 3, 6, 10])
def test_band_lookup_finds_every_hash_within_the_distance(distance: int) -> None:
    layout = band_layout(distance)
    assert sum(w for _, w in layout) == 64
    rng = np.random.default_rng(distance)
    for _ in range(200):
        h = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        flips = rng.choice(64, size=distance, replace=False) if distance else []
        other = h
        for bit in flips:
            other ^= 1 << int(bit)
        assert hamming(h, other) == distance
        assert any(x == y for x, y in zip(bands(h, layout), bands(other, layout), strict=True))


# -- IO binding ---------------------------------------------------------------------------------
def test_io_binding_path_gives_the_same_scores_as_plain_run(tiny_bundle: Path) -> None:
    """The CUDA path binds inputs/outputs and keeps the embedding on the device; forced on CPU here."""
    plain = LoadedBundle(tiny_bundle, ["CPUExecutionProvider"])
    bound = LoadedBundle(tiny_bundle, ["CPUExecutionProvider"], io_binding=True)
    assert bound.io_binding and not plain.io_binding
    size = plain.preprocess.image_size
    pixels = np.random.default_rng(0).normal(size=(3, 3, size, size)).astype(np.float32)
    a, b = plain.score(pixels), bound.score(pixels)
    np.testing.assert_allclose(a.probability, b.probability, rtol=1e-5, atol=1e-6)
    assert set(a.head_scores) == set(b.head_scores)
