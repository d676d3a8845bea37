"""Verdict cache in Redis, keyed by content sha256, bundle sha256 and provenance policy fingerprint.

A score depends only on the image bytes and the model, and the provenance
reading only on the bytes and the provenance rules (policy, trust anchors,
reader version, limits: :func:`~worker.model.policy.policy_fingerprint`), so
the key is exactly those three hashes: a new bundle never serves an old
bundle's scores, a new policy or trust list never serves provenance read under
the old one, and the same image uploaded twice (or replayed after a crash) is
scored and read once. An entry (:class:`CachedVerdict`) holds the score and the
provenance reading together; the label is decided from them again on every
hit, so it always follows the policy the key names. Reads and writes are one
round trip per batch (MGET, pipelined SET EX).

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
from worker.ingest.provenance import ProvenanceReading
from worker.model.scores import Score

log = structlog.get_logger(__name__)

#: Verdict keys; v2: the provenance policy fingerprint after the bundle hash, entries carry the provenance reading.
KEY_PREFIX = "aigis:v2"
#: Near-duplicate index keys; v2: sorted sets scored by expiry (v1 were plain sets); v3: per policy fingerprint.
PHASH_PREFIX = "aigis:v3:ph"
#: Hex digits of the policy fingerprint in a key (64 bits: collisions between an operator's few policies are not a concern).
POLICY_DIGITS = 16
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


def policy_segment(policy: str) -> str:
    """The policy fingerprint's part of a key (``-`` for none: callers that read no provenance)."""
    return policy[:POLICY_DIGITS] if policy else "-"


@dataclass(frozen=True)
class CachedVerdict:
    """What the cache keeps per image: the model's score and the provenance reading of the same bytes (None: not read)."""

    score: Score
    provenance: ProvenanceReading | None = None


def _score_fields(score: Score) -> dict[str, Any]:
    entry: dict[str, Any] = {"s": score.probability, "h": dict(score.heads), "a": dict(score.anomaly)}
    if score.attribution:  # only bundles with an attribution head; entries of others stay byte-identical
        entry["t"] = dict(score.attribution)
    return entry


def _score_of(d: Mapping[str, Any]) -> Score:
    return Score(
        float(d["s"]),
        {k: float(v) for k, v in d.get("h", {}).items()},
        {k: float(v) for k, v in d.get("a", {}).items()},
        {k: float(v) for k, v in d.get("t", {}).items()},
    )


def dumps(score: Score) -> bytes:
    """A score as compact JSON (the bundle and content hashes are in the key)."""
    return json.dumps(_score_fields(score), separators=(",", ":")).encode()


def loads(raw: bytes | str) -> Score:
    return _score_of(json.loads(raw))


def dumps_entry(entry: CachedVerdict | Score) -> bytes:
    """A cache entry: the score's fields, and ``p``, the provenance signals, when provenance was read."""
    if isinstance(entry, Score):
        entry = CachedVerdict(entry)
    d = _score_fields(entry.score)
    if entry.provenance is not None:
        d["p"] = entry.provenance.to_jsonable()
    return json.dumps(d, separators=(",", ":")).encode()


def loads_entry(raw: bytes | str) -> CachedVerdict:
    """An entry back; ``ValueError`` (a miss, logged) for one that does not parse, including a provenance record that fails its schema."""
    d = json.loads(raw)
    return CachedVerdict(_score_of(d), ProvenanceReading.from_jsonable(d["p"]) if "p" in d else None)


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

    def key(self, bundle_sha256: str, content_sha256: str, tenant: str | None = None, *, policy: str = "") -> str:
        """The Redis key of a verdict; the tenant is part of it only in tenant scope (hashed, never written raw).

        ``policy``: the provenance policy fingerprint the entry was made under (see the module docstring).
        """
        base = f"{KEY_PREFIX}:{bundle_sha256}:{policy_segment(policy)}"
        if self.scope == "tenant":
            return f"{base}:t:{tenant_namespace(tenant)}:{content_sha256}"
        return f"{base}:{content_sha256}"

    def _key(self, bundle_sha256: str, key: object, policy: str) -> str:
        return self.key(bundle_sha256, *_parts(key), policy=policy)

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

    def get_many(self, bundle_sha256: str, shas: Iterable[K], *, policy: str = "") -> dict[K, CachedVerdict] | None:
        """Hits by content sha (a ``str``) or :class:`ContentKey`, keyed as asked; ``None`` when Redis is unavailable."""
        keys = list(dict.fromkeys(shas))
        if not keys:
            return {}
        values = self._call("get", lambda: self.client.mget([self._key(bundle_sha256, k, policy) for k in keys]))
        if values is None:
            return None
        hits: dict[K, CachedVerdict] = {}
        for key, raw in zip(keys, values, strict=True):
            if raw is None:
                continue
            try:
                hits[key] = loads_entry(raw)
            except (ValueError, KeyError, TypeError):  # pydantic's ValidationError is a ValueError
                log.warning("cache_entry_corrupt", content_sha256=_parts(key)[0])
        return hits

    def set_many(
        self,
        bundle_sha256: str,
        entries: Mapping[K, CachedVerdict | Score],
        phashes: Mapping[K, int] | None = None,
        max_distance: int = 0,
        *,
        policy: str = "",
    ) -> None:
        """SET EX every entry (and index the pHashes, expiring with them) in one pipelined round trip."""
        if not entries:
            return
        expires = time.time() + self.ttl_s  # when SET EX below makes the verdicts expire

        def write() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for key, value in entries.items():
                pipe.set(self._key(bundle_sha256, key, policy), dumps_entry(value), ex=self.ttl_s)
            if phashes:
                layout = band_layout(max_distance)
                now = time.time()
                for key, h in phashes.items():
                    if key not in entries:
                        continue
                    member = f"{h:016x}:{_parts(key)[0]}"
                    for band in self._band_keys(bundle_sha256, key, h, layout, policy):
                        pipe.zadd(band, {member: expires})
                        pipe.zremrangebyscore(band, "-inf", now)  # members whose verdicts have expired
                        pipe.zremrangebyrank(band, 0, -self.near_scan_limit - 1)  # keep the newest near_scan_limit
                        pipe.expire(band, self.ttl_s)  # the newest member expires then: so may the band
            return pipe.execute()

        self._call("set", write)

    def _band_keys(self, bundle_sha256: str, key: object, h: int, layout: list[tuple[int, int]], policy: str) -> list[str]:
        ns = self._namespace(key)
        pol = policy_segment(policy)
        return [f"{PHASH_PREFIX}:{bundle_sha256}:{pol}:{ns}:{len(layout)}:{i}:{v:x}" for i, v in enumerate(bands(h, layout))]

    def near_many(self, bundle_sha256: str, phashes: Mapping[K, int], max_distance: int, *, policy: str = "") -> dict[K, NearMatch] | None:
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
                for band in self._band_keys(bundle_sha256, key, h, layout, policy):
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
        values = self._call("get", lambda: self.client.mget([self.key(bundle_sha256, o, t, policy=policy) for o, t in wanted]))
        if values is None:
            return None
        scores = {}
        for w, v in zip(wanted, values, strict=True):
            if v is None:
                continue
            try:
                scores[w] = loads_entry(v).score  # the matched image's score; its provenance is about other bytes
            except (ValueError, KeyError, TypeError):
                log.warning("cache_entry_corrupt", content_sha256=w[0])
        return {k: NearMatch(scores[(o, self._tenant_of(k))], o, d) for k, (d, o) in best.items() if (o, self._tenant_of(k)) in scores}

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
