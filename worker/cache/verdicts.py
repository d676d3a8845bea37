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

Scope (``--cache-scope``): ``global`` (the default) keys by content and
bundle only, so the same bytes uploaded by two tenants are scored once; the
price is that tenant B learns that *someone* uploaded those bytes before
(``cache: hit``, ``inference_ms: 0``, and the first upload's verdict time).
``tenant`` puts the tenant into every key (:meth:`VerdictCache.key`), so
tenants never share an entry or a near-duplicate index: nothing leaks, at the
cost of scoring a popular image once per tenant and storing it once per
tenant. A record without a tenant is its own scope (``-``).

Optional near-duplicate index (``--near-duplicate-max-distance``): for each
scored image its 64-bit pHash goes into one Redis *sorted set* per hash band
(see :mod:`worker.cache.phash`), scored by the time its verdict expires; a
later exact-hash miss whose pHash is within the distance of a stored one
reuses that image's score (``cache: near_duplicate``). Members expire with
their verdicts: reads take only members whose expiry is in the future, writes
trim the expired ones and keep each band to its newest
``near_scan_limit`` members (a plain set whose TTL is refreshed on every write
would keep every member for as long as the band is written to: forever for a
popular band). A lookup reads at most ``near_scan_limit`` members in all, so
one crowded band cannot make lookups slow.

**Risk of the near-duplicate index.** pHash is not collision resistant: anyone
who can upload can make an image whose pHash is within a few bits of a target
picture's (gradient methods do it in seconds) while looking nothing like it.
Such an image is served the *target's* verdict without being scored, and an
uploader can plant an image first so that later uploads near it inherit its
verdict. Leave it off (the default) where uploaders are adversarial; if it is
on, keep the distance small and prefer ``--cache-scope tenant``, so that a
tenant can only poison its own uploads.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.cache.circuit import CircuitBreaker, State
from worker.cache.phash import band_layout, bands, hamming
from worker.model.scores import Score

log = structlog.get_logger(__name__)

KEY_PREFIX = "aigis:v1"
#: Near-duplicate index keys; v2: sorted sets scored by expiry (v1 were plain sets).
PHASH_PREFIX = "aigis:v2:ph"
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
Scope = Literal["global", "tenant"]


@dataclass(frozen=True)
class ContentKey:
    """An image's content hash and the tenant that uploaded it (the tenant matters only in tenant scope)."""

    sha256: str
    tenant: str | None = None


def _parts(key: object) -> tuple[str, str | None]:
    """(content sha, tenant) of a cache key given as a plain sha ``str`` or a :class:`ContentKey`."""
    if isinstance(key, ContentKey):
        return key.sha256, key.tenant
    assert isinstance(key, str)
    return key, None


def tenant_namespace(tenant: str | None) -> str:
    """A bounded, key-safe name for a tenant: 32 hex digits of its sha256 (``-`` for no tenant)."""
    return "-" if tenant is None else hashlib.sha256(tenant.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def dumps(score: Score) -> bytes:
    """A cache entry: the score, compact JSON (the bundle and content hashes are in the key)."""
    entry = {"s": score.probability, "h": dict(score.heads), "a": dict(score.anomaly)}
    if score.attribution:  # only bundles with an attribution head; entries of others stay byte-identical
        entry["t"] = dict(score.attribution)
    return json.dumps(entry, separators=(",", ":")).encode()


def loads(raw: bytes | str) -> Score:
    d = json.loads(raw)
    return Score(
        float(d["s"]),
        {k: float(v) for k, v in d.get("h", {}).items()},
        {k: float(v) for k, v in d.get("a", {}).items()},
        {k: float(v) for k, v in d.get("t", {}).items()},
    )


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
        scope: Scope = "global",
        near_scan_limit: int = 256,
    ) -> None:
        if scope not in ("global", "tenant"):
            raise ValueError(f"cache scope must be global or tenant, not {scope!r}")
        self.url = url
        self.scope = scope
        self.near_scan_limit = max(1, near_scan_limit)
        #: Index members the last ``near_many`` read for one looked-up image (at most ``near_scan_limit``).
        self.last_near_scanned = 0
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

    def key(self, bundle_sha256: str, content_sha256: str, tenant: str | None = None) -> str:
        """The Redis key of a verdict; the tenant is part of it only in tenant scope (hashed, never written raw)."""
        if self.scope == "tenant":
            return f"{KEY_PREFIX}:{bundle_sha256}:t:{tenant_namespace(tenant)}:{content_sha256}"
        return f"{KEY_PREFIX}:{bundle_sha256}:{content_sha256}"

    def _key(self, bundle_sha256: str, key: object) -> str:
        return self.key(bundle_sha256, *_parts(key))

    def _namespace(self, key: object) -> str:
        return tenant_namespace(_parts(key)[1]) if self.scope == "tenant" else "g"

    def _tenant_of(self, key: object) -> str | None:
        return _parts(key)[1] if self.scope == "tenant" else None

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

    def get_many(self, bundle_sha256: str, shas: Iterable[K]) -> dict[K, Score] | None:
        """Hits by content sha (a ``str``) or :class:`ContentKey`, keyed as asked; ``None`` when Redis is unavailable."""
        keys = list(dict.fromkeys(shas))
        if not keys:
            return {}
        values = self._call("get", lambda: self.client.mget([self._key(bundle_sha256, k) for k in keys]))
        if values is None:
            return None
        hits: dict[K, Score] = {}
        for key, raw in zip(keys, values, strict=True):
            if raw is None:
                continue
            try:
                hits[key] = loads(raw)
            except (ValueError, KeyError, TypeError):
                log.warning("cache_entry_corrupt", content_sha256=_parts(key)[0])
        return hits

    def set_many(self, bundle_sha256: str, entries: Mapping[K, Score], phashes: Mapping[K, int] | None = None, max_distance: int = 0) -> None:
        """SET EX every score (and index the pHashes, expiring with them) in one pipelined round trip."""
        if not entries:
            return
        expires = time.time() + self.ttl_s  # when SET EX below makes the verdicts expire

        def write() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for key, value in entries.items():
                pipe.set(self._key(bundle_sha256, key), dumps(value), ex=self.ttl_s)
            if phashes:
                layout = band_layout(max_distance)
                now = time.time()
                for key, h in phashes.items():
                    if key not in entries:
                        continue
                    member = f"{h:016x}:{_parts(key)[0]}"
                    for band in self._band_keys(bundle_sha256, key, h, layout):
                        pipe.zadd(band, {member: expires})
                        pipe.zremrangebyscore(band, "-inf", now)  # members whose verdicts have expired
                        pipe.zremrangebyrank(band, 0, -self.near_scan_limit - 1)  # keep the newest near_scan_limit
                        pipe.expire(band, self.ttl_s)  # the newest member expires then: so may the band
            return pipe.execute()

        self._call("set", write)

    def _band_keys(self, bundle_sha256: str, key: object, h: int, layout: list[tuple[int, int]]) -> list[str]:
        ns = self._namespace(key)
        return [f"{PHASH_PREFIX}:{bundle_sha256}:{ns}:{len(layout)}:{i}:{v:x}" for i, v in enumerate(bands(h, layout))]

    def near_many(self, bundle_sha256: str, phashes: Mapping[K, int], max_distance: int) -> dict[K, NearMatch] | None:
        """For each key, the closest stored image within ``max_distance`` bits, in its scope (two round trips).

        Reads at most ``near_scan_limit`` unexpired members per looked-up image in
        all (the newest of each band first), whatever the bands hold.
        """
        if not phashes:
            return {}
        layout = band_layout(max_distance)
        per_band = max(1, self.near_scan_limit // len(layout))
        items = list(phashes.items())
        now = time.time()

        def candidates() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for key, h in items:
                for band in self._band_keys(bundle_sha256, key, h, layout):
                    pipe.zrevrangebyscore(band, "+inf", now, start=0, num=per_band)
            return pipe.execute()

        answers = self._call("near", candidates)
        if answers is None:
            return None
        best: dict[K, tuple[int, str]] = {}
        per = len(layout)
        self.last_near_scanned = max((sum(len(m) for m in answers[n * per : (n + 1) * per]) for n in range(len(items))), default=0)
        for n, (key, h) in enumerate(items):
            sha = _parts(key)[0]
            for members in answers[n * per : (n + 1) * per]:
                for raw in members:
                    hex_hash, _, other = raw.decode().partition(":")
                    if other == sha:
                        continue
                    d = hamming(h, int(hex_hash, 16))
                    if d <= max_distance and (key not in best or d < best[key][0]):
                        best[key] = (d, other)
        if not best:
            return {}
        wanted = list({(o, self._tenant_of(k)) for k, (_, o) in best.items()})
        values = self._call("get", lambda: self.client.mget([self.key(bundle_sha256, o, t) for o, t in wanted]))
        if values is None:
            return None
        scores = {w: loads(v) for w, v in zip(wanted, values, strict=True) if v is not None}
        return {k: NearMatch(scores[(o, self._tenant_of(k))], o, d) for k, (d, o) in best.items() if (o, self._tenant_of(k)) in scores}

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
