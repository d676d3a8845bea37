"""Repetitions, medians and spread.

Every number the benchmarks report is the median of several repetitions with
its spread (min, max and the interquartile range), because on a shared 2-core
machine a single run says more about the neighbours than about the code.
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
