"""``DriftReport``: a label-free drift statistic crossed its threshold (or came back under it).

Published by the worker on the drift topic (``aigis.drift`` by default, key =
the bundle's sha256) and logged as a warning, once per crossing: an ``alarm``
when a statistic goes above its threshold, a ``recovered`` when it has come
back below it (with hysteresis), never once per batch. Every report carries
all the statistics of the window at that moment, so one report is enough to
see which signals moved together.

What the statistics mean and how to act on them: README, "Drift".
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import BundleRef, utcnow

DRIFT_REPORT_SCHEMA_VERSION: Final = 1


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftStatistic(StrEnum):
    """The three label-free statistics the worker keeps over its sliding window."""

    score_shift = "score_shift"
    uncertain_rate = "uncertain_rate"
    novelty_rate = "novelty_rate"


class DriftStatus(StrEnum):
    alarm = "alarm"
    recovered = "recovered"


class DriftReading(_Event):
    """One statistic of one signal over the window, against its threshold."""

    statistic: DriftStatistic
    signal: str = Field(description="'score' (fused), a head name, an anomaly key, or 'embedding' for the novelty rate.")
    value: float = Field(description="PSI for score_shift; a share of the window's images for the two rates.")
    threshold: float = Field(description="Above this the statistic is in alarm (depends on the window size: see README, Drift).")
    expected: float | None = Field(None, description="What the reference predicts for this window (rates only), at the window's estimated fake share.")
    alarm: bool


class DriftWindow(_Event):
    """The sliding window the statistics were computed over."""

    images: int = Field(ge=0, description="Fresh (non-cached) verdicts in the window.")
    started_at: datetime | None = Field(None, description="Time of the oldest verdict in the window.")
    ended_at: datetime | None = Field(None, description="Time of the newest verdict in the window.")
    max_images: int = Field(ge=1, description="The window's size limit in images (--drift-window-images).")
    max_seconds: float = Field(gt=0, description="The window's age limit (--drift-window-s).")


class DriftReport(_Event):
    """A drift statistic crossed its threshold for one bundle (key on the drift topic: the bundle's sha256)."""

    schema_version: Literal[1] = DRIFT_REPORT_SCHEMA_VERSION
    bundle: BundleRef
    role: Literal["primary", "shadow"] = Field("primary", description="Which of the worker's bundles the statistics are about.")
    status: DriftStatus
    statistic: DriftStatistic
    signal: str
    value: float
    threshold: float
    expected: float | None = None
    fake_share: float | None = Field(None, ge=0, le=1, description="Share of AI-generated images in the window, estimated from the score distribution.")
    window: DriftWindow
    readings: list[DriftReading] = Field(default_factory=list, description="Every statistic of the window at this moment.")
    message: str = Field(max_length=2000, description="One human-readable line: what crossed, by how much, what to look at.")
    worker: str | None = Field(None, max_length=256, description="Which worker process saw it (client id / host), when the runtime sets it.")
    produced_at: datetime = Field(default_factory=utcnow)


__all__ = ["DRIFT_REPORT_SCHEMA_VERSION", "DriftReading", "DriftReport", "DriftStatistic", "DriftStatus", "DriftWindow"]
