"""The per-image decode time limit: a slow image becomes a ``decode_timeout`` dead letter and the batch goes on.

Pillow's decoders cannot be interrupted, so the worker's pool abandons the
thread (see :mod:`worker.ingest.decode_pool`) and starts a replacement; the images
after the slow one are decoded as usual.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devkit.images import unique_jpegs
from worker.config import WorkerConfig
from worker.ingest.decode_pool import DecodePool, restart_limit
from worker.ingest.wire import InputRecord
from worker.model.bundle import LoadedBundle
from worker.model.rollout import Models
from worker.pipeline.batch import BatchProcessor
from worker.pipeline.items import PipelineSettings


def big_smooth_png(side: int = 6000) -> bytes:
    """36 MP that compresses to little: cheap to ship, slow to decode and resize."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    img = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, -ramp) / 2 + 128, np.full((side, side), 90.0)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def test_slow_decode_is_dead_lettered_and_the_pool_keeps_working(tiny_bundle: Path) -> None:
    bundle = LoadedBundle(tiny_bundle, ["CPUExecutionProvider"])
    slow = big_smooth_png()
    small = unique_jpegs(4, seed=9)
    records = [InputRecord("t", 0, 0, None, b"slow", slow)] + [InputRecord("t", 0, i + 1, None, f"ok-{i}".encode(), d) for i, d in enumerate(small)]
    pool = DecodePool(1)  # one thread: the images after the slow one need the replacement thread
    try:
        # 20 ms cannot decode and resize 36 megapixels. (The small images get a generous limit in a second
        # pass below, so a busy shared machine cannot time them out too.)
        cfg = WorkerConfig(bundle=tiny_bundle, redis_url="", decode_timeout_s=0.02, max_image_pixels=40_000_000)
        outcomes = BatchProcessor(PipelineSettings.from_config(cfg), Models(bundle), None, pool).process(records[:1])
        assert outcomes[0].dead_letter is not None and outcomes[0].dead_letter.error_code.value == "decode_timeout"
        assert pool.timeouts == 1

        relaxed = WorkerConfig(bundle=tiny_bundle, redis_url="", decode_timeout_s=30)
        outcomes = BatchProcessor(PipelineSettings.from_config(relaxed), Models(bundle), None, pool).process(records[1:])
        assert all(o.verdict is not None for o in outcomes), [o.dead_letter for o in outcomes]
    finally:
        pool.shutdown(wait=False)


def test_a_later_phase_has_its_own_limit_and_answers_with_its_fallback() -> None:
    """``restart_limit``: the first phase's limit ends with it; an overrun second phase answers the fallback as a result."""
    release = threading.Event()
    pool = DecodePool(1)

    def two_phases() -> str:
        time.sleep(0.1)  # the first phase ends well within its 0.6 s
        restart_limit(1.5, lambda: "fallback")
        release.wait(30)  # past the first limit, within the second until it too runs out
        return "finished"

    try:
        t0 = time.monotonic()
        fut = pool.submit_limited(0.6, lambda: TimeoutError("first phase"), two_phases)
        assert fut.result(timeout=10) == "fallback" and pool.timeouts == 1
        assert time.monotonic() - t0 >= 1.5, "the second phase's limit, not the first's, ended the task"
        # Without a restart the same work is one phase and fails with the first answer.
        fut = pool.submit_limited(0.2, lambda: TimeoutError("first phase"), release.wait, 30)
        try:
            fut.result(timeout=10)
            raise AssertionError("no timeout")
        except TimeoutError as exc:
            assert str(exc) == "first phase"
    finally:
        release.set()
        pool.shutdown(wait=False)


def test_restarting_after_the_first_phase_overran_reports_it_and_outside_a_pool_does_nothing() -> None:
    pool = DecodePool(1)
    answers: list[bool] = []
    done = threading.Event()

    def late() -> None:
        time.sleep(1.0)  # ten times its limit: the watchdog has answered long before
        answers.append(restart_limit(5.0, lambda: "never"))
        done.set()

    try:
        fut = pool.submit_limited(0.1, lambda: TimeoutError("first"), late)
        assert isinstance(fut.exception(timeout=10), TimeoutError)
        assert done.wait(10) and answers == [False]
    finally:
        pool.shutdown(wait=False)
    assert restart_limit(0.01, lambda: "x") is True  # not in a pool's thread: no limit, nothing to restart


# -- the pool itself ----------------------------------------------------------------
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
