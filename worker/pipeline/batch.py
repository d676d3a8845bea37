"""One batch of input records to one outcome (verdict or dead letter) each.

This is the worker's logic without Kafka: parse -> fetch -> sha256 -> cache
lookup -> decode/preprocess + provenance (thread pool) -> [near-duplicate
lookup] -> inference in batches -> [shadow bundle] -> cache write -> outcomes
(the label under ``--provenance-policy``). The Kafka
runtime (:mod:`worker.runtime.stages`) and the offline scorer (``python -m
worker score``) both drive it, so they cannot drift apart.

Three steps, so the runtime can overlap them: :meth:`BatchProcessor.receive`
(parse, and fetch URIs on the fetcher's threads), :meth:`BatchProcessor.prepare`
(hash, cache lookup, decoding in the decode pool) and
:meth:`BatchProcessor.finish` (inference, cache write, outcomes). While batch N
is in inference, batch N+1 is being decoded and batch N+2 fetched.
``receive`` takes one snapshot of the models from the rollout and the batch
carries it to ``finish``, so a hot swap never mixes two bundles in one batch.
The cache's part (keys, lookup, near-duplicates, write-back) lives in
:mod:`~worker.pipeline.caching`, one image's decode in
:mod:`~worker.pipeline.images`, so this module stays the batch's sequence.

Guarantee: exactly one :class:`~worker.pipeline.outcomes.Outcome` per input
record, in input order. Bad input becomes a dead letter; an inference failure
is retried with smaller batches down to the single image, and only that image
is dead-lettered.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np
import structlog

from schemas import ErrorCode
from schemas.provenance import ProvenancePolicy
from worker.cache.verdicts import VerdictCache
from worker.config import WorkerConfig
from worker.errors import InputError
from worker.ingest.decode_pool import DecodePool
from worker.ingest.fetcher import Fetcher
from worker.ingest.wire import InputRecord, parse_record
from worker.model.bundle import LoadedBundle
from worker.model.inference import infer_resilient, stack_native
from worker.model.rollout import Models
from worker.model.scores import Score, ScoreBatch
from worker.model.shadow import shadow_scores
from worker.ops.metrics import WorkerMetrics
from worker.pipeline import outcomes
from worker.pipeline.caching import BatchCache
from worker.pipeline.images import prepare_image
from worker.pipeline.items import Item, ModelSource, PipelineSettings, Prepared, PreparedBatch
from worker.pipeline.outcomes import Outcome

log = structlog.get_logger(__name__)


class BatchProcessor:
    """Turns batches of records into outcomes with the rollout's models, one cache and a decode pool."""

    def __init__(
        self,
        settings: PipelineSettings,
        models: ModelSource,
        cache: VerdictCache | None,
        pool: Executor,
        metrics: WorkerMetrics | None = None,
        fetcher: Fetcher | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.pool = pool
        self.metrics = metrics or WorkerMetrics.unexposed()
        self.caching = BatchCache(cache, settings, self.metrics)
        self._fetcher = fetcher

    @classmethod
    def offline(
        cls,
        bundle: LoadedBundle,
        pool: Executor,
        max_batch: int = 32,
        *,
        provenance_policy: ProvenancePolicy = ProvenancePolicy.decide,
        trust_anchors: Path | None = None,
    ) -> BatchProcessor:
        """One fixed bundle, default limits, no cache: the offline scorer and the evaluation run this.

        Provenance as the worker's defaults have it (``decide``, no trust anchors) unless told otherwise.
        """
        cfg = WorkerConfig(bundle=bundle.path, max_batch=max_batch, redis_url="", provenance_policy=provenance_policy, provenance_trust_anchors=trust_anchors)
        return cls(PipelineSettings.from_config(cfg), Models(bundle), None, pool)

    # -- first half: parse and fetch, then hash, cache, decode ------------------------
    def receive(self, records: Sequence[InputRecord]) -> PreparedBatch:
        """Parse every record and fetch the bytes its URI points at: the batch's inputs, nothing decoded yet.

        A step of its own so the runtime can fetch batch N+1 while batch N is
        decoding: a store that answers in 50 ms then costs latency, not throughput.
        """
        picked_at = time.time()
        pb = PreparedBatch(self.models.current(), [Item(r, picked_at) for r in records])
        self._parse(pb.items)
        self._fetch([it for it in pb.items if it.error is None and it.data is None and it.upload is not None and it.upload.uri])
        return pb

    def prepare(self, pb: PreparedBatch) -> PreparedBatch:
        """Hash, cache lookup, decode + preprocess + provenance (decode pool), near-duplicates: ready for :meth:`finish`."""
        with self.metrics.timed("prepare"):
            live = [it for it in pb.items if it.error is None and it.data is not None]
            for it in live:
                it.sha = hashlib.sha256(it.data or b"").hexdigest()
            self.caching.lookup(pb, live)
            self._decode(pb)
            if self.caching.near_duplicates_on and pb.ready:
                self.caching.near_duplicates(pb)
            return pb

    def _parse(self, items: list[Item]) -> None:
        for it in items:
            try:
                it.upload = parse_record(it.record, self.settings.max_image_bytes)
                it.data = it.upload.data
            except InputError as exc:
                it.error = exc

    def _fetch(self, items: list[Item]) -> None:
        """Fetch the batch's URIs on the fetcher's own threads (never the decode pool's), under one deadline."""
        if not items:
            return
        with self.metrics.timed("fetch"):
            uris = [it.upload.uri or "" for it in items if it.upload is not None]
            results = self.fetcher.fetch_many(uris, deadline=time.monotonic() + self.settings.fetch_policy.timeout_s)
        for it, result in zip(items, results, strict=True):
            if isinstance(result, InputError):
                it.error = result
            else:
                it.data = result

    @property
    def fetcher(self) -> Fetcher:
        """The worker's fetcher; the offline scorer, which rarely sees a URI, gets a small one on first use."""
        if self._fetcher is None:
            self._fetcher = Fetcher(self.settings.fetch_policy, concurrency=4)
        return self._fetcher

    def _decode(self, pb: PreparedBatch) -> None:
        """Decode each distinct image once; duplicates inside the batch share the work."""
        if not pb.misses:
            return
        with self.metrics.timed("decode"):
            futures = {sha: self._submit_decode(pb.models, group[0].data or b"") for sha, group in pb.misses.items()}
            for sha, fut in futures.items():
                try:
                    prep = fut.result()
                except InputError as exc:
                    for it in pb.misses[sha]:
                        it.error = exc
                    continue
                pb.ready.append((sha, prep))
                for it in pb.misses[sha]:
                    it.decode_ms, it.provenance = prep.decode_ms, prep.provenance

    def _submit_decode(self, models: Models, data: bytes) -> Future[Prepared]:
        """One prepare job: the decode under ``--decode-timeout-s``, then provenance under its own limit (see ``prepare_image``)."""
        limit = self.settings.decode_timeout_s
        args = (data, models, self.settings.decode_limits, self.settings.near_distance is not None, self.settings.provenance)
        if isinstance(self.pool, DecodePool) and (limit > 0 or self.settings.provenance.timeout_s > 0):
            return self.pool.submit_limited(
                limit if limit > 0 else None,
                lambda: InputError(ErrorCode.decode_timeout, f"decoding took longer than {limit:g}s"),
                prepare_image,
                *args,
            )
        return self.pool.submit(prepare_image, *args)

    # -- second half: inference, shadow, cache write, outcomes --------------------------
    def finish(self, pb: PreparedBatch) -> list[Outcome]:
        """Inference, shadow and cache write for the images :meth:`prepare` left ready; one outcome per record, in input order."""
        if pb.ready:
            fresh = self._infer(pb)
            if pb.models.shadow is not None:
                self._shadow(pb, [(sha, prep) for sha, prep in pb.ready if sha in fresh])
            self.caching.write(pb, fresh)
        return [self._outcome(pb.models, it) for it in pb.items]

    def process(self, records: Sequence[InputRecord]) -> list[Outcome]:
        return self.finish(self.prepare(self.receive(records)))

    def _infer(self, pb: PreparedBatch) -> dict[str, Score]:
        """Score the decoded images; returns the fresh scores by content sha (failed images get their error)."""
        primary = pb.models.primary

        def infer(chunk: Sequence[tuple[str, Prepared]]) -> ScoreBatch:
            pixels = np.stack([p.pixels for _, p in chunk])
            return primary.score(pixels, stack_native([p.native for _, p in chunk]) if primary.native_crop_size else None)

        def failed(i: int, exc: Exception) -> None:
            for it in pb.misses[pb.ready[i][0]]:
                it.error = InputError(ErrorCode.inference_failed, f"model failed on this image: {type(exc).__name__}: {str(exc)[:300]}")

        with self.metrics.timed("inference") as took:
            rows = infer_resilient(pb.ready, infer, self.settings.max_batch, failed, lambda: self.metrics.inference_retries.inc())
        fresh: dict[str, Score] = {}
        for (sha, _), row in zip(pb.ready, rows, strict=True):
            if row is None:
                continue
            fresh[sha] = row
            for it in pb.misses[sha]:  # the same image again in this batch: computed once, still not from Redis
                it.score, it.inference_ms = row, took.seconds * 1000
        return fresh

    def _shadow(self, pb: PreparedBatch, scored: list[tuple[str, Prepared]]) -> None:
        """Score freshly inferred images with the shadow bundle; never changes a label, never fails a batch."""
        shadow = pb.models.shadow
        assert shadow is not None
        same = pb.models.shadow_same_input
        with self.metrics.timed("shadow"):
            results = shadow_scores(shadow, [p.shadow_input(same) for _, p in scored], self.settings.max_batch)
        for (sha, _), result in zip(scored, results, strict=True):
            if result is None:
                continue
            for it in pb.misses.get(sha, []):
                it.shadow = result
                log.info(
                    "shadow_score",
                    upload_id=it.upload.upload_id if it.upload else None,
                    partition=it.record.partition,
                    offset=it.record.offset,
                    primary=it.score.probability if it.score else None,
                    shadow=round(result.score, 5),
                )

    def _outcome(self, models: Models, it: Item) -> Outcome:
        limits = self.settings.outcome_limits
        if it.error is not None or it.score is None or it.upload is None or it.sha is None:
            error = it.error or InputError(ErrorCode.undecodable, "no image data")
            return outcomes.dead_letter_outcome(it.record, error, it.upload, limits)
        timings = outcomes.timings(it.record, it.picked_at, it.decode_ms, it.inference_ms)
        verdict = (it.record, it.upload, it.sha, it.score, models.primary, it.cache, timings, it.shadow, limits)
        outcome = outcomes.verdict_outcome(*verdict, provenance=it.provenance, policy=self.settings.provenance.policy)
        if outcome.verdict is not None:
            self.metrics.count_provenance(outcome.verdict.provenance.signals, outcome.verdict.decided_by.value)
        return outcome
