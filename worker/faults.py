"""Test-only fault injection, off unless an ``AIGIS_TEST_*`` variable is set.

Some failure modes cannot be produced on demand with real parts: a pipeline
stage that wedges (to show the liveness probe turning unhealthy) is one. This
module is the single, documented place where the worker reads such switches;
nothing here touches Kafka or Redis, and production configurations never set
them (they are not ``WorkerConfig`` fields, so deploy manifests cannot either).

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

import os
import time
from collections.abc import Iterable

STALL_KEY = os.environ.get("AIGIS_TEST_STALL_KEY", "").encode() or None
CRASH_KEY = os.environ.get("AIGIS_TEST_CRASH_KEY", "").encode() or None
INFER_DELAY_S = float(os.environ.get("AIGIS_TEST_INFER_DELAY_MS", "0") or 0) / 1000


class InjectedCrash(RuntimeError):
    """Raised by AIGIS_TEST_CRASH_KEY: stands in for a bug in a pipeline stage."""


def inject(keys: Iterable[bytes | None]) -> None:
    """Called by the inference stage with the batch's keys; does nothing unless a switch above is set."""
    keys = list(keys)
    if STALL_KEY is not None and STALL_KEY in keys:
        time.sleep(3600)
    if CRASH_KEY is not None and CRASH_KEY in keys:
        raise InjectedCrash(f"injected crash on upload {CRASH_KEY.decode()!r} (AIGIS_TEST_CRASH_KEY)")
    if INFER_DELAY_S:
        time.sleep(INFER_DELAY_S)
