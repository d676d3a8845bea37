"""Repetitions, medians and spread; rates and latencies from output timestamps.

Every number the benchmarks report is the median of several repetitions with
its spread (min, max and the interquartile range), because on a shared 2-core
machine a single run says more about the neighbours than about the code.

Streaming throughput is read off the output topic, not the harness's clock:
each verdict record's timestamp is when the worker produced it and its
``timings.total_ms`` dates the pick-up, so the rate (:func:`steady_rate`)
excludes process start-up (imports, bundle load, group join) and the reader's
own polling delay never counts.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """median, quartiles, min, max and the relative spread ((p75 - p25) / median) of a sample list."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        return {"n": 0, "median": None, "p25": None, "p75": None, "min": None, "max": None, "rel_iqr": None}
    med = statistics.median(xs)
    if len(xs) >= 4:
        q = statistics.quantiles(xs, n=4, method="inclusive")
        p25, p75 = q[0], q[2]
    else:
        p25, p75 = xs[0], xs[-1]
    return {
        "n": len(xs),
        "median": med,
        "p25": p25,
        "p75": p75,
        "min": xs[0],
        "max": xs[-1],
        "rel_iqr": (p75 - p25) / med if med else None,
    }


def time_reps(fn: Callable[[], object], reps: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``fn`` over ``reps`` runs after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def rates(seconds: Sequence[float], items: int) -> list[float]:
    """Per-repetition throughput (items / s) from per-repetition durations."""
    return [items / s for s in seconds if s > 0]


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank-interpolated percentile (q in [0, 100])."""
    ys = sorted(xs)
    if not ys:
        return float("nan")
    k = (len(ys) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ys) - 1)
    return ys[lo] + (ys[hi] - ys[lo]) * (k - lo)


def steady_rate(timestamps_ms: Sequence[int], group_ms: int = 5, starts_ms: Sequence[float] = ()) -> dict[str, Any]:
    """Outputs per second from output timestamps, start-up (process start, bundle load, group join) excluded.

    With ``starts_ms`` (per verdict: its timestamp minus ``timings.total_ms``,
    i.e. when the worker picked the record up), ``rate`` is all outputs over the
    span from the first pick-up to the last output: the wall time the worker
    spent on the backlog, first batch included, the same thing the offline
    scorer's wall time measures.

    Without (consumers that report no timings), ``rate`` is the outputs after
    the first group (records within ``group_ms`` of the first one: the first
    batch) over the time from that group to the last output; for a
    one-at-a-time consumer that is (n - 1) / span. ``middle80_rate`` is the rate
    over the middle 80 % of outputs, for comparison; it is coarse when a run has
    few batches.
    """
    ts = sorted(timestamps_ms)
    n = len(ts)
    out: dict[str, Any] = {"outputs": float(n), "span_s": (ts[-1] - ts[0]) / 1000 if n > 1 else 0.0}
    first = sum(1 for t in ts if t <= ts[0] + group_ms) if n else 0
    out["first_group"] = float(first)
    out["full_rate"] = (n - 1) / out["span_s"] if out["span_s"] > 0 else float("nan")
    if starts_ms and n:
        busy = (ts[-1] - min(starts_ms)) / 1000
        out["busy_s"] = busy
        out["rate"] = n / busy if busy > 0 else float("nan")
        out["rate_basis"] = "first pick-up to last verdict"
    else:
        out["rate"] = (n - first) / out["span_s"] if out["span_s"] > 0 and n > first else float("nan")
        out["rate_basis"] = "after the first batch"
    lo, hi = int(n * 0.1), max(int(n * 0.9) - 1, 0)
    window = (ts[hi] - ts[lo]) / 1000 if hi > lo else 0.0
    out["middle80_rate"] = (hi - lo) / window if window > 0 else float("nan")
    return out


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": float(len(latencies_ms)),
        "p50_ms": percentile(latencies_ms, 50),
        "p90_ms": percentile(latencies_ms, 90),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms) if latencies_ms else float("nan"),
    }
