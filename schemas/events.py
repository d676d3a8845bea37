"""Event contracts on the three topics aigis touches.

These pydantic v2 models are the single source of truth for the wire format.
JSON Schema files are generated from them (``python -m schemas``) and checked
in next to this module so that services in other languages can code-generate
their consumers. Every event carries ``schema_version`` so a consumer can refuse
what it does not understand instead of misreading it.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.attribution import Attribution
from schemas.provenance import DecidedBy, Provenance

#: Versions of the event schemas this code reads and writes. A reader refuses a
#: higher version (``unsupported_schema_version``) rather than guessing, so a
#: version is bumped whenever a reader of the previous one could misread an
#: event: a field added to a model that forbids unknown fields, a field whose
#: meaning changed. Verdict version 2 added ``model_label``, ``decided_by`` and
#: ``provenance``, and ``label`` may now be set by provenance evidence rather
#: than by ``score`` (the README says what a version-1 consumer must change).
UPLOAD_SCHEMA_VERSION: Final = 1
VERDICT_SCHEMA_VERSION: Final = 2
DEAD_LETTER_SCHEMA_VERSION: Final = 1

UploadId = Annotated[str, Field(min_length=1, max_length=512, description="Producer-assigned id of the upload; the Kafka key of every event about it.")]


def utcnow() -> datetime:
    """Timezone-aware now, the only timestamp form the events carry."""
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Label(StrEnum):
    """What downstream services act on."""

    ai_generated = "ai_generated"
    real = "real"
    uncertain = "uncertain"


class CacheStatus(StrEnum):
    """Where the verdict's score came from."""

    miss = "miss"
    hit = "hit"
    near_duplicate = "near_duplicate"


class ErrorCode(StrEnum):
    """Closed list of reasons an upload went to the dead-letter topic.

    Downstream tooling switches on these; add a member (and bump nothing else)
    rather than reusing one with a different meaning.
    """

    undecodable = "undecodable"
    too_large = "too_large"
    unsupported_format = "unsupported_format"
    decompression_bomb = "decompression_bomb"
    image_too_small = "image_too_small"
    decode_timeout = "decode_timeout"
    schema_invalid = "schema_invalid"
    unsupported_schema_version = "unsupported_schema_version"
    invalid_base64 = "invalid_base64"
    missing_key = "missing_key"
    fetch_failed = "fetch_failed"
    uri_refused = "uri_refused"
    inference_failed = "inference_failed"
    #: The broker refused the record's outcome repeatedly; this minimal dead letter stands in for it.
    outcome_refused = "outcome_refused"


class UploadEvent(_Event):
    """An image to screen, as JSON on the uploads topic (wire format b).

    Exactly one of ``image_base64`` (inline bytes) and ``image_uri`` (fetched by
    the worker under its allow-list, size cap and timeout) is set. Raw image
    bytes as the record value with the upload id as key (wire format a) need no
    envelope at all.
    """

    schema_version: int = Field(UPLOAD_SCHEMA_VERSION, ge=1, description="Version of this schema the producer wrote.")
    upload_id: UploadId
    tenant: str | None = Field(None, max_length=256, description="Owning tenant, echoed into the verdict.")
    image_base64: str | None = Field(None, description="The image bytes, standard base64 (RFC 4648).")
    image_uri: str | None = Field(
        None,
        max_length=4096,
        description="Where to fetch the image: https://, http:// or file:// (worker policy decides which are allowed).",
    )
    content_type: str | None = Field(None, max_length=128, description="Declared media type; advisory, the worker sniffs the bytes.")
    submitted_at: datetime | None = Field(None, description="When the upload service accepted the upload.")

    @model_validator(mode="after")
    def _exactly_one_image(self) -> UploadEvent:
        if (self.image_base64 is None) == (self.image_uri is None):
            raise ValueError("exactly one of image_base64 and image_uri must be set")
        return self

    def image_bytes(self) -> bytes:
        """Decode the inline image; raises ``binascii.Error`` on bad base64."""
        if self.image_base64 is None:
            raise ValueError("event carries a URI, not inline bytes")
        return base64.b64decode(self.image_base64, validate=True)

    @classmethod
    def inline(cls, upload_id: str, data: bytes, **kw: object) -> UploadEvent:
        """Build an event with the image inline (what producers usually want)."""
        return cls(upload_id=upload_id, image_base64=base64.b64encode(data).decode("ascii"), **kw)


class Thresholds(_Event):
    """The operating point a label was decided with (from the bundle manifest)."""

    threshold: float = Field(ge=0.0, le=1.0, description="Score at or above which an image is AI-generated.")
    uncertain_low: float = Field(ge=0.0, le=1.0, description="Scores in [uncertain_low, uncertain_high) are labelled uncertain.")
    uncertain_high: float = Field(ge=0.0, le=1.0)
    target_fpr: float | None = Field(None, description="False-positive rate the threshold was calibrated for.")
    calibrated: bool = Field(description="False when the bundle's head was never calibrated on validation data: labels carry no meaning.")


class BundleRef(_Event):
    """Which model produced a verdict; verdicts are reproducible per bundle sha256."""

    name: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Timings(_Event):
    """Milliseconds spent per stage for this upload (batch stages are shared by the batch)."""

    queue_ms: float = Field(ge=0, description="From the record's broker timestamp to the worker picking it up.")
    decode_ms: float = Field(ge=0, description="Fetch, decode and preprocess.")
    inference_ms: float = Field(ge=0, description="Backbone and heads for the batch this upload rode in (0 on a cache hit).")
    total_ms: float = Field(ge=0, description="From pick-up to the verdict being handed to the producer.")


class ShadowScore(_Event):
    """Score from a shadow bundle: logged and attached, never used for the label."""

    bundle: BundleRef
    score: float = Field(ge=0.0, le=1.0)
    label: Label
    head_scores: dict[str, float] = Field(default_factory=dict)


class VerdictEvent(_Event):
    """One per upload on the verdicts topic, keyed by upload id.

    ``score`` is always the model's, also when provenance set the label: the two
    assessments are both in every verdict (``model_label`` is what the score
    alone gives, ``provenance`` what the image's metadata and watermark say),
    and ``decided_by`` names the one the label follows.
    """

    # Every field is in every serialized verdict, so the JSON Schema lists them all as required.
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_serialization_defaults_required=True)

    schema_version: Literal[2] = VERDICT_SCHEMA_VERSION
    upload_id: UploadId
    tenant: str | None = None
    content_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the image bytes that were scored.")
    label: Label = Field(description="What downstream acts on: model_label, or ai_generated when decisive provenance evidence decided.")
    score: float = Field(ge=0.0, le=1.0, description="The model's probability that the image is AI-generated (fused over heads); never changed by provenance.")
    # Filled from `label` when a model-decided verdict is built without it (the before-validator below); the factory only
    # gives the field a default for type checkers and never shows in the JSON Schema.
    model_label: Label = Field(default_factory=lambda: Label.uncertain, description="The label the model's score alone gives under the bundle's thresholds.")
    decided_by: DecidedBy = Field(DecidedBy.model, description="model: label == model_label; provenance: decisive provenance evidence set the label.")
    provenance: Provenance = Field(default_factory=Provenance.not_read, description="The provenance signals read for this upload.")
    thresholds: Thresholds
    head_scores: dict[str, float] = Field(default_factory=dict, description="Per-head probability of AI-generated.")
    anomaly: dict[str, float] = Field(
        default_factory=dict,
        description="Raw anomaly signals some heads expose (e.g. gendet teacher-student discrepancy); worth monitoring for drift.",
    )
    bundle: BundleRef
    cache: CacheStatus
    timings: Timings
    shadow: ShadowScore | None = None
    attribution: Attribution | None = Field(
        None, description="Which generator family the image resembles (or 'unknown'), from the bundle's attribution head; never changes the label."
    )
    produced_at: datetime = Field(default_factory=utcnow)

    @model_validator(mode="before")
    @classmethod
    def _model_label_defaults_to_label(cls, data: object) -> object:
        """A verdict the model decided needs no separate model_label (``label`` is it); one provenance decided must give it."""
        if isinstance(data, dict) and "model_label" not in data:
            if data.get("decided_by", DecidedBy.model) in (DecidedBy.model, "model"):
                data = {**data, "model_label": data.get("label")}
            else:
                raise ValueError("model_label is required when provenance decided the label")
        return data

    @model_validator(mode="after")
    def _decision_is_consistent(self) -> VerdictEvent:
        if self.decided_by is DecidedBy.model:
            if self.label != self.model_label:
                raise ValueError("decided_by is model but label differs from model_label")
            if self.provenance.decisive:
                raise ValueError("decided_by is model but provenance lists decisive signals")
        else:
            if self.label is not Label.ai_generated:
                raise ValueError("provenance can only decide ai_generated")
            if not self.provenance.decisive:
                raise ValueError("decided_by is provenance but no signal is listed as decisive")
        return self

    @property
    def cached(self) -> bool:
        return self.cache is not CacheStatus.miss


class SourceRecord(_Event):
    """Where on the input topic the dead-lettered record sits, so it can be replayed."""

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    timestamp_ms: int | None = None


class DeadLetter(_Event):
    """An upload that could not be screened, and why. Nothing is dropped silently."""

    schema_version: Literal[1] = DEAD_LETTER_SCHEMA_VERSION
    upload_id: str | None = Field(None, description="The upload id when it could be read (record key or JSON field).")
    tenant: str | None = None
    error_code: ErrorCode
    message: str = Field(max_length=2000, description="Human-readable detail; never contains image bytes.")
    source: SourceRecord
    payload_size: int = Field(ge=0, description="Bytes in the original record value.")
    payload_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the original record value.")
    payload_base64: str | None = Field(
        None, description="The original record value, when it fits the dead-letter size cap, for replay without the input topic."
    )
    produced_at: datetime = Field(default_factory=utcnow)

    @field_validator("message")
    @classmethod
    def _one_line(cls, v: str) -> str:
        return " ".join(v.split())


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


__all__ = [
    "BundleRef",
    "CacheStatus",
    "DeadLetter",
    "ErrorCode",
    "Label",
    "ShadowScore",
    "SourceRecord",
    "Thresholds",
    "Timings",
    "UploadEvent",
    "VerdictEvent",
    "b64encode",
    "utcnow",
]
