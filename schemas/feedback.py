"""``ModeratorDecision``: a person's decision on an upload, the input of the feedback loop.

Published by the moderation tool on a decisions topic (key = upload id). The
feedback collector (``python -m export feedback collect``) joins decisions with
the verdicts topic by upload id and content sha256, fetches or decodes the
image, and builds a training set in the UniversalFakeDetect layout; ``feedback
compare`` scores the primary and shadow bundles against the decisions.
"""

from __future__ import annotations

import base64
from datetime import datetime
from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.events import UploadId

DECISION_SCHEMA_VERSION: Final = 1


class DecisionLabel(StrEnum):
    """What the person decided; there is no 'uncertain': undecided uploads have no decision event."""

    ai_generated = "ai_generated"
    real = "real"


class DecisionSource(StrEnum):
    """Where the decision came from (the collector keeps, per image, the latest decision by decided_at)."""

    moderator = "moderator"
    appeal = "appeal"
    user_report = "user_report"


class ModeratorDecision(BaseModel):
    """A decision about one upload; exactly one of ``image_base64`` and ``image_uri`` says where the image is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(DECISION_SCHEMA_VERSION, ge=1, description="Version of this schema the producer wrote.")
    upload_id: UploadId
    tenant: str | None = Field(None, max_length=256)
    content_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the image bytes the decision is about (joins with the verdict's).")
    decision: DecisionLabel
    source: DecisionSource
    decided_at: datetime
    moderator: str | None = Field(None, max_length=256, description="Opaque id of who decided (never a name or an address).")
    note: str | None = Field(None, max_length=2000)
    image_base64: str | None = Field(None, description="The image bytes, standard base64.")
    image_uri: str | None = Field(None, max_length=4096, description="Where to fetch the image (the collector fetches under its own allow-list).")

    @model_validator(mode="after")
    def _exactly_one_image(self) -> ModeratorDecision:
        if (self.image_base64 is None) == (self.image_uri is None):
            raise ValueError("exactly one of image_base64 and image_uri must be set")
        return self

    def image_bytes(self) -> bytes:
        if self.image_base64 is None:
            raise ValueError("decision carries a URI, not inline bytes")
        return base64.b64decode(self.image_base64, validate=True)


__all__ = ["DECISION_SCHEMA_VERSION", "DecisionLabel", "DecisionSource", "ModeratorDecision"]
