"""The pipeline's data: its settings, one record's progress, a prepared batch, and where models come from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from schemas import CacheStatus, ShadowScore
from schemas.provenance import ProvenancePolicy
from worker.config import WorkerConfig, message_bytes_for
from worker.errors import InputError
from worker.ingest.decode import DecodeLimits
from worker.ingest.fetch import FetchPolicy
from worker.ingest.fetcher import policy_from_config
from worker.ingest.provenance import DEFAULT_LIMITS, ProvenanceLimits, ProvenanceReading, TrustList, TrustListError
from worker.ingest.wire import InputRecord, Upload
from worker.model.policy import policy_fingerprint
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
    provenance: ProvenanceSettings = field(default_factory=lambda: ProvenanceSettings(ProvenancePolicy.off))

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
            provenance=ProvenanceSettings.from_config(cfg),
        )


@dataclass(frozen=True)
class ProvenanceSettings:
    """How the provenance stage runs: the policy, the C2PA trust anchors, the parser limits, and their fingerprint.

    ``fingerprint`` (:func:`~worker.model.policy.policy_fingerprint`) is computed
    once here and goes into every verdict cache key, so a worker started with
    another policy, other anchors or another reader version never serves a
    verdict whose provenance was read under different rules.
    """

    policy: ProvenancePolicy
    trust: TrustList | None = None
    limits: ProvenanceLimits = DEFAULT_LIMITS
    fingerprint: str = ""
    #: Time budget of one image's provenance read, after its decode (0 = none); not in the fingerprint: it bounds, never changes, a reading.
    timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", policy_fingerprint(self.policy, self.trust, self.limits))

    @property
    def reads(self) -> bool:
        """Whether provenance is read at all (every policy but ``off``)."""
        return self.policy is not ProvenancePolicy.off

    @classmethod
    def from_config(cls, cfg: WorkerConfig) -> ProvenanceSettings:
        """Read the trust anchors once (a file that cannot be used stops the worker with its reason, never trusts nothing silently)."""
        try:
            trust = TrustList.from_file(cfg.provenance_trust_anchors) if cfg.provenance_trust_anchors is not None else None
        except TrustListError as exc:
            raise SystemExit(f"--provenance-trust-anchors: {exc}") from None
        # The stage may read every byte the worker accepts; its other caps (chunks, text, XMP, C2PA) bound the work.
        return cls(cfg.provenance_policy, trust, ProvenanceLimits(max_bytes=cfg.max_image_bytes), timeout_s=cfg.provenance_timeout_s)


@dataclass(frozen=True)
class Prepared:
    """A decoded, preprocessed image ready for the backbone (and the shadow bundle's, if it reads other tensors)."""

    pixels: np.ndarray
    native: np.ndarray | None
    decode_ms: float
    phash: int | None = None
    shadow_pixels: np.ndarray | None = None
    shadow_native: np.ndarray | None = None
    #: What the original bytes say about their origin (None when the policy is off); read in the decode thread.
    provenance: ProvenanceReading | None = None
    provenance_ms: float = 0.0

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
    #: The provenance reading: from the decode thread on a miss, from the cache entry on a hit.
    provenance: ProvenanceReading | None = None


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
