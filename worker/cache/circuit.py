"""A small circuit breaker for the Redis cache.

Closed: calls go through; ``failure_threshold`` consecutive failures open it.
Open: calls are skipped (the cache counts as unavailable: reads are misses,
writes are dropped) for ``reset_after_s``. Half-open: the next call is a probe;
success closes the breaker, failure opens it again. So a dead or slow Redis
costs at most ``failure_threshold`` timeouts, then nothing, and the cache comes
back by itself once a probe succeeds. No verdict waits on Redis longer than one
socket timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import IntEnum


class State(IntEnum):
    closed = 0
    half_open = 1
    open = 2


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 3,
        reset_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = State.closed
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> State:
        with self._lock:
            if self._state is State.open and self._clock() - self._opened_at >= self.reset_after_s:
                return State.half_open
            return self._state

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one probe at a time does."""
        with self._lock:
            if self._state is State.closed:
                return True
            if self._state is State.open and self._clock() - self._opened_at >= self.reset_after_s:
                self._set(State.half_open)
            if self._state is State.half_open and not self._probing:
                self._probing = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._probing = False
            if self._state is not State.closed:
                self._set(State.closed)

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._state is State.half_open or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
                if self._state is not State.open:
                    self._set(State.open)

    def _set(self, state: State) -> None:
        self._state = state
        if self._on_change is not None:
            self._on_change(state)
