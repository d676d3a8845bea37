"""What a verdict carries beyond the score and label: its attribution, and the log line of a provenance decision.

Both are read off what :func:`~worker.pipeline.outcomes.verdict_outcome`
already has (the score, the bundle's manifest, the policy's decision), never
from the image, so cache hits and near-duplicates get them exactly like fresh
scores. Kept apart from :mod:`~worker.pipeline.outcomes`, whose concern is that
every outcome fits the producer.
"""

from __future__ import annotations

import structlog

from schemas import Attribution
from schemas.provenance import C2paSignal, Signal, WatermarkSignal
from worker.ingest.wire import InputRecord, Upload
from worker.model.bundle import LoadedBundle
from worker.model.policy import Decision
from worker.model.scores import Score

log = structlog.get_logger(__name__)


def attribution_for(score: Score, bundle: LoadedBundle) -> Attribution | None:
    """The verdict's attribution: the top family, or ``unknown`` below the bundle's calibrated threshold.

    Read from the score (so cache hits and near-duplicates carry it like the
    score itself) and the bundle's manifest (so the threshold is the one the
    head was calibrated with). None without an attribution head, or for a
    cache entry written before entries kept the head's output.
    """
    head = bundle.manifest.attribution
    if head is None or not score.attribution:
        return None
    return Attribution.from_probabilities(dict(score.attribution), head.unknown_threshold)


def log_decisive(record: InputRecord, upload: Upload, decision: Decision, score: Score) -> None:
    """One line per signal that set a label (rare, and what an operator wants to see): which, how strong, against what score."""
    for kind in decision.provenance.decisive:
        sig = decision.provenance.signal(kind)
        log.info(
            "provenance_decided",
            upload_id=upload.upload_id,
            partition=record.partition,
            offset=record.offset,
            kind=kind.value,
            strength=sig.strength.value if sig is not None else None,
            evidence=_evidence(sig) if sig is not None else None,
            label=decision.label.value,
            model_label=decision.model_label.value,
            score=round(score.probability, 5),
        )


def _evidence(sig: Signal) -> str | None:
    """What identifies a decisive signal in a log line: the C2PA signer and source type, or the watermark payload."""
    if isinstance(sig, C2paSignal):
        return f"signer={sig.signer} issuer={sig.issuer} source={','.join(sig.digital_source_types)}"[:300]
    if isinstance(sig, WatermarkSignal):
        return f"payload={sig.payload} agreement={sig.agreement}"
    return None
