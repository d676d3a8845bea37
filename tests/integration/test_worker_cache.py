"""The verdict cache against the real redis-server: exact hits, and near-duplicates by pHash when enabled."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from devkit.bundles import copy_bundle, rewrite_manifest
from export.photos import load_rgb, photo_paths
from worker.cache.verdicts import VerdictCache
from worker.config import WorkerConfig
from worker.ingest.wire import InputRecord
from worker.model.bundle import LoadedBundle
from worker.model.rollout import Models
from worker.pipeline.batch import BatchProcessor
from worker.pipeline.items import PipelineSettings


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture
def fresh_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A bundle with its own sha256, so this test's cache keys are its own in the shared Redis."""
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    rewrite_manifest(bundle, lambda doc: doc.update(version=f"cache-test-{tmp_path.name}"))
    return bundle


@pytest.mark.parametrize("distance", [-1, 8])
def test_near_duplicates_are_served_from_the_cache_only_when_enabled(servers, fresh_bundle: Path, distance: int) -> None:
    bundle = LoadedBundle(fresh_bundle, ["CPUExecutionProvider"])
    photo, other = (load_rgb(p) for p in photo_paths(include_grey=False)[:2])
    original = _jpeg(photo, 95)
    re_encoded = _jpeg(photo.resize((photo.width * 3 // 4, photo.height * 3 // 4)), 60)  # different bytes, same picture
    unrelated = _jpeg(other, 95)
    cfg = WorkerConfig(bundle=fresh_bundle, redis_url=servers.redis_url, near_duplicate_max_distance=distance)
    cache = VerdictCache(servers.redis_url, cfg.cache_ttl_s)
    with ThreadPoolExecutor(2) as pool:
        proc = BatchProcessor(PipelineSettings.from_config(cfg), Models(bundle), cache, pool)

        def one(key: str, data: bytes):  # type: ignore[no-untyped-def]
            (outcome,) = proc.process([InputRecord("t", 0, 0, None, key.encode(), data)])
            assert outcome.verdict is not None
            return outcome.verdict

        first = one("first", original)
        assert first.cache.value == "miss"
        again = one("again", original)
        assert again.cache.value == "hit" and again.score == first.score
        copy = one("copy", re_encoded)
        assert copy.content_sha256 != first.content_sha256
        if distance < 0:
            assert copy.cache.value == "miss", "near-duplicate lookup must be off by default"
        else:
            assert copy.cache.value == "near_duplicate" and copy.score == first.score
        assert one("other", unrelated).cache.value == "miss"
    cache.close()


def test_tenant_scope_never_tells_one_tenant_about_another_tenants_upload(servers, fresh_bundle: Path) -> None:
    """Global scope: the same bytes from tenant B are a hit (B learns A uploaded them). Tenant scope: a miss for B, a hit for A again."""
    bundle = LoadedBundle(fresh_bundle, ["CPUExecutionProvider"])
    photo = _jpeg(load_rgb(photo_paths(include_grey=False)[2]), 90)

    def run(scope: str) -> list[str]:
        cfg = WorkerConfig(bundle=fresh_bundle, redis_url=servers.redis_url, cache_scope=scope)
        cache = VerdictCache(servers.redis_url, cfg.cache_ttl_s, scope=cfg.cache_scope)
        with ThreadPoolExecutor(2) as pool:
            proc = BatchProcessor(PipelineSettings.from_config(cfg), Models(bundle), cache, pool)
            out = []
            for i, tenant in enumerate(["tenant-a", "tenant-b", "tenant-a"]):
                rec = InputRecord("t", 0, i, None, f"{scope}-{i}".encode(), photo, (("tenant", tenant.encode()),))
                (outcome,) = proc.process([rec])
                assert outcome.verdict is not None and outcome.verdict.tenant == tenant
                out.append(outcome.verdict.cache.value)
        cache.client.flushdb()
        return out

    assert run("global") == ["miss", "hit", "hit"]
    assert run("tenant") == ["miss", "miss", "hit"]
