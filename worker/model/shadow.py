"""Shadow scoring: a second bundle scores what the primary scored, and never decides anything.

The shadow's score rides along in the verdict (``shadow``) and in one log line
per upload, so a candidate bundle can be compared with the primary on live
traffic before it is promoted. A shadow failure is logged and costs nothing:
no verdict waits on it, none is changed by it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import structlog

from schemas import ShadowScore
from worker.model.bundle import LoadedBundle
from worker.model.inference import infer_resilient, stack_native
from worker.model.policy import decide
from worker.model.scores import ScoreBatch

log = structlog.get_logger(__name__)

#: (pixels, native crop or None) for one image, as the shadow bundle reads it.
ShadowInput = tuple[np.ndarray, np.ndarray | None]


def shadow_scores(shadow: LoadedBundle, inputs: Sequence[ShadowInput], max_batch: int, on_split: Callable[[], None] = lambda: None) -> list[ShadowScore | None]:
    """One :class:`ShadowScore` per input, ``None`` where the shadow failed on it (or on everything)."""
    if not inputs:
        return []

    def infer(chunk: Sequence[ShadowInput]) -> ScoreBatch:
        pixels = np.stack([p for p, _ in chunk])
        return shadow.score(pixels, stack_native([n for _, n in chunk]) if shadow.native_crop_size else None)

    def failed(i: int, exc: Exception) -> None:
        log.warning("shadow_inference_failed", index=i, error=str(exc)[:300])

    try:
        rows = infer_resilient(inputs, infer, max_batch, failed, on_split)
    except Exception as exc:  # the shadow must never cost a verdict
        log.warning("shadow_failed", error=str(exc)[:300])
        return [None] * len(inputs)
    cal = shadow.manifest.calibration
    return [
        None
        if row is None
        else ShadowScore(bundle=shadow.ref, score=min(1.0, max(0.0, row.probability)), label=decide(row.probability, cal), head_scores=dict(row.heads))
        for row in rows
    ]
