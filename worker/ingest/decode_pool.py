"""A thread pool whose tasks can carry a time limit, for decoding hostile images.

Pillow's C decoders cannot be interrupted from Python, so a per-item decode
time limit has two possible designs:

* a process pool, where an overrunning decode can be killed: a hard limit, but
  every image (and its float32 tensors, ~600 kB at 224 px) is pickled across a
  pipe, each worker process holds its own copy of the decode stack, and a
  crashed worker has to be detected and replaced; on a 2-core node the copies
  cost about as much as the decode of a small JPEG;
* threads with *abandonment* (this module): the waiter gets
  ``decode_timeout`` as soon as the limit passes and moves on; the thread keeps
  running the doomed decode to its end (Pillow's pixel limit bounds how long
  that can be), its result is discarded, and a replacement thread is started at
  once so the pool keeps its capacity.

We take the second: no copies on the hot path, and the failure mode (a core
busy for a while with a bomb that slipped under the pixel limit) is bounded and
visible (``aigis_decode_threads_abandoned``). Abandoned threads that never
finish are a liveness problem: past ``max_abandoned`` the pool reports it and
the health check turns unhealthy so the orchestrator restarts the process.

The limit is measured from when a thread *starts* the task, not from
submission, so waiting behind other work in the queue never times an item out.

A task may run in phases with limits of their own: :func:`restart_limit`,
called from inside the task, ends the current phase (its work is done) and
starts the clock again with a new limit and a new answer for when it passes,
which may be a result instead of an error. The prepare job uses it so that a
slow provenance read (the C2PA SDK cannot be interrupted either) answers the
decoded image with its signals ``unreadable`` instead of costing the upload
its verdict as a ``decode_timeout``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class _Task:
    future: Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    limit_s: float | None = None
    on_timeout: Callable[[], Any] | None = None
    #: Whether ``on_timeout()`` is the task's result (a later phase's fallback) rather than the error to fail it with.
    timeout_is_result: bool = False
    deadline: float | None = field(default=None, init=False)
    abandoned: bool = field(default=False, init=False)


#: The task the current thread runs, and its pool (unset outside a pool's threads).
_current = threading.local()


def restart_limit(limit_s: float | None, fallback: Callable[[], Any]) -> bool:
    """From inside a :class:`DecodePool` task: start a new phase, ``limit_s`` from now (None: unlimited).

    If the phase overruns, the task's future gets ``fallback()`` as its *result*
    (the thread is abandoned as for any timeout). Returns False when the task
    has already timed out (its result will be discarded, so the caller may stop
    working) and True otherwise, also outside a pool, where there is no limit to
    restart and nothing happens.
    """
    pool: DecodePool | None = getattr(_current, "pool", None)
    task: _Task | None = getattr(_current, "task", None)
    if pool is None or task is None:
        return True
    return pool._restart(task, limit_s, fallback)


class DecodePool(Executor):
    """``submit`` like any executor; ``submit_limited`` adds a per-task time limit."""

    def __init__(self, threads: int, name: str = "decode", max_abandoned: int | None = None) -> None:
        self.threads = threads
        self.name = name
        self.max_abandoned = max_abandoned if max_abandoned is not None else max(4, 2 * threads)
        self._queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._running: dict[threading.Thread, _Task] = {}
        self._abandoned_threads: set[threading.Thread] = set()
        self._timeouts = 0
        self._shutdown = False
        self._serial = 0
        for _ in range(threads):
            self._spawn()
        self._watchdog = threading.Thread(target=self._watch, name=f"{name}-watchdog", daemon=True)
        self._watchdog.start()

    # -- public -------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._put(_Task(Future(), fn, args, kwargs))

    def submit_limited(self, limit_s: float | None, on_timeout: Callable[[], BaseException], fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        """Like ``submit``; the future fails with ``on_timeout()`` once the task has run ``limit_s`` (None: no limit until :func:`restart_limit`)."""
        return self._put(_Task(Future(), fn, args, {}, limit_s, on_timeout))

    @property
    def abandoned(self) -> int:
        """Threads still busy on a task that already timed out."""
        with self._cond:
            return len(self._abandoned_threads)

    @property
    def timeouts(self) -> int:
        with self._cond:
            return self._timeouts

    def problems(self) -> list[str]:
        n = self.abandoned
        return [f"{n} decode threads are stuck on timed-out images (limit {self.max_abandoned})"] if n > self.max_abandoned else []

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            threads = list(self._running) + [t for t in threading.enumerate() if t.name.startswith(f"{self.name}-") and t is not self._watchdog]
            self._cond.notify_all()
        if cancel_futures:
            while True:
                try:
                    task = self._queue.get_nowait()
                except queue.Empty:
                    break
                if task is not None:
                    task.future.cancel()
        for _ in range(self.threads + len(self._abandoned_threads) + 1):
            self._queue.put(None)
        if wait:
            for t in set(threads):
                if t is not threading.current_thread() and t not in self._abandoned_threads:
                    t.join(timeout=5)

    # -- internals -----------------------------------------------------------------
    def _put(self, task: _Task) -> Future[Any]:
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        self._queue.put(task)
        return task.future

    def _restart(self, task: _Task, limit_s: float | None, fallback: Callable[[], Any]) -> bool:
        with self._cond:
            if task.abandoned:
                return False
            task.limit_s, task.on_timeout, task.timeout_is_result = limit_s, fallback, True
            task.deadline = time.monotonic() + limit_s if limit_s is not None else None
            self._cond.notify_all()  # the watchdog may be sleeping towards a later deadline
            return True

    def _spawn(self) -> None:
        self._serial += 1
        threading.Thread(target=self._work, name=f"{self.name}-{self._serial}", daemon=True).start()

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            task = self._queue.get()
            if task is None:
                return
            if not task.future.set_running_or_notify_cancel():
                continue
            with self._cond:
                if task.limit_s is not None:
                    task.deadline = time.monotonic() + task.limit_s
                self._running[me] = task
                self._cond.notify_all()
            _current.pool, _current.task = self, task
            try:
                result, error = task.fn(*task.args, **task.kwargs), None
            except BaseException as exc:
                result, error = None, exc
            finally:
                _current.pool = _current.task = None
            with self._cond:
                self._running.pop(me, None)
                if not task.abandoned:
                    if error is not None:
                        task.future.set_exception(error)
                    else:
                        task.future.set_result(result)
                if me in self._abandoned_threads:
                    # A replacement already took this thread's place; bow out.
                    self._abandoned_threads.discard(me)
                    return
            del task, result, error

    def _watch(self) -> None:
        with self._cond:
            while not self._shutdown:
                now = time.monotonic()
                deadlines = [t.deadline for t in self._running.values() if t.deadline is not None and not t.abandoned]
                expired = [(th, t) for th, t in self._running.items() if t.deadline is not None and not t.abandoned and t.deadline <= now]
                for thread, task in expired:
                    task.abandoned = True
                    self._timeouts += 1
                    self._abandoned_threads.add(thread)
                    assert task.on_timeout is not None
                    try:
                        answer = task.on_timeout()
                    except Exception as exc:  # a fallback that fails must not stop the watchdog
                        task.future.set_exception(exc)
                    else:
                        if task.timeout_is_result:
                            task.future.set_result(answer)
                        else:
                            task.future.set_exception(answer)
                    self._spawn()
                if expired:
                    continue
                self._cond.wait(timeout=(min(deadlines) - now) if deadlines else None)
