"""Inference that fails only the image that fails: chunk by ``max_batch``, halve a failing chunk.

ONNX Runtime raises for a whole batch when one input trips a graph (an odd
shape a head cannot take, a numerical assertion). Rather than dead-lettering
the whole batch, a failing chunk is split in two and each half retried, down
to the single image; only that image is reported through ``on_error``. A
healthy batch costs one call per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import structlog

from worker.model.scores import Score, ScoreBatch

log = structlog.get_logger(__name__)

T = TypeVar("T")


def infer_resilient(
    items: Sequence[T],
    infer: Callable[[Sequence[T]], ScoreBatch],
    max_batch: int,
    on_error: Callable[[int, Exception], None],
    on_split: Callable[[], None] = lambda: None,
) -> list[Score | None]:
    """One :class:`Score` per item, ``None`` where the item alone failed (after ``on_error(index, exc)``)."""
    results: list[Score | None] = [None] * len(items)

    def run(lo: int, hi: int) -> None:
        try:
            batch = infer(items[lo:hi])
            for i in range(lo, hi):
                results[i] = batch.row(i - lo)
        except Exception as exc:  # ORT raises plain RuntimeError/Fail types
            if hi - lo == 1:
                on_error(lo, exc)
                return
            on_split()
            log.warning("inference_batch_failed_retrying_smaller", size=hi - lo, error=str(exc)[:300])
            mid = (lo + hi) // 2
            run(lo, mid)
            run(mid, hi)

    for lo in range(0, len(items), max_batch):
        run(lo, min(lo + max_batch, len(items)))
    return results


def stack_native(crops: Sequence[np.ndarray | None]) -> np.ndarray:
    """Batch the native crops of a bundle that reads them (every image of such a batch has one)."""
    present = [c for c in crops if c is not None]
    if len(present) != len(crops):
        raise ValueError("a bundle with a native-resolution head got an image without its native crop")
    return np.stack(present)
