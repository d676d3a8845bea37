"""The verdict cache's scoping and near-duplicate index against the real redis-server.

Each test uses its own bundle hash, so its keys are its own in the shared Redis.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from worker.cache.phash import band_layout
from worker.cache.verdicts import PHASH_PREFIX, ContentKey, VerdictCache
from worker.config import WorkerConfig
from worker.model.scores import Score

SCORE = Score(0.25, {"head": 0.25}, {})
OTHER = Score(0.75, {"head": 0.75}, {})


@pytest.fixture
def bundle_sha() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def client(servers) -> Iterator[redis.Redis]:  # type: ignore[no-untyped-def]
    c = redis.Redis.from_url(servers.redis_url)
    yield c
    c.close()


class _Bound:
    """A cache with this test's bundle hash filled in (the cache takes it per call)."""

    def __init__(self, cache: VerdictCache, bundle_sha: str) -> None:
        self.cache, self.bundle = cache, bundle_sha

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        attr = getattr(self.cache, name)
        if name == "get_many":  # these tests are about keys and scopes: compare the scores of the entries
            return lambda *a, **kw: {k: v.score for k, v in attr(self.bundle, *a, **kw).items()}
        if name in ("set_many", "near_many", "key"):
            return lambda *a, **kw: attr(self.bundle, *a, **kw)
        return attr


def _cache(servers, bundle_sha: str, **kw: object) -> _Bound:  # type: ignore[no-untyped-def]
    ttl = int(kw.pop("ttl_s", 60))  # type: ignore[call-overload]
    return _Bound(VerdictCache(servers.redis_url, ttl, **kw), bundle_sha)  # type: ignore[arg-type]


def _band_keys(client: redis.Redis, bundle_sha: str) -> list[bytes]:
    return sorted(client.scan_iter(f"{PHASH_PREFIX}:{bundle_sha}:*"))


# -- members expire with their verdicts ----------------------------------------------------------------------------


def test_band_members_expire_with_their_verdicts_even_when_the_band_keeps_being_written(servers, bundle_sha: str, client: redis.Redis) -> None:
    cache = _cache(servers, bundle_sha, ttl_s=2)
    h = 0x0123_4567_89AB_CDEF
    cache.set_many({"a" * 64: SCORE}, {"a" * 64: h}, max_distance=0)
    (band,) = _band_keys(client, bundle_sha)
    time.sleep(1.2)
    cache.set_many({"b" * 64: OTHER}, {"b" * 64: h}, max_distance=0)  # same band: refreshes the band key's TTL
    assert {m.decode().split(":")[1][:1] for m in client.zrange(band, 0, -1)} == {"a", "b"}
    time.sleep(1.3)  # a's verdict has expired; the band itself has not (b keeps it alive)
    assert client.get(cache.key("a" * 64)) is None and client.exists(band)
    found = cache.near_many({"c" * 64: h}, 0)
    assert found is not None and {m.content_sha256 for m in found.values()} == {"b" * 64}  # the expired member is not read
    cache.set_many({"d" * 64: OTHER}, {"d" * 64: h ^ 1 << 63}, max_distance=0)  # any write to the band trims it
    cache.set_many({"e" * 64: OTHER}, {"e" * 64: h}, max_distance=0)
    assert {m.decode().split(":")[1][:1] for m in client.zrange(band, 0, -1)} == {"b", "e"}
    time.sleep(2.2)
    assert not client.exists(band), "a band outlives its newest member's verdict"
    cache.close()


def test_members_are_scored_by_their_verdicts_expiry(servers, bundle_sha: str, client: redis.Redis) -> None:
    cache = _cache(servers, bundle_sha, ttl_s=3600)
    before = time.time()
    cache.set_many({"a" * 64: SCORE}, {"a" * 64: 42}, max_distance=3)
    keys = _band_keys(client, bundle_sha)
    assert len(keys) == len(band_layout(3))
    for key in keys:
        ((member, expiry),) = client.zrange(key, 0, -1, withscores=True)
        assert member == f"{42:016x}:{'a' * 64}".encode()
        assert before + 3600 <= expiry <= time.time() + 3601
        assert 0 < client.ttl(key) <= 3600
    cache.close()


# -- the scan per lookup is capped ----------------------------------------------------------------------------------


def test_a_crowded_band_is_kept_to_the_newest_members_and_lookups_read_at_most_the_cap(servers, bundle_sha: str, client: redis.Redis) -> None:
    cache = _cache(servers, bundle_sha, near_scan_limit=50)
    h = 0xFEED_F00D_DEAD_BEEF
    entries = {f"{i:064x}": SCORE for i in range(300)}
    for sha in entries:  # 300 uploads whose pHashes collide (a crafted flood, or a very common picture)
        cache.set_many({sha: SCORE}, {sha: h}, max_distance=0)
    (band,) = _band_keys(client, bundle_sha)
    kept = {m.decode().split(":")[1] for m in client.zrange(band, 0, -1)}
    assert kept == set(list(entries)[250:])  # the 50 whose verdicts expire last
    # a band written by an older worker without the cap (members expiring sooner): the lookup still reads only 50
    client.zadd(band, {f"{h:016x}:{i:064x}": time.time() + 30 for i in range(1000, 3000)})
    found = cache.near_many({"f" * 64: h}, 0)
    assert cache.last_near_scanned == 50
    assert found is not None and len(found) == 1
    cache.close()


def test_the_scan_cap_is_shared_between_the_bands_of_a_lookup(servers, bundle_sha: str) -> None:
    cache = _cache(servers, bundle_sha, near_scan_limit=40)
    for i in range(60):
        cache.set_many({f"{i:064x}": SCORE}, {f"{i:064x}": 0}, max_distance=3)  # every band of every entry collides
    cache.near_many({"f" * 64: 0}, 3)
    assert 0 < cache.last_near_scanned <= 40
    cache.close()


# -- scope: global or per tenant ------------------------------------------------------------------------------------


def test_global_scope_shares_an_entry_across_tenants(servers, bundle_sha: str) -> None:
    cache = _cache(servers, bundle_sha)
    cache.set_many({ContentKey("a" * 64, "tenant-a"): SCORE})
    assert cache.key("a" * 64, "tenant-a") == cache.key("a" * 64, "tenant-b") == cache.key("a" * 64)
    hits = cache.get_many([ContentKey("a" * 64, "tenant-b")])
    assert hits == {ContentKey("a" * 64, "tenant-b"): SCORE}
    cache.close()


def test_tenant_scope_keeps_tenants_apart_for_exact_and_near_hits(servers, bundle_sha: str) -> None:
    cache = _cache(servers, bundle_sha, scope="tenant")
    a, b = ContentKey("a" * 64, "tenant-a"), ContentKey("a" * 64, "tenant-b")
    assert len({cache.key("a" * 64, "tenant-a"), cache.key("a" * 64, "tenant-b"), cache.key("a" * 64)}) == 3
    assert "tenant-a" not in cache.key("a" * 64, "tenant-a")  # tenants are hashed into keys, never written raw
    cache.set_many({a: SCORE}, {a: 1234}, max_distance=4)
    assert cache.get_many([a, b]) == {a: SCORE}  # tenant B cannot tell that tenant A uploaded these bytes
    near_b = cache.near_many({ContentKey("c" * 64, "tenant-b"): 1234}, 4)
    near_a = cache.near_many({ContentKey("c" * 64, "tenant-a"): 1234}, 4)
    assert near_b == {}
    assert near_a is not None and near_a[ContentKey("c" * 64, "tenant-a")].score == SCORE
    # the same bytes from both tenants in one batch are two entries
    cache.set_many({b: OTHER})
    assert cache.get_many([a, b]) == {a: SCORE, b: OTHER}
    assert cache.get_many([ContentKey("a" * 64, None)]) == {}  # no tenant is a scope of its own
    cache.close()


def test_the_risks_are_documented_beside_the_flags() -> None:
    fields = WorkerConfig.model_fields
    assert "collision" in (fields["near_duplicate_max_distance"].description or "")
    scope_help = fields["cache_scope"].description or ""
    assert "global" in scope_help and "tenant" in scope_help and "cache: hit" in scope_help
    assert WorkerConfig().cache_scope == "global" and WorkerConfig().near_duplicate_max_distance == -1
