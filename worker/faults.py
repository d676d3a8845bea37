"""Test-only fault injection, off unless an ``AIGIS_TEST_*`` variable is set.

Some failure modes cannot be produced on demand with real parts: a pipeline
stage that wedges (to show the liveness probe turning unhealthy) is one. This
module is the single, documented place where the worker reads such switches;
nothing here touches Kafka or Redis, and production configurations never set
them (they are not ``WorkerConfig`` fields, so deploy manifests cannot either).

``AIGIS_TEST_STALL_KEY=<upload id>``: the inference stage blocks for an hour
when a batch contains a record with this key, as a hung ONNX Runtime call would.

``AIGIS_TEST_INFER_DELAY_MS=<ms>``: every batch spends this much longer in the
inference stage, as a bigger model on a slower device would; tests use it to
keep the pipeline full when a rebalance or a signal arrives.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

STALL_KEY = os.environ.get("AIGIS_TEST_STALL_KEY", "").encode() or None
INFER_DELAY_S = float(os.environ.get("AIGIS_TEST_INFER_DELAY_MS", "0") or 0) / 1000


def maybe_stall(keys: Iterable[bytes | None]) -> None:
    if STALL_KEY is not None and STALL_KEY in keys:
        time.sleep(3600)
    if INFER_DELAY_S:
        time.sleep(INFER_DELAY_S)
