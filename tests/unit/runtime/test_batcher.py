"""The micro-batcher: full batches at once, a partial one after at most ``max_wait_ms``."""

from __future__ import annotations

import queue
import threading

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
