"""One batch of input records to one outcome (verdict or dead letter) each.

This is the worker's logic without Kafka: parse -> fetch -> sha256 -> cache
lookup -> decode/preprocess (thread pool) -> inference in batches -> policy ->
cache write. The Kafka loop (:mod:`worker.app`) and the offline scorer
(``python -m worker score``) both drive it, so they cannot drift apart.

Guarantee: ``process`` returns exactly one :class:`Outcome` per input record, in
input order. Bad input becomes a dead letter; an inference failure is retried
with smaller batches down to the single image, and only that image is
dead-lettered.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import structlog

from schemas import CacheStatus, DeadLetter, ErrorCode, Timings, VerdictEvent, b64encode
from worker.bundle import LoadedBundle, ScoreBatch
from worker.cache import CachedScore, VerdictCache
from worker.config import WorkerConfig
from worker.decode import DecodeLimits, decode_image
from worker.errors import InputError
from worker.fetch import FetchPolicy, fetch
from worker.policy import decide, thresholds
from worker.preprocess import clip_input, native_crop
from worker.wire import InputRecord, Upload, best_effort_ids, parse_record

log = structlog.get_logger(__name__)


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
    """A decoded, preprocessed image ready for the backbone."""

    pixels: np.ndarray
    native: np.ndarray | None
    decode_ms: float


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
    result: tuple[float, dict[str, float], dict[str, float]] | None = None
    cache: CacheStatus = CacheStatus.miss
    inference_ms: float = 0.0


class BatchProcessor:
    """Turns batches of records into outcomes with one bundle, one cache and a decode pool."""

    def __init__(self, cfg: WorkerConfig, bundle: LoadedBundle, cache: VerdictCache | None, pool: Executor) -> None:
        self.cfg = cfg
        self.bundle = bundle
        self.cache = cache
        self.pool = pool
        self.limits = DecodeLimits(cfg.max_image_bytes, cfg.max_image_pixels, cfg.min_image_side)
        self.fetch_policy = FetchPolicy(cfg.allowed_hosts, cfg.fetch_file_root, cfg.fetch_timeout_s, cfg.max_image_bytes)
        pre = bundle.preprocess
        self.draft_side = pre.image_size if (pre.allow_draft and bundle.native_crop_size is None) else None

    # -- stages ---------------------------------------------------------------
    def prepare(self, data: bytes) -> Prepared:
        """Decode and preprocess one image (runs in the pool)."""
        t0 = time.perf_counter()
        try:
            decoded = decode_image(data, self.limits, self.draft_side)
            pixels = clip_input(decoded.image, self.bundle.preprocess)
            native = native_crop(decoded.image, self.bundle.native_crop_size) if self.bundle.native_crop_size else None
        except InputError:
            raise
        except Exception as exc:  # a decoder or resampler blowing up on odd data is still bad input
            raise InputError(ErrorCode.undecodable, f"image processing failed: {type(exc).__name__}: {exc}") from None
        return Prepared(pixels, native, (time.perf_counter() - t0) * 1000)

    def _fetch(self, uri: str) -> bytes:
        return fetch(uri, self.fetch_policy)

    def _infer(self, prepared: Sequence[Prepared]) -> ScoreBatch:
        pixels = np.stack([p.pixels for p in prepared])
        native = np.stack([p.native for p in prepared]) if prepared[0].native is not None else None
        return self.bundle.score(pixels, native)

    def infer_resilient(self, prepared: Sequence[Prepared], on_error: Callable[[int, Exception], None]) -> list[tuple | None]:
        """Score in chunks of max_batch; on a runtime error, halve the chunk until the culprit is alone."""
        results: list[tuple | None] = [None] * len(prepared)

        def run(lo: int, hi: int) -> None:
            try:
                batch = self._infer(prepared[lo:hi])
                for i in range(lo, hi):
                    results[i] = batch.row(i - lo)
            except Exception as exc:  # ORT raises plain RuntimeError/Fail types
                if hi - lo == 1:
                    on_error(lo, exc)
                    return
                log.warning("inference_batch_failed_retrying_smaller", size=hi - lo, error=str(exc)[:300])
                mid = (lo + hi) // 2
                run(lo, mid)
                run(mid, hi)

        step = self.cfg.max_batch
        for lo in range(0, len(prepared), step):
            run(lo, min(lo + step, len(prepared)))
        return results

    # -- the batch --------------------------------------------------------------
    def process(self, records: Sequence[InputRecord]) -> list[Outcome]:
        t_pick = time.time()
        items = [_Item(i, r, t_pick) for i, r in enumerate(records)]

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

        hits = self.cache.get_many(it.sha for it in live) if self.cache else {}  # type: ignore[misc]
        misses: dict[str, list[_Item]] = {}
        for it in live:
            assert it.sha is not None
            if it.sha in hits:
                h = hits[it.sha]
                it.result, it.cache = (h.score, h.head_scores, h.anomaly), CacheStatus.hit
            else:
                misses.setdefault(it.sha, []).append(it)

        # Decode each distinct image once; duplicates inside the batch share the work.
        futures = {sha: self.pool.submit(self.prepare, group[0].data) for sha, group in misses.items()}  # type: ignore[arg-type]
        ready: list[tuple[str, Prepared]] = []
        for sha, fut in futures.items():
            try:
                prep = fut.result()
                ready.append((sha, prep))
                for it in misses[sha]:
                    it.decode_ms = prep.decode_ms
            except InputError as exc:
                for it in misses[sha]:
                    it.error = exc

        if ready:
            t0 = time.perf_counter()

            def failed(i: int, exc: Exception) -> None:
                for it in misses[ready[i][0]]:
                    it.error = InputError(ErrorCode.inference_failed, f"model failed on this image: {type(exc).__name__}: {str(exc)[:300]}")

            rows = self.infer_resilient([p for _, p in ready], failed)
            infer_ms = (time.perf_counter() - t0) * 1000
            fresh: dict[str, CachedScore] = {}
            for (sha, _), row in zip(ready, rows, strict=True):
                if row is None:
                    continue
                fresh[sha] = CachedScore(*row)
                for it in misses[sha]:
                    it.result, it.inference_ms = row, infer_ms
                    # the same image again in this batch: computed once, still not from Redis
            if self.cache:
                self.cache.set_many(fresh)

        return [self._outcome(it) for it in items]

    # -- events -------------------------------------------------------------------
    def _outcome(self, it: _Item) -> Outcome:
        rec = it.record
        if it.error is not None or it.result is None:
            err = it.error or InputError(ErrorCode.undecodable, "no image data")
            upload_id, tenant = (it.upload.upload_id, it.upload.tenant) if it.upload else best_effort_ids(rec)
            value = rec.value or b""
            dl = DeadLetter(
                upload_id=upload_id,
                tenant=tenant,
                error_code=err.code,
                message=err.message[:2000],
                source=rec.source,
                payload_size=len(value),
                payload_sha256=hashlib.sha256(value).hexdigest(),
                payload_base64=b64encode(value) if len(value) <= self.cfg.dead_letter_payload_max_bytes else None,
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
        )
        return Outcome(rec, verdict=verdict)
