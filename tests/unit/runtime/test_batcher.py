"""The micro-batcher: full batches at once, a partial one after at most ``max_wait_ms``, and at once when the next stage is idle."""

from __future__ import annotations

import queue
import threading
import time

from worker.runtime.batcher import MicroBatcher


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


LONG_WAIT_MS = 3000  # far longer than any step below, so "left at once" and "waited" cannot be confused on a busy machine


def test_a_lone_record_leaves_at_once_when_the_next_stage_is_idle() -> None:
    inbox: queue.Queue[int] = queue.Queue()
    inbox.put(1)
    batcher = MicroBatcher(inbox, 8, LONG_WAIT_MS, lambda: False, downstream_idle=lambda: True)
    t0 = time.monotonic()
    assert batcher.next_batch() == [1]
    assert time.monotonic() - t0 < LONG_WAIT_MS / 1000 / 3


def test_what_is_already_queued_joins_even_when_idle() -> None:
    inbox: queue.Queue[int] = queue.Queue()
    for i in range(5):
        inbox.put(i)
    batcher = MicroBatcher(inbox, 3, LONG_WAIT_MS, lambda: False, downstream_idle=lambda: True)
    assert batcher.next_batch() == [0, 1, 2] and batcher.next_batch() == [3, 4]


def test_while_the_next_stage_is_busy_the_batch_gathers_until_it_frees_up() -> None:
    inbox: queue.Queue[int] = queue.Queue()
    idle = threading.Event()
    batcher = MicroBatcher(inbox, 8, LONG_WAIT_MS, lambda: False, downstream_idle=idle.is_set)
    inbox.put(1)

    def later() -> None:
        time.sleep(0.2)
        inbox.put(2)  # arrives while the stage is busy: joins the batch
        time.sleep(0.2)
        idle.set()  # the stage frees up: the batch leaves without waiting out max_wait

    threading.Thread(target=later, daemon=True).start()
    t0 = time.monotonic()
    assert batcher.next_batch() == [1, 2]
    took = time.monotonic() - t0
    assert 0.35 < took < LONG_WAIT_MS / 1000 / 2, took


def test_a_busy_stage_never_holds_a_batch_past_max_wait() -> None:
    inbox: queue.Queue[int] = queue.Queue()
    inbox.put(1)
    batcher = MicroBatcher(inbox, 8, 50, lambda: False, downstream_idle=lambda: False)
    t0 = time.monotonic()
    assert batcher.next_batch() == [1]
    assert time.monotonic() - t0 >= 0.05
    assert batcher.last_wait_s >= 0.05
