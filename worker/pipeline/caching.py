"""The verdict cache's part in one batch: keys, lookup, near-duplicates, write-back.

A leaf of :mod:`worker.pipeline.batch`, like :mod:`~worker.pipeline.images`:
``prepare`` calls :meth:`BatchCache.lookup` (before decoding, so a hit costs no
decode) and :meth:`BatchCache.near_duplicates` (after, since it needs the
pHash); ``finish`` calls :meth:`BatchCache.write` with the fresh scores. Without
a cache every image is a miss and nothing is written; with Redis down the
cache answers nothing and the lookups count as ``unavailable``.

Every key is under the primary bundle's sha256 and the provenance policy's
fingerprint, so neither a new bundle nor another policy is served an old
verdict.
"""

from __future__ import annotations

import structlog

from schemas import CacheStatus
from worker.cache.verdicts import CachedVerdict, ContentKey, VerdictCache
from worker.model.scores import Score
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.items import Item, PipelineSettings, PreparedBatch

log = structlog.get_logger(__name__)

#: How the cache knows an image: its content hash, or (tenant scope) hash and tenant.
CacheKey = str | ContentKey


class BatchCache:
    """The pipeline's view of the verdict cache (or of none): what one batch reads from it and writes to it."""

    def __init__(self, cache: VerdictCache | None, settings: PipelineSettings, metrics: WorkerMetrics) -> None:
        self.cache = cache
        self.settings = settings
        self.metrics = metrics

    @property
    def near_duplicates_on(self) -> bool:
        """Whether misses are looked up again by pHash (``--near-duplicate-max-distance``, and a cache to look in)."""
        return self.settings.near_distance is not None and self.cache is not None

    def key(self, it: Item) -> CacheKey:
        """An item's cache key: its content hash, and in tenant scope its tenant too."""
        assert it.sha is not None
        if self.cache is not None and self.cache.scope == "tenant":
            return ContentKey(it.sha, it.upload.tenant if it.upload else None)
        return it.sha

    @property
    def policy(self) -> str:
        """The provenance policy's fingerprint: part of every cache key (see :class:`~worker.pipeline.items.ProvenanceSettings`)."""
        return self.settings.provenance.fingerprint

    def lookup(self, pb: PreparedBatch, live: list[Item]) -> None:
        """Serve hits from the cache; every other image goes into ``pb.misses`` by content sha (one decode per sha).

        While the policy reads provenance, an entry without a provenance reading
        counts as a miss: the label could not be decided from it again.
        """
        hits: dict[CacheKey, CachedVerdict] | None = {}
        if self.cache is not None and live:
            with self.metrics.timed("cache_read"):
                hits = self.cache.get_many(pb.models.primary.sha256, {self.key(it) for it in live}, policy=self.policy)
        for it in live:
            assert it.sha is not None
            hit = hits.get(self.key(it)) if hits else None
            if hit is not None and (hit.provenance is not None or not self.settings.provenance.reads):
                it.score, it.provenance, it.cache = hit.score, hit.provenance, CacheStatus.hit
            else:
                pb.misses.setdefault(it.sha, []).append(it)
        if self.cache is not None and live:
            self.metrics.cache_lookups.inc(sum(it.cache is CacheStatus.hit for it in live), "hit")
            self.metrics.cache_lookups.inc(sum(len(g) for g in pb.misses.values()), "miss" if hits is not None else "unavailable")

    def near_duplicates(self, pb: PreparedBatch) -> None:
        """Serve exact misses whose pHash is close to a cached image's (in their scope) from that image's score."""
        assert self.cache is not None and self.settings.near_distance is not None
        with self.metrics.timed("near_duplicate"):
            wanted = {self.key(it): p.phash for sha, p in pb.ready if p.phash is not None for it in pb.misses[sha]}
            found = self.cache.near_many(pb.models.primary.sha256, wanted, self.settings.near_distance, policy=self.policy) or {}
        keep = []
        for sha, prep in pb.ready:
            rest = []
            for it in pb.misses[sha]:
                match = found.get(self.key(it))
                if match is None:
                    rest.append(it)
                    continue
                it.score, it.cache = match.score, CacheStatus.near_duplicate  # the other image's score, this image's own provenance
                log.debug("near_duplicate", content_sha256=sha, matched=match.content_sha256, distance=match.distance)
                self.metrics.cache_lookups.inc(1, "near_duplicate")
            if rest:
                pb.misses[sha] = rest
                keep.append((sha, prep))
            else:
                del pb.misses[sha]
        pb.ready = keep

    def write(self, pb: PreparedBatch, fresh: dict[str, Score]) -> None:
        """Store the fresh scores (with their provenance readings, and pHashes for the near-duplicate index) under every key that asked."""
        if self.cache is None or not fresh:
            return
        with self.metrics.timed("cache_write"):
            readings = {sha: p.provenance for sha, p in pb.ready}
            entries = {self.key(it): CachedVerdict(score, readings.get(sha)) for sha, score in fresh.items() for it in pb.misses[sha]}
            phashes = {self.key(it): p.phash for sha, p in pb.ready if p.phash is not None and sha in fresh for it in pb.misses[sha]}
            self.cache.set_many(pb.models.primary.sha256, entries, phashes, self.settings.near_distance or 0, policy=self.policy)
