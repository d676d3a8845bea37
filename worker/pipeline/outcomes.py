"""Every record's outcome, built so that it can always be delivered.

A record ends as exactly one :class:`Outcome`: a verdict, or a dead letter.
Construction is *total*: whatever the record holds (ids that are not valid
Unicode, a key of many megabytes, a payload too large to copy), the outcome is
serialised here, once, and checked against the largest record the producer
accepts before it ever reaches the deliver stage. What does not fit is reduced,
step by step, with the reason written into the dead letter's message:

1. the payload copy is left out (its size and sha256 stay);
2. ids that cannot be encoded, or that are too long, are left out;
3. a record key too long to reuse is replaced by ``sha256:<hex of the key>``;
4. last resort, a minimal dead letter: code, source position, payload hash.

Step 4 always fits (a few hundred ASCII bytes), so no record can produce an
outcome that the broker refuses for its size, and no bad input can make this
module raise. See :mod:`worker.runtime.delivery` for what happens if a broker
refuses an outcome anyway.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import structlog

from schemas import CacheStatus, DeadLetter, ErrorCode, ShadowScore, Timings, VerdictEvent, b64encode
from schemas.provenance import ProvenancePolicy
from worker.errors import InputError
from worker.ingest.provenance import ProvenanceReading
from worker.ingest.wire import InputRecord, Upload, best_effort_ids, encodable
from worker.model.bundle import LoadedBundle
from worker.model.policy import apply_provenance, thresholds
from worker.model.scores import Score
from worker.pipeline.verdict_details import attribution_for, log_decisive

log = structlog.get_logger(__name__)

#: Bytes a record takes on the wire beyond its key and value (record + batch headers), generously rounded up.
RECORD_OVERHEAD_BYTES = 1024
#: Longest record key reused on a dead letter; longer ones are replaced by their sha256.
MAX_KEY_BYTES = 4 * 512


@dataclass(frozen=True)
class OutcomeLimits:
    """What an outcome must fit: the producer's request size, and the dead letters' payload-copy cap."""

    max_record_bytes: int
    payload_copy_max_bytes: int

    @classmethod
    def for_producer(cls, max_request_size: int, payload_copy_max_bytes: int) -> OutcomeLimits:
        return cls(max_request_size - RECORD_OVERHEAD_BYTES, payload_copy_max_bytes)


@dataclass(frozen=True)
class Outcome:
    """What one input record produced, serialised: exactly one of verdict / dead_letter is set."""

    record: InputRecord
    event: VerdictEvent | DeadLetter
    key: bytes | None
    payload: bytes

    @property
    def verdict(self) -> VerdictEvent | None:
        return self.event if isinstance(self.event, VerdictEvent) else None

    @property
    def dead_letter(self) -> DeadLetter | None:
        return self.event if isinstance(self.event, DeadLetter) else None

    @property
    def upload_id(self) -> str | None:
        return self.event.upload_id

    def value(self) -> bytes:
        return self.payload

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.key or b"")


def verdict_outcome(
    record: InputRecord,
    upload: Upload,
    content_sha256: str,
    score: Score,
    bundle: LoadedBundle,
    cache: CacheStatus,
    timings: Timings,
    shadow: ShadowScore | None,
    limits: OutcomeLimits,
    *,
    provenance: ProvenanceReading | None = None,
    policy: ProvenancePolicy = ProvenancePolicy.off,
) -> Outcome:
    """The verdict for a scored upload; a dead letter if, against every check upstream, it cannot be sent.

    ``provenance`` is the image's reading (None when none was made) and
    ``policy`` the worker's ``--provenance-policy``: they set ``label``,
    ``model_label``, ``decided_by`` and ``provenance`` through
    :func:`~worker.model.policy.apply_provenance`; ``score`` is the model's
    whatever they say.
    """
    cal = bundle.manifest.calibration
    try:
        decision = apply_provenance(score.probability, cal, provenance, policy)
        event = VerdictEvent(
            upload_id=upload.upload_id,
            tenant=upload.tenant,
            content_sha256=content_sha256,
            label=decision.label,
            model_label=decision.model_label,
            decided_by=decision.decided_by,
            provenance=decision.provenance,
            score=score.probability,
            thresholds=thresholds(cal),
            head_scores=dict(score.heads),
            anomaly=dict(score.anomaly),
            bundle=bundle.ref,
            cache=cache,
            timings=timings,
            shadow=shadow,
            attribution=attribution_for(score, bundle),
        )
        outcome = Outcome(record, event, upload.upload_id.encode("utf-8"), event.model_dump_json().encode("utf-8"))
    except Exception as exc:  # a bug upstream let something unencodable through: never lose the record over it
        reason = f"verdict could not be serialised: {type(exc).__name__}: {exc}"
        return dead_letter_outcome(record, InputError(ErrorCode.schema_invalid, reason), upload, limits)
    if outcome.size <= limits.max_record_bytes:
        log_decisive(record, upload, decision, score)
        return outcome
    reason = f"verdict is {outcome.size} bytes, more than the {limits.max_record_bytes} the producer accepts"
    return dead_letter_outcome(record, InputError(ErrorCode.schema_invalid, reason), upload, limits)


def dead_letter_outcome(record: InputRecord, error: InputError, upload: Upload | None, limits: OutcomeLimits) -> Outcome:
    """A dead letter that always fits the producer's limit (see the module docstring for the reduction steps)."""
    value = record.value or b""
    payload_sha = hashlib.sha256(value).hexdigest()
    notes: list[str] = []
    upload_id, tenant = (upload.upload_id, upload.tenant) if upload is not None else best_effort_ids(record)
    if upload_id is not None and not encodable(upload_id):
        upload_id = None
        notes.append("upload id left out: not valid Unicode text")
    if tenant is not None and not encodable(tenant):
        tenant = None
        notes.append("tenant left out: not valid Unicode text")
    key = _key_for(record, upload_id, notes)
    copy = value if len(value) <= limits.payload_copy_max_bytes else None
    message = _text(error.message)
    for attempt in range(2):
        try:
            event = DeadLetter(
                upload_id=upload_id,
                tenant=tenant,
                error_code=error.code,
                message=_message(message, notes),
                source=record.source,
                payload_size=len(value),
                payload_sha256=payload_sha,
                payload_base64=b64encode(copy) if copy is not None else None,
            )
            outcome = Outcome(record, event, key, event.model_dump_json().encode("utf-8"))
        except Exception as exc:  # never let an odd record stop its partition
            log.warning("dead_letter_reduced", error=f"{type(exc).__name__}: {str(exc)[:200]}", partition=record.partition, offset=record.offset)
            break
        if outcome.size <= limits.max_record_bytes:
            _log(outcome, error)
            return outcome
        if attempt == 0 and copy is not None:
            copy = None
            notes.append(f"payload copy left out: the dead letter would exceed {limits.max_record_bytes} bytes")
            continue
        break
    outcome = minimal_dead_letter(record, error.code, payload_sha, len(value))
    _log(outcome, error)
    return outcome


def minimal_dead_letter(record: InputRecord, code: ErrorCode, payload_sha256: str, payload_size: int) -> Outcome:
    """The last resort: code, source position and payload hash; a few hundred ASCII bytes, always deliverable."""
    event = DeadLetter(
        error_code=code,
        message="outcome reduced to the minimum: ids, message and payload could not be carried (see the source record)",
        source=record.source,
        payload_size=payload_size,
        payload_sha256=payload_sha256,
    )
    key = b"sha256:" + hashlib.sha256(record.key).hexdigest().encode() if record.key else None
    return Outcome(record, event, key, event.model_dump_json().encode("ascii"))


def queue_ms(record: InputRecord, picked_at: float) -> float:
    """From the broker timestamp to pick-up (0 without a timestamp)."""
    return max(0.0, picked_at * 1000 - record.timestamp_ms) if record.timestamp_ms else 0.0


def timings(record: InputRecord, picked_at: float, decode_ms: float, inference_ms: float) -> Timings:
    return Timings(queue_ms=queue_ms(record, picked_at), decode_ms=decode_ms, inference_ms=inference_ms, total_ms=(time.time() - picked_at) * 1000)


def _key_for(record: InputRecord, upload_id: str | None, notes: list[str]) -> bytes | None:
    if upload_id is not None:
        return upload_id.encode("utf-8")
    if record.key is None or len(record.key) <= MAX_KEY_BYTES:
        return record.key
    notes.append(f"record key of {len(record.key)} bytes replaced by its sha256")
    return b"sha256:" + hashlib.sha256(record.key).hexdigest().encode()


def _text(message: str) -> str:
    """Text that survives UTF-8 encoding: lone surrogates become ``\\udXXX`` escapes."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _message(message: str, notes: list[str]) -> str:
    full = message if not notes else f"{message} [{'; '.join(notes)}]"
    return full[:2000]


def _log(outcome: Outcome, error: InputError) -> None:
    rec = outcome.record
    log.info(
        "dead_letter",
        upload_id=outcome.upload_id,
        error_code=error.code.value,
        detail=_text(error.message[:200]),
        partition=rec.partition,
        offset=rec.offset,
    )
