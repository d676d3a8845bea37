"""One batch of input records to one outcome (verdict or dead letter) each.

This is the worker's logic without Kafka: parse -> fetch -> sha256 -> cache
lookup -> decode/preprocess (thread pool) -> [near-duplicate lookup] ->
inference in batches -> [shadow bundle] -> policy -> cache write. The Kafka
runtime (:mod:`worker.app`) and the offline scorer (``python -m worker score``)
both drive it, so they cannot drift apart.

The work is split in two halves so the runtime can overlap them:
:meth:`BatchProcessor.prepare_batch` (I/O and decoding, mostly in the decode
pool) and :meth:`BatchProcessor.finish_batch` (inference and events). While
batch N is in inference, batch N+1 is being decoded. ``process`` runs both.

Guarantee: exactly one :class:`Outcome` per input record, in input order. Bad
input becomes a dead letter; an inference failure is retried with smaller
batches down to the single image, and only that image is dead-lettered.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import structlog

from schemas import CacheStatus, DeadLetter, ErrorCode, ShadowScore, Timings, VerdictEvent, b64encode
from worker.cache.phash import phash
from worker.cache.verdicts import CachedScore, VerdictCache
from worker.config import WorkerConfig
from worker.errors import InputError
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.decode_pool import DecodePool
from worker.ingest.fetch import FetchPolicy, fetch
from worker.ingest.preprocess import clip_input, native_crop
from worker.ingest.wire import InputRecord, Upload, best_effort_ids, parse_record
from worker.model.bundle import LoadedBundle, ScoreBatch
from worker.model.policy import decide, thresholds
from worker.ops.metrics import WorkerMetrics

log = structlog.get_logger(__name__)

Row = tuple[float, dict[str, float], dict[str, float]]


@dataclass
class Outcome:
    """What one input record produced; exactly one of verdict / dead_letter is set."""

    record: InputRecord
    verdict: VerdictEvent | None = None
    dead_letter: DeadLetter | None = None

    @property
    def upload_id(self) -> str | None:
        return self.verdict.upload_id if self.verdict else (self.dead_letter.upload_id if self.dead_letter else None)

    @property
    def key(self) -> bytes | None:
        uid = self.upload_id
        return uid.encode() if uid else self.record.key

    def value(self) -> bytes:
        event = self.verdict if self.verdict is not None else self.dead_letter
        assert event is not None
        return event.model_dump_json().encode()


@dataclass
class Prepared:
    """A decoded, preprocessed image ready for the backbone (and the shadow bundle's, if it differs)."""

    pixels: np.ndarray
    native: np.ndarray | None
    decode_ms: float
    phash: int | None = None
    shadow_pixels: np.ndarray | None = None
    shadow_native: np.ndarray | None = None


@dataclass
class _Item:
    index: int
    record: InputRecord
    t_pick: float
    upload: Upload | None = None
    data: bytes | None = None
    sha: str | None = None
    decode_ms: float = 0.0
    error: InputError | None = None
    result: Row | None = None
    cache: CacheStatus = CacheStatus.miss
    inference_ms: float = 0.0
    shadow: ShadowScore | None = None


@dataclass
class PreparedBatch:
    """The first half's output: items with hits resolved and images decoded, awaiting inference."""

    processor: BatchProcessor
    items: list[_Item]
    misses: dict[str, list[_Item]] = field(default_factory=dict)
    ready: list[tuple[str, Prepared]] = field(default_factory=list)

    @property
    def records(self) -> list[InputRecord]:
        return [it.record for it in self.items]


class BatchProcessor:
    """Turns batches of records into outcomes with one bundle (plus an optional shadow), one cache and a decode pool.

    A processor is immutable once built: a bundle hot swap builds a new one, and
    a batch is finished by the processor that prepared it, so a swap can never
    mix two bundles inside one batch.
    """

    def __init__(
        self,
        cfg: WorkerConfig,
        bundle: LoadedBundle,
        cache: VerdictCache | None,
        pool: Executor,
        *,
        shadow: LoadedBundle | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.bundle = bundle
        self.shadow = shadow
        self.cache = cache.for_bundle(bundle.sha256) if cache is not None else None
        self.pool = pool
        self.metrics = metrics
        self.limits = DecodeLimits(cfg.max_image_bytes, cfg.max_image_pixels, cfg.min_image_side)
        self.fetch_policy = FetchPolicy(cfg.allowed_hosts, cfg.fetch_file_root, cfg.fetch_timeout_s, cfg.max_image_bytes)
        bundles = [bundle] + ([shadow] if shadow is not None else [])
        # Draft (DCT-domain) JPEG downscaling only when no bundle needs native pixels and all allow it.
        draftable = all(b.preprocess.allow_draft and b.native_crop_size is None for b in bundles)
        self.draft_side = max(b.preprocess.image_size for b in bundles) if draftable else None
        self.native_size = max((b.native_crop_size or 0) for b in bundles) or None
        self.shadow_same_input = shadow is not None and shadow.preprocess == bundle.preprocess
        self.near_distance = cfg.near_duplicate_max_distance if cfg.near_duplicate_max_distance >= 0 else None
        self._timed_pool = isinstance(pool, DecodePool) and cfg.decode_timeout_s > 0

    def _observe(self, stage: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.stage_seconds.observe(seconds, stage)

    # -- stages ---------------------------------------------------------------
    def prepare(self, data: bytes) -> Prepared:
        """Decode and preprocess one image (runs in the pool)."""
        t0 = time.perf_counter()
        try:
            decoded = decode_image(data, self.limits, self.draft_side)
            img = decoded.image
            pixels = clip_input(img, self.bundle.preprocess)
            native = native_crop(img, self.bundle.native_crop_size) if self.bundle.native_crop_size else None
            prep = Prepared(pixels, native, 0.0)
            if self.shadow is not None and not self.shadow_same_input:
                prep.shadow_pixels = clip_input(img, self.shadow.preprocess)
                prep.shadow_native = native_crop(img, self.shadow.native_crop_size) if self.shadow.native_crop_size else None
            if self.near_distance is not None:
                prep.phash = phash(img)
        except InputError:
            raise
        except Exception as exc:  # a decoder or resampler blowing up on odd data is still bad input
            raise InputError(ErrorCode.undecodable, f"image processing failed: {type(exc).__name__}: {exc}") from None
        prep.decode_ms = (time.perf_counter() - t0) * 1000
        return prep

    def _submit_prepare(self, data: bytes):  # type: ignore[no-untyped-def]
        if self._timed_pool:
            limit = self.cfg.decode_timeout_s
            return self.pool.submit_limited(  # type: ignore[attr-defined]
                limit, lambda: InputError(ErrorCode.decode_timeout, f"decoding took longer than {limit:g}s"), self.prepare, data
            )
        return self.pool.submit(self.prepare, data)

    def _fetch(self, uri: str) -> bytes:
        return fetch(uri, self.fetch_policy)

    def _infer(self, prepared: Sequence[Prepared]) -> ScoreBatch:
        pixels = np.stack([p.pixels for p in prepared])
        native = np.stack([p.native for p in prepared]) if prepared[0].native is not None else None
        return self.bundle.score(pixels, native)

    def infer_resilient(
        self,
        prepared: Sequence[Prepared],
        on_error: Callable[[int, Exception], None],
        infer: Callable[[Sequence[Prepared]], ScoreBatch] | None = None,
    ) -> list[Row | None]:
        """Score in chunks of max_batch; on a runtime error, halve the chunk until the culprit is alone."""
        infer = infer or self._infer
        results: list[Row | None] = [None] * len(prepared)

        def run(lo: int, hi: int) -> None:
            try:
                batch = infer(prepared[lo:hi])
                for i in range(lo, hi):
                    results[i] = batch.row(i - lo)
            except Exception as exc:  # ORT raises plain RuntimeError/Fail types
                if hi - lo == 1:
                    on_error(lo, exc)
                    return
                if self.metrics is not None:
                    self.metrics.inference_retries.inc()
                log.warning("inference_batch_failed_retrying_smaller", size=hi - lo, error=str(exc)[:300])
                mid = (lo + hi) // 2
                run(lo, mid)
                run(mid, hi)

        step = self.cfg.max_batch
        for lo in range(0, len(prepared), step):
            run(lo, min(lo + step, len(prepared)))
        return results

    # -- the batch, first half: parse, fetch, hash, cache, decode --------------------
    def prepare_batch(self, records: Sequence[InputRecord]) -> PreparedBatch:
        t_start = time.perf_counter()
        t_pick = time.time()
        items = [_Item(i, r, t_pick) for i, r in enumerate(records)]
        pb = PreparedBatch(self, items)

        for it in items:
            try:
                it.upload = parse_record(it.record, self.cfg.max_image_bytes)
                it.data = it.upload.data
            except InputError as exc:
                it.error = exc

        to_fetch = [it for it in items if it.error is None and it.data is None and it.upload and it.upload.uri]
        for it, fut in [(it, self.pool.submit(self._fetch, it.upload.uri)) for it in to_fetch]:  # type: ignore[union-attr]
            try:
                it.data = fut.result()
            except InputError as exc:
                it.error = exc

        live = [it for it in items if it.error is None and it.data is not None]
        for it in live:
            it.sha = hashlib.sha256(it.data).hexdigest()  # type: ignore[arg-type]

        t0 = time.perf_counter()
        hits = self.cache.get_many(it.sha for it in live) if self.cache else {}  # type: ignore[misc]
        if self.cache:
            self._observe("cache_read", time.perf_counter() - t0)
        for it in live:
            assert it.sha is not None
            if hits and it.sha in hits:
                h = hits[it.sha]
                it.result, it.cache = (h.score, h.head_scores, h.anomaly), CacheStatus.hit
            else:
                pb.misses.setdefault(it.sha, []).append(it)
        if self.metrics is not None and self.cache is not None and live:
            n_hit = sum(it.cache is CacheStatus.hit for it in live)
            self.metrics.cache_lookups.inc(n_hit, "hit")
            if hits is None:
                self.metrics.cache_lookups.inc(len(live) - n_hit, "unavailable")

        # Decode each distinct image once; duplicates inside the batch share the work.
        t0 = time.perf_counter()
        futures = {sha: self._submit_prepare(group[0].data) for sha, group in pb.misses.items()}  # type: ignore[arg-type]
        for sha, fut in futures.items():
            try:
                prep = fut.result()
                pb.ready.append((sha, prep))
                for it in pb.misses[sha]:
                    it.decode_ms = prep.decode_ms
            except InputError as exc:
                for it in pb.misses[sha]:
                    it.error = exc
        if futures:
            self._observe("decode", time.perf_counter() - t0)

        if self.near_distance is not None and self.cache is not None and pb.ready:
            self._near_duplicates(pb)
        if self.metrics is not None and self.cache is not None and hits is not None:
            self.metrics.cache_lookups.inc(sum(len(g) for g in pb.misses.values()), "miss")
        self._observe("prepare", time.perf_counter() - t_start)
        return pb

    def _near_duplicates(self, pb: PreparedBatch) -> None:
        """Serve exact misses whose pHash is close to a cached image's from that image's score."""
        assert self.cache is not None and self.near_distance is not None
        t0 = time.perf_counter()
        found = self.cache.near_many({sha: p.phash for sha, p in pb.ready if p.phash is not None}, self.near_distance) or {}
        self._observe("near_duplicate", time.perf_counter() - t0)
        if not found:
            return
        keep = []
        for sha, prep in pb.ready:
            match = found.get(sha)
            if match is None:
                keep.append((sha, prep))
                continue
            s = match.score
            for it in pb.misses.pop(sha):
                it.result, it.cache = (s.score, s.head_scores, s.anomaly), CacheStatus.near_duplicate
            log.debug("near_duplicate", content_sha256=sha, matched=match.content_sha256, distance=match.distance)
            if self.metrics is not None:
                self.metrics.cache_lookups.inc(1, "near_duplicate")
        pb.ready = keep

    # -- the batch, second half: inference, shadow, cache write, events -------------------
    def finish_batch(self, pb: PreparedBatch) -> list[Outcome]:
        ready, misses = pb.ready, pb.misses
        if ready:
            t0 = time.perf_counter()

            def failed(i: int, exc: Exception) -> None:
                for it in misses[ready[i][0]]:
                    it.error = InputError(ErrorCode.inference_failed, f"model failed on this image: {type(exc).__name__}: {str(exc)[:300]}")

            rows = self.infer_resilient([p for _, p in ready], failed)
            infer_ms = (time.perf_counter() - t0) * 1000
            self._observe("inference", infer_ms / 1000)
            fresh: dict[str, CachedScore] = {}
            for (sha, _), row in zip(ready, rows, strict=True):
                if row is None:
                    continue
                fresh[sha] = CachedScore(*row)
                for it in misses[sha]:
                    # the same image again in this batch: computed once, still not from Redis
                    it.result, it.inference_ms = row, infer_ms
            if self.shadow is not None:
                self._shadow(pb, [(sha, p) for (sha, p), row in zip(ready, rows, strict=True) if row is not None])
            if self.cache:
                t0 = time.perf_counter()
                phashes = {sha: p.phash for sha, p in ready if p.phash is not None and sha in fresh}
                self.cache.set_many(fresh, phashes, self.near_distance or 0)
                self._observe("cache_write", time.perf_counter() - t0)
        return [self._outcome(it) for it in pb.items]

    def process(self, records: Sequence[InputRecord]) -> list[Outcome]:
        return self.finish_batch(self.prepare_batch(records))

    def _shadow(self, pb: PreparedBatch, scored: list[tuple[str, Prepared]]) -> None:
        """Score freshly inferred images with the shadow bundle; never changes a label, never fails a batch."""
        shadow = self.shadow
        assert shadow is not None
        if not scored:
            return
        t0 = time.perf_counter()

        def infer(prepared: Sequence[Prepared]) -> ScoreBatch:
            if self.shadow_same_input:
                pixels = np.stack([p.pixels for p in prepared])
                native = np.stack([p.native for p in prepared]) if shadow.native_crop_size else None
            else:
                pixels = np.stack([p.shadow_pixels for p in prepared])  # type: ignore[misc]
                native = np.stack([p.shadow_native for p in prepared]) if shadow.native_crop_size else None  # type: ignore[misc]
            return shadow.score(pixels, native)

        def failed(i: int, exc: Exception) -> None:
            log.warning("shadow_inference_failed", content_sha256=scored[i][0], error=str(exc)[:300])

        try:
            rows = self.infer_resilient([p for _, p in scored], failed, infer)
        except Exception as exc:  # the shadow must never cost a verdict
            log.warning("shadow_failed", error=str(exc)[:300])
            return
        cal = shadow.manifest.calibration
        for (sha, _), row in zip(scored, rows, strict=True):
            if row is None:
                continue
            score, heads, _ = row
            shadow_score = ShadowScore(bundle=shadow.ref, score=min(1.0, max(0.0, score)), label=decide(score, cal), head_scores=heads)
            for it in pb.misses.get(sha, []):
                it.shadow = shadow_score
                primary = it.result[0] if it.result else None
                log.info(
                    "shadow_score",
                    upload_id=it.upload.upload_id if it.upload else None,
                    partition=it.record.partition,
                    offset=it.record.offset,
                    primary=primary,
                    shadow=round(score, 5),
                )
        self._observe("shadow", time.perf_counter() - t0)

    # -- events -------------------------------------------------------------------
    def _outcome(self, it: _Item) -> Outcome:
        rec = it.record
        if it.error is not None or it.result is None:
            err = it.error or InputError(ErrorCode.undecodable, "no image data")
            upload_id, tenant = (it.upload.upload_id, it.upload.tenant) if it.upload else best_effort_ids(rec)
            value = rec.value or b""
            # The copy must fit the producer's request size, which is sized from max_image_bytes: a
            # larger dead letter could never be produced, and delivery would retry it forever.
            copy_limit = min(self.cfg.dead_letter_payload_max_bytes, self.cfg.max_image_bytes)
            dl = DeadLetter(
                upload_id=upload_id,
                tenant=tenant,
                error_code=err.code,
                message=err.message[:2000],
                source=rec.source,
                payload_size=len(value),
                payload_sha256=hashlib.sha256(value).hexdigest(),
                payload_base64=b64encode(value) if len(value) <= copy_limit else None,
            )
            log.info(
                "dead_letter",
                upload_id=upload_id,
                error_code=err.code.value,
                detail=err.message[:200],
                partition=rec.partition,
                offset=rec.offset,
            )
            return Outcome(rec, dead_letter=dl)
        assert it.upload is not None and it.sha is not None
        score, heads, anomaly = it.result
        cal = self.bundle.manifest.calibration
        now = time.time()
        queue_ms = max(0.0, it.t_pick * 1000 - rec.timestamp_ms) if rec.timestamp_ms else 0.0
        verdict = VerdictEvent(
            upload_id=it.upload.upload_id,
            tenant=it.upload.tenant,
            content_sha256=it.sha,
            label=decide(score, cal),
            score=score,
            thresholds=thresholds(cal),
            head_scores=heads,
            anomaly=anomaly,
            bundle=self.bundle.ref,
            cache=it.cache,
            timings=Timings(queue_ms=queue_ms, decode_ms=it.decode_ms, inference_ms=it.inference_ms, total_ms=(now - it.t_pick) * 1000),
            shadow=it.shadow,
        )
        return Outcome(rec, verdict=verdict)
