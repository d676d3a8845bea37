"""Provenance is cached with the score, and the policy fingerprint is part of the key (real redis-server)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from devkit import provenance_images as pi
from devkit.bundles import copy_bundle, rewrite_manifest
from devkit.c2pa_signing import make_ca, make_signer, sign_image
from schemas import CacheStatus, Label
from schemas.provenance import DecidedBy, ProvenancePolicy, SignalKind, SignalStatus
from worker.cache.verdicts import KEY_PREFIX, CachedVerdict, VerdictCache, dumps_entry, loads_entry
from worker.config import WorkerConfig
from worker.ingest.provenance import read_provenance
from worker.ingest.wire import InputRecord
from worker.model.bundle import LoadedBundle
from worker.model.rollout import Models
from worker.model.scores import Score
from worker.pipeline.batch import BatchProcessor
from worker.pipeline.items import PipelineSettings

CA = make_ca()
SIGNED = sign_image(pi.encode(pi.photo(96, 64), "JPEG"), "image/jpeg", make_signer(CA), "trainedAlgorithmicMedia")
A1111 = pi.png_with_text({"parameters": pi.a1111_parameters()})


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> LoadedBundle:
    """A bundle of this test's own (its sha256 keeps the keys apart in the shared Redis) whose model says real."""
    path = copy_bundle(tiny_bundle, tmp_path / "bundle")

    def edit(doc: dict) -> None:  # type: ignore[type-arg]
        doc.update(version=f"prov-cache-{uuid.uuid4().hex[:8]}")
        doc["calibration"].update(threshold=1.0, uncertain_low=1.0, uncertain_high=1.0, calibrated=True)

    rewrite_manifest(path, edit)
    return LoadedBundle(path)


@pytest.fixture
def anchors(tmp_path: Path) -> Path:
    path = tmp_path / "anchors.pem"
    path.write_bytes(CA.cert_pem)
    return path


@pytest.fixture
def client(servers) -> Iterator[redis.Redis]:  # type: ignore[no-untyped-def]
    c = redis.Redis.from_url(servers.redis_url)
    yield c
    c.close()


def _run(servers, bundle: LoadedBundle, policy: ProvenancePolicy, anchors: Path | None, files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    cfg = WorkerConfig(bundle=bundle.path, redis_url=servers.redis_url, provenance_policy=policy, provenance_trust_anchors=anchors)
    with VerdictCache(servers.redis_url, 60) as cache, ThreadPoolExecutor(2) as pool:
        proc = BatchProcessor(PipelineSettings.from_config(cfg), Models(bundle), cache, pool)
        records = [InputRecord("t", 0, i, None, name.encode(), data) for i, (name, data) in enumerate(files.items())]
        out = {name: o.verdict for name, o in zip(files, proc.process(records), strict=True)}
    assert all(v is not None for v in out.values())
    return out, proc


def test_a_hit_serves_the_cached_provenance_and_decides_again(servers, bundle: LoadedBundle, anchors: Path, client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    files = {"signed": SIGNED, "a1111": A1111}
    first, proc = _run(servers, bundle, ProvenancePolicy.decide, anchors, files)
    again, _ = _run(servers, bundle, ProvenancePolicy.decide, anchors, files)
    for name in files:
        assert first[name].cache is CacheStatus.miss and again[name].cache is CacheStatus.hit, name
        assert again[name].provenance == first[name].provenance and again[name].score == first[name].score
        assert again[name].label == first[name].label and again[name].decided_by == first[name].decided_by
    assert again["signed"].label is Label.ai_generated and again["signed"].decided_by is DecidedBy.provenance
    assert again["signed"].model_label is Label.real
    # the entry holds the signals, under a key that names the bundle and the policy fingerprint
    fingerprint = proc.settings.provenance.fingerprint
    keys = list(client.scan_iter(f"{KEY_PREFIX}:{bundle.sha256}:*"))
    assert len(keys) == 2 and all(k.decode().split(":")[3] == fingerprint[:16] for k in keys)
    entry = json.loads(client.get(keys[0]) or b"{}")
    assert {s["kind"] for s in entry["p"]} == set(SignalKind)


@pytest.mark.parametrize("change", ["policy", "trust", "off"])
def test_a_policy_or_trust_change_misses_the_cache(servers, bundle: LoadedBundle, anchors: Path, change: str) -> None:  # type: ignore[no-untyped-def]
    files = {"signed": SIGNED}
    _run(servers, bundle, ProvenancePolicy.decide, anchors, files)
    policy, trust = {"policy": (ProvenancePolicy.annotate, anchors), "trust": (ProvenancePolicy.decide, None), "off": (ProvenancePolicy.off, None)}[change]
    got, _ = _run(servers, bundle, policy, trust, files)
    v = got["signed"]
    assert v.cache is CacheStatus.miss, "a verdict made under other provenance rules must not be served"
    assert v.label is Label.real and v.decided_by is DecidedBy.model
    if change == "trust":
        sig = v.provenance.signal(SignalKind.c2pa)
        assert sig is not None and sig.trusted is None  # read again, under the new (empty) trust list
    if change == "off":
        assert v.provenance.signals == []
    assert _run(servers, bundle, policy, trust, files)[0]["signed"].cache is CacheStatus.hit  # and the new rules cache their own


def test_a_corrupt_provenance_record_is_a_miss_not_a_crash(servers, bundle: LoadedBundle, anchors: Path, client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    files = {"signed": SIGNED}
    _run(servers, bundle, ProvenancePolicy.decide, anchors, files)
    (key,) = list(client.scan_iter(f"{KEY_PREFIX}:{bundle.sha256}:*"))
    entry = json.loads(client.get(key) or b"{}")
    entry["p"] = [{"kind": "c2pa", "status": "bogus"}]
    client.set(key, json.dumps(entry))
    got, _ = _run(servers, bundle, ProvenancePolicy.decide, anchors, files)
    assert got["signed"].cache is CacheStatus.miss and got["signed"].decided_by is DecidedBy.provenance


def test_entries_round_trip_with_and_without_provenance() -> None:
    reading = read_provenance(A1111)
    score = Score(0.4, {"h": 0.4}, {}, {"sd": 0.9})
    with_p = loads_entry(dumps_entry(CachedVerdict(score, reading)))
    assert with_p == CachedVerdict(score, reading)
    assert with_p.provenance is not None and with_p.provenance.signal(SignalKind.generator).status is SignalStatus.found  # type: ignore[union-attr]
    assert loads_entry(dumps_entry(score)) == CachedVerdict(score, None) and b'"p"' not in dumps_entry(score)
