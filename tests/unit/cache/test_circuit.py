"""The Redis circuit breaker: opens after failures, probes once, closes on success."""

from __future__ import annotations

from worker.cache.circuit import CircuitBreaker, State


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
