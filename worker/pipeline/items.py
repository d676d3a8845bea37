"""The pipeline's data: its settings, one record's progress, a prepared batch, and where models come from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from schemas import CacheStatus, ShadowScore
from worker.config import WorkerConfig, message_bytes_for
from worker.errors import InputError
from worker.ingest.decode import DecodeLimits
from worker.ingest.fetch import FetchPolicy
from worker.ingest.fetcher import policy_from_config
from worker.ingest.wire import InputRecord, Upload
from worker.model.rollout import Models
from worker.model.scores import Score
from worker.pipeline.outcomes import OutcomeLimits


class ModelSource(Protocol):
    """Where a batch gets its models: the rollout (live), or a fixed :class:`Models` snapshot."""

    def current(self) -> Models: ...


@dataclass(frozen=True)
class PipelineSettings:
    """The parts of the configuration the pipeline reads, explicit."""

    max_batch: int
    max_image_bytes: int
    decode_limits: DecodeLimits
    decode_timeout_s: float
    fetch_policy: FetchPolicy
    near_distance: int | None
    outcome_limits: OutcomeLimits

    @classmethod
    def from_config(cls, cfg: WorkerConfig) -> PipelineSettings:
        return cls(
            max_batch=cfg.max_batch,
            max_image_bytes=cfg.max_image_bytes,
            decode_limits=DecodeLimits(cfg.max_image_bytes, cfg.max_image_pixels, cfg.min_image_side),
            decode_timeout_s=cfg.decode_timeout_s,
            fetch_policy=policy_from_config(cfg),
            near_distance=cfg.near_duplicate_max_distance if cfg.near_duplicate_max_distance >= 0 else None,
            outcome_limits=OutcomeLimits.for_producer(message_bytes_for(cfg.max_image_bytes), min(cfg.dead_letter_payload_max_bytes, cfg.max_image_bytes)),
        )


@dataclass(frozen=True)
class Prepared:
    """A decoded, preprocessed image ready for the backbone (and the shadow bundle's, if it reads other tensors)."""

    pixels: np.ndarray
    native: np.ndarray | None
    decode_ms: float
    phash: int | None = None
    shadow_pixels: np.ndarray | None = None
    shadow_native: np.ndarray | None = None

    def shadow_input(self, same_as_primary: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """What the shadow bundle reads: the primary's tensors, or its own when its preprocessing differs."""
        if same_as_primary:
            return self.pixels, self.native
        if self.shadow_pixels is None:
            raise ValueError("the shadow bundle reads its own tensors, but none were computed for this image")
        return self.shadow_pixels, self.shadow_native


@dataclass
class Item:
    """One record's progress through the batch."""

    record: InputRecord
    picked_at: float
    upload: Upload | None = None
    data: bytes | None = None
    sha: str | None = None
    decode_ms: float = 0.0
    error: InputError | None = None
    score: Score | None = None
    cache: CacheStatus = CacheStatus.miss
    inference_ms: float = 0.0
    shadow: ShadowScore | None = None


@dataclass
class PreparedBatch:
    """The first half's output: items with hits resolved and images decoded, awaiting inference."""

    models: Models
    items: list[Item]
    misses: dict[str, list[Item]] = field(default_factory=dict)
    ready: list[tuple[str, Prepared]] = field(default_factory=list)

    @property
    def records(self) -> list[InputRecord]:
        return [it.record for it in self.items]
