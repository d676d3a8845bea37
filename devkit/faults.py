"""Fault injection for tests, from the outside: ``python -m devkit.faults [worker options]``.

Some failure modes cannot be produced on demand with real parts: a pipeline
stage that wedges (to show the liveness probe turning unhealthy) is one. The
worker itself knows nothing about them: this entry point wraps the inference
stage's method (:meth:`worker.pipeline.batch.BatchProcessor.finish`) in the test process's
copy of the worker, then runs the real worker CLI. Production images carry no
``devkit`` package, so these switches cannot be set there.

``AIGIS_TEST_STALL_KEY=<upload id>``: the inference stage blocks for an hour
when a batch contains a record with this key, as a hung ONNX Runtime call would.

``AIGIS_TEST_CRASH_KEY=<upload id>``: the inference stage raises when a batch
contains a record with this key, as a bug outside the per-item error handling
would (the worker must stop with exit code 2 and lose nothing).

``AIGIS_TEST_INFER_DELAY_MS=<ms>``: every batch spends this much longer in the
inference stage, as a bigger model on a slower device would; tests use it to
keep the pipeline full when a rebalance or a signal arrives.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: The environment variables this wrapper reads; a test that sets one must start the worker through it.
SWITCHES = ("AIGIS_TEST_STALL_KEY", "AIGIS_TEST_CRASH_KEY", "AIGIS_TEST_INFER_DELAY_MS")


class InjectedCrash(RuntimeError):
    """Raised by AIGIS_TEST_CRASH_KEY: stands in for a bug in a pipeline stage."""


def wants_faults(env: Mapping[str, str]) -> bool:
    return any(env.get(name) for name in SWITCHES)


def injector(env: Mapping[str, str]) -> Callable[[Iterable[bytes | None]], None]:
    """A function of a batch's record keys that stalls, crashes or delays as the switches say."""
    stall_key = env.get("AIGIS_TEST_STALL_KEY", "").encode() or None
    crash_key = env.get("AIGIS_TEST_CRASH_KEY", "").encode() or None
    delay_s = float(env.get("AIGIS_TEST_INFER_DELAY_MS", "0") or 0) / 1000

    def inject(keys: Iterable[bytes | None]) -> None:
        keys = list(keys)
        if stall_key is not None and stall_key in keys:
            time.sleep(3600)
        if crash_key is not None and crash_key in keys:
            raise InjectedCrash(f"injected crash on upload {crash_key.decode()!r} (AIGIS_TEST_CRASH_KEY)")
        if delay_s:
            time.sleep(delay_s)

    return inject


def install(env: Mapping[str, str]) -> None:
    """Wrap the inference stage's entry so every batch passes through the injector first."""
    from worker.pipeline.batch import BatchProcessor

    inject = injector(env)
    original = BatchProcessor.finish

    @functools.wraps(original)
    def finish(self: BatchProcessor, pb: Any) -> Any:
        inject(r.key for r in pb.records)
        return original(self, pb)

    BatchProcessor.finish = finish  # type: ignore[method-assign]  # the point of this module


def main(argv: list[str] | None = None) -> int:
    install(os.environ)
    from worker.cli import main as worker_main

    return worker_main(argv)


if __name__ == "__main__":
    sys.exit(main())
