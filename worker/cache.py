"""Verdict cache in Redis, keyed by content sha256 and bundle sha256.

A score depends only on the image bytes and the model, so the key is exactly
those two hashes: a new bundle never serves an old bundle's scores, and the same
image uploaded twice (or replayed after a crash) is scored once. Reads and
writes are one round trip per batch (MGET, pipelined SET EX).

Redis is an optimisation, never a dependency: every call has a socket timeout,
and any Redis error is logged and treated as a miss (reads) or skipped (writes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis
import structlog

log = structlog.get_logger(__name__)

KEY_PREFIX = "aigis:v1"


@dataclass(frozen=True)
class CachedScore:
    score: float
    head_scores: dict[str, float]
    anomaly: dict[str, float]

    def dumps(self) -> bytes:
        return json.dumps({"s": self.score, "h": self.head_scores, "a": self.anomaly}, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> CachedScore:
        d = json.loads(raw)
        return cls(float(d["s"]), {k: float(v) for k, v in d.get("h", {}).items()}, {k: float(v) for k, v in d.get("a", {}).items()})


class VerdictCache:
    """get_many / set_many over Redis; failures degrade to cache misses."""

    def __init__(self, url: str, bundle_sha256: str, ttl_s: int, timeout_s: float = 0.5) -> None:
        self.bundle_sha256 = bundle_sha256
        self.ttl_s = ttl_s
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False)

    def key(self, content_sha256: str) -> str:
        return f"{KEY_PREFIX}:{self.bundle_sha256}:{content_sha256}"

    def get_many(self, shas: Iterable[str]) -> dict[str, CachedScore]:
        shas = list(dict.fromkeys(shas))
        if not shas:
            return {}
        try:
            values = self.client.mget([self.key(s) for s in shas])
        except redis.RedisError as exc:
            log.warning("cache_read_failed", error=str(exc), keys=len(shas))
            return {}
        hits: dict[str, CachedScore] = {}
        for sha, raw in zip(shas, values, strict=True):
            if raw is None:
                continue
            try:
                hits[sha] = CachedScore.loads(raw)
            except (ValueError, KeyError, TypeError):
                log.warning("cache_entry_corrupt", content_sha256=sha)
        return hits

    def set_many(self, entries: Mapping[str, CachedScore]) -> None:
        if not entries:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for sha, value in entries.items():
                pipe.set(self.key(sha), value.dumps(), ex=self.ttl_s)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("cache_write_failed", error=str(exc), keys=len(entries))

    def close(self) -> None:
        self.client.close()
