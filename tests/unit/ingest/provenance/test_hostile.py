"""Hostile provenance metadata (devkit.corpus): every file still decodes, no reader raises, the signal it attacks is unreadable.

Speed is printed, never asserted (the house rule): run with ``-s`` to see how long
each reader took on each file. The bound that matters is structural: what a
parser may read is capped by ProvenanceLimits, and the caps are what the
assertions check.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from devkit import corpus
from devkit.c2pa_signing import make_ca, make_signer, sign_image
from devkit.provenance_images import encode, photo
from schemas.provenance import SignalKind, SignalStatus
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.provenance import ProvenanceLimits, TrustList, read_provenance

HOSTILE = corpus.provenance_hostile_files()

#: which signal each hostile file attacks (the one that must come out unreadable)
TARGET = {name: SignalKind(kind) for name, kind in corpus.provenance_hostile_targets().items()}


def test_every_hostile_file_has_a_target() -> None:
    assert set(HOSTILE) == set(TARGET)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_decodes_and_its_signal_is_unreadable(name: str) -> None:
    data = HOSTILE[name]
    decoded = decode_image(data, DecodeLimits())  # a decodable image: the worker owes it a verdict, not a dead letter
    t0 = time.perf_counter()
    reading = read_provenance(data, ProvenanceLimits(), image=decoded.image)
    ms = (time.perf_counter() - t0) * 1000
    print(f"{name}: {len(data)} bytes, read_provenance {ms:.1f} ms")
    sig = reading.signal(TARGET[name])
    assert sig is not None and sig.status is SignalStatus.unreadable, sig
    assert sig.detail and len(sig.detail) <= 300
    assert [s.kind for s in reading.signals] == list(SignalKind)


def test_text_bombs_inflate_only_to_the_cap() -> None:
    """A 50 MiB zTXt bomb under a keyword provenance reads costs the 512 KiB cap; under other keywords, nothing is inflated."""
    big = corpus.png_text_bomb(inflated=50 * 1024 * 1024)
    sig = read_provenance(big).signal(SignalKind.generator)
    assert sig is not None and sig.status is SignalStatus.unreadable and "inflates past the limit of 524288" in (sig.detail or "")
    other = corpus.png_text_bomb(keyword="Comment-not-read", inflated=50 * 1024 * 1024)
    assert read_provenance(other).signal(SignalKind.generator).status is SignalStatus.absent  # type: ignore[union-attr]


def test_total_text_budget_across_chunks() -> None:
    """Many chunks each under the per-chunk cap still cannot inflate more than max_total_text_bytes together."""
    data = corpus.png_text_bomb(inflated=400 * 1024, chunks=8)
    sig = read_provenance(data).signal(SignalKind.generator)
    assert sig is not None and sig.status in (SignalStatus.unreadable, SignalStatus.found)
    assert "limit" in (sig.detail or "")


def test_chunk_cap_hides_what_comes_after_it_and_says_so() -> None:
    data = corpus.png_many_chunks(n=500)
    assert read_provenance(data).signal(SignalKind.generator).model == "late"  # type: ignore[union-attr]
    sig = read_provenance(data, ProvenanceLimits(max_chunks=100)).signal(SignalKind.generator)
    assert sig is not None and sig.status is SignalStatus.unreadable and "more than 100 chunks" in (sig.detail or "")


def test_manifest_store_over_the_cap_is_never_handed_to_the_sdk() -> None:
    data = corpus.jpeg_with_jumbf(corpus.c2pa_store_stub(b"\x00" * 300_000))
    sig = read_provenance(data, ProvenanceLimits(max_c2pa_bytes=100_000)).signal(SignalKind.c2pa)
    assert sig is not None and sig.status is SignalStatus.unreadable and "limit 100000" in (sig.detail or "")


def test_file_over_the_byte_limit_is_not_parsed() -> None:
    data = encode(photo(), "PNG")
    reading = read_provenance(data, ProvenanceLimits(max_bytes=len(data) - 1))
    assert all(s.status is SignalStatus.not_checked for s in reading.signals)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_fuzzed_and_truncated_signed_files_never_raise(fmt: str) -> None:
    """Random bytes of a real signed manifest store replaced, and the signed file cut short: the SDK errors become signals."""
    mime = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff"}[fmt]
    ca = make_ca()
    trust = TrustList.from_pem(ca.cert_pem)
    raw = encode(photo(80, 64), fmt)
    signed = sign_image(raw, mime, make_signer(ca))
    start = next(i for i in range(len(raw)) if signed[i] != raw[i])
    end = len(signed) - next(j for j in range(len(raw)) if signed[-1 - j] != raw[-1 - j])
    seen: dict[str, int] = {}
    slowest = 0.0
    variants = [corpus.mutate_bytes(signed, start, end, flips=1 + k % 8, seed=k) for k in range(60)]
    variants += [signed[: int(len(signed) * f)] for f in np.linspace(0.05, 0.99, 12)]
    for data in variants:
        t0 = time.perf_counter()
        sig = read_provenance(data, trust=trust).signal(SignalKind.c2pa)
        slowest = max(slowest, time.perf_counter() - t0)
        assert sig is not None
        key = f"{sig.status.value}/{sig.validation}"
        seen[key] = seen.get(key, 0) + 1
        if sig.validation == "valid":
            assert sig.digital_source_types == ["trainedAlgorithmicMedia"]  # a flip that left it valid changed nothing signed
    print(f"{fmt}: manifest bytes {end - start}, outcomes {seen}, slowest {slowest * 1000:.1f} ms")
    assert seen.get("unreadable/None", 0) + seen.get("found/invalid", 0) > 0


@pytest.mark.parametrize("name", ["jpeg-many-segments", "png-many-chunks"])
def test_a_walk_stopped_at_the_chunk_cap_reports_no_metadata_signal_absent(name: str) -> None:
    """What lies past the cap was never looked at: "absent" would claim a check that did not happen."""
    reading = read_provenance(HOSTILE[name], ProvenanceLimits())
    statuses = {s.kind: s.status for s in reading.signals}
    assert {statuses[k] for k in (SignalKind.c2pa, SignalKind.iptc, SignalKind.generator)} == {SignalStatus.unreadable}
