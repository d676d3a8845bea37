"""Verdict cache in Redis, keyed by content sha256 and bundle sha256.

A score depends only on the image bytes and the model, so the key is exactly
those two hashes: a new bundle never serves an old bundle's scores, and the same
image uploaded twice (or replayed after a crash) is scored once. Reads and
writes are one round trip per batch (MGET, pipelined SET EX).

Redis is an optimisation, never a dependency: every call has a socket timeout
(retried once only for a broken pooled connection, never for a timeout), and a :class:`~worker.cache.circuit.CircuitBreaker`
stops calling a Redis that keeps failing; while it is open reads are misses and
writes are skipped, and a probe every ``reset_after_s`` brings the cache back
by itself. Inference goes on without it, so no verdict is lost or held.

Optional near-duplicate index (``--near-duplicate-max-distance``): for each
scored image its 64-bit pHash is added to one Redis set per hash band (see
:mod:`worker.cache.phash`); a later exact-hash miss whose pHash is within the
distance of a stored one reuses that image's score (``cache: near_duplicate``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.cache.circuit import CircuitBreaker, State
from worker.cache.phash import band_layout, bands, hamming
from worker.model.scores import Score

log = structlog.get_logger(__name__)

KEY_PREFIX = "aigis:v1"
T = TypeVar("T")


def dumps(score: Score) -> bytes:
    """A cache entry: the score, compact JSON (the bundle and content hashes are in the key)."""
    return json.dumps({"s": score.probability, "h": dict(score.heads), "a": dict(score.anomaly)}, separators=(",", ":")).encode()


def loads(raw: bytes | str) -> Score:
    d = json.loads(raw)
    return Score(float(d["s"]), {k: float(v) for k, v in d.get("h", {}).items()}, {k: float(v) for k, v in d.get("a", {}).items()})


@dataclass(frozen=True)
class NearMatch:
    """A stored image within the Hamming threshold of the one being looked up."""

    score: Score
    content_sha256: str
    distance: int


class VerdictCache:
    """get_many / set_many (and the near-duplicate index) over Redis; failures degrade to misses."""

    def __init__(
        self,
        url: str,
        ttl_s: int,
        timeout_s: float = 0.5,
        *,
        breaker: CircuitBreaker | None = None,
        on_error: Callable[[str], None] | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.client = client or redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            # One immediate retry on a broken connection (a pooled socket from before a Redis restart),
            # none on timeouts: a slow Redis costs one socket timeout per call, never several.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        self.breaker = breaker or CircuitBreaker(on_change=self._log_state)
        self._on_error = on_error
        self._owns_client = client is None

    @staticmethod
    def _log_state(state: State) -> None:
        log.warning("cache_circuit", state=state.name)

    @property
    def available(self) -> bool:
        return self.breaker.state is not State.open

    def __enter__(self) -> VerdictCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def key(bundle_sha256: str, content_sha256: str) -> str:
        return f"{KEY_PREFIX}:{bundle_sha256}:{content_sha256}"

    def _call(self, op: str, fn: Callable[[], T]) -> T | None:
        """Run one Redis round trip under the breaker; None when skipped or failed."""
        if not self.breaker.allow():
            return None
        try:
            result = fn()
        except redis.RedisError as exc:
            self.breaker.failure()
            if self._on_error:
                self._on_error(op)
            log.debug("cache_call_failed", op=op, error=str(exc)[:200])
            return None
        self.breaker.success()
        return result

    def get_many(self, bundle_sha256: str, shas: Iterable[str]) -> dict[str, Score] | None:
        """Hits by content sha; ``None`` when Redis is unavailable (every lookup is then a miss)."""
        shas = list(dict.fromkeys(shas))
        if not shas:
            return {}
        values = self._call("get", lambda: self.client.mget([self.key(bundle_sha256, s) for s in shas]))
        if values is None:
            return None
        hits: dict[str, Score] = {}
        for sha, raw in zip(shas, values, strict=True):
            if raw is None:
                continue
            try:
                hits[sha] = loads(raw)
            except (ValueError, KeyError, TypeError):
                log.warning("cache_entry_corrupt", content_sha256=sha)
        return hits

    def set_many(self, bundle_sha256: str, entries: Mapping[str, Score], phashes: Mapping[str, int] | None = None, max_distance: int = 0) -> None:
        """SET EX every score (and index the pHashes) in one pipelined round trip."""
        if not entries:
            return

        def write() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for sha, value in entries.items():
                pipe.set(self.key(bundle_sha256, sha), dumps(value), ex=self.ttl_s)
            if phashes:
                layout = band_layout(max_distance)
                for sha, h in phashes.items():
                    if sha not in entries:
                        continue
                    member = f"{h:016x}:{sha}"
                    for key in self._band_keys(bundle_sha256, h, layout):
                        pipe.sadd(key, member)
                        pipe.expire(key, self.ttl_s)
            return pipe.execute()

        self._call("set", write)

    def _band_keys(self, bundle_sha256: str, h: int, layout: list[tuple[int, int]]) -> list[str]:
        return [f"{KEY_PREFIX}:ph:{bundle_sha256}:{len(layout)}:{i}:{v:x}" for i, v in enumerate(bands(h, layout))]

    def near_many(self, bundle_sha256: str, phashes: Mapping[str, int], max_distance: int) -> dict[str, NearMatch] | None:
        """For each content sha, the closest stored image within ``max_distance`` bits (two round trips)."""
        if not phashes:
            return {}
        layout = band_layout(max_distance)
        items = list(phashes.items())

        def candidates() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for _, h in items:
                for key in self._band_keys(bundle_sha256, h, layout):
                    pipe.smembers(key)
            return pipe.execute()

        answers = self._call("near", candidates)
        if answers is None:
            return None
        best: dict[str, tuple[int, str]] = {}
        per = len(layout)
        for n, (sha, h) in enumerate(items):
            for members in answers[n * per : (n + 1) * per]:
                for raw in members:
                    hex_hash, _, other = raw.decode().partition(":")
                    if other == sha:
                        continue
                    d = hamming(h, int(hex_hash, 16))
                    if d <= max_distance and (sha not in best or d < best[sha][0]):
                        best[sha] = (d, other)
        if not best:
            return {}
        others = list({o for _, o in best.values()})
        values = self._call("get", lambda: self.client.mget([self.key(bundle_sha256, o) for o in others]))
        if values is None:
            return None
        scores = {o: loads(v) for o, v in zip(others, values, strict=True) if v is not None}
        return {sha: NearMatch(scores[o], o, d) for sha, (d, o) in best.items() if o in scores}

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
