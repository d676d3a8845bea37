"""Outcome construction is total: any record gives exactly one outcome that serialises and fits the producer.

A property-based test drives arbitrary keys, headers and values (raw bytes and JSON events, with lone
surrogate escapes, huge keys, odd tenants, real images among them) through the pipeline, with the producer
limit set low enough that the reduction steps of :mod:`worker.pipeline.outcomes` are exercised.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.images import unique_jpegs
from schemas import DeadLetter, ErrorCode, UploadEvent, VerdictEvent
from worker.config import WorkerConfig
from worker.errors import InputError
from worker.ingest.wire import InputRecord
from worker.model.bundle import LoadedBundle
from worker.model.rollout import Models
from worker.pipeline.batch import BatchProcessor
from worker.pipeline.items import PipelineSettings
from worker.pipeline.outcomes import MAX_KEY_BYTES, Outcome, OutcomeLimits, dead_letter_outcome

LIMITS = OutcomeLimits(max_record_bytes=6000, payload_copy_max_bytes=4096)
IMAGES = unique_jpegs(4, seed=11)

any_text = st.text(st.characters(categories=("L", "N", "P", "S", "Z", "Cs", "Cc")), max_size=40)
#: Text with a lone surrogate: what JSON's "\\ud800" escapes decode to, and what UTF-8 cannot encode.
surrogate_text = st.tuples(any_text, st.integers(0xD800, 0xDFFF)).map(lambda t: t[0] + chr(t[1]))
ids = st.one_of(any_text, surrogate_text)
big_text = st.integers(500, 3000).map(lambda n: "x" * n)
keys = st.one_of(st.none(), st.binary(max_size=64), ids.map(lambda t: t.encode("utf-8", "surrogatepass")), st.integers(6000, 20_000).map(lambda n: b"k" * n))
header_values = st.one_of(st.binary(max_size=40), st.sampled_from([b"image/jpeg", b"application/json", b"t" * 300]))
headers = st.lists(st.tuples(st.sampled_from(["content-type", "tenant", "Tenant", "x-other"]), header_values), max_size=3)


@st.composite
def json_values(draw: st.DrawFn) -> bytes:
    doc: dict[str, object] = {"upload_id": draw(st.one_of(ids, big_text, st.integers(), st.none()))}
    if draw(st.booleans()):
        doc["tenant"] = draw(st.one_of(ids, big_text, st.none()))
    choice = draw(st.sampled_from(["inline", "bad-b64", "uri", "both", "neither"]))
    if choice in ("inline", "both"):
        doc["image_base64"] = UploadEvent.inline("x", draw(st.sampled_from(IMAGES))).image_base64
    if choice == "bad-b64":
        doc["image_base64"] = draw(any_text)
    if choice in ("uri", "both"):
        doc["image_uri"] = draw(st.one_of(any_text, surrogate_text.map(lambda t: "http://example.invalid/" + t)))
    doc.update(draw(st.dictionaries(any_text, st.one_of(any_text, st.integers()), max_size=2)))
    return json.dumps(doc).encode("utf-8")


values = st.one_of(st.none(), st.binary(max_size=200), st.sampled_from(IMAGES), json_values(), st.binary(min_size=4000, max_size=5000))
records = st.lists(st.tuples(keys, headers, values), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def processor(tiny_bundle: Path):  # type: ignore[no-untyped-def]
    cfg = WorkerConfig(bundle=tiny_bundle, redis_url="", max_image_bytes=64 * 1024)
    settings_ = dataclasses.replace(PipelineSettings.from_config(cfg), outcome_limits=LIMITS)
    with ThreadPoolExecutor(2) as pool:
        yield BatchProcessor(settings_, Models(LoadedBundle(tiny_bundle)), None, pool)


def check(outcome: Outcome) -> None:
    assert outcome.size <= LIMITS.max_record_bytes, f"outcome of {outcome.size} bytes exceeds the producer limit"
    model = VerdictEvent if outcome.verdict is not None else DeadLetter
    event = model.model_validate_json(outcome.payload)  # serialisable and valid against its own schema
    assert event == outcome.event
    assert outcome.key is None or len(outcome.key) <= MAX_KEY_BYTES + 80
    if outcome.verdict is not None:
        assert outcome.key == outcome.verdict.upload_id.encode("utf-8")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=records)
def test_every_record_gives_one_deliverable_outcome(processor: BatchProcessor, batch: list) -> None:  # type: ignore[type-arg]
    recs = [InputRecord("t", 0, i, None, key, value, tuple(hdrs)) for i, (key, hdrs, value) in enumerate(batch)]
    outcomes = processor.process(recs)
    assert [o.record for o in outcomes] == recs, "exactly one outcome per record, in order"
    for o in outcomes:
        check(o)


def test_lone_surrogate_ids_are_refused_and_left_out(processor: BatchProcessor) -> None:
    value = b'{"upload_id": "\\ud800", "tenant": "\\udfff", "image_base64": "' + UploadEvent.inline("x", IMAGES[0]).image_base64.encode() + b'"}'
    (o,) = processor.process([InputRecord("t", 0, 0, None, None, value)])
    assert o.dead_letter is not None and o.dead_letter.error_code is ErrorCode.schema_invalid
    assert o.dead_letter.upload_id is None and o.dead_letter.tenant is None
    check(o)


def test_an_oversized_key_is_replaced_by_its_hash(processor: BatchProcessor) -> None:
    key = b"\xff" * 200_000  # not UTF-8 either, so no upload id can come from it
    (o,) = processor.process([InputRecord("t", 0, 0, None, key, b"not an image")])
    assert o.dead_letter is not None and o.key is not None and o.key.startswith(b"sha256:")
    assert "replaced by its sha256" in o.dead_letter.message
    check(o)


def test_reduction_steps_keep_what_fits() -> None:
    rec = InputRecord("t", 3, 7, None, b"id-1", b"\x00" * 4000)
    err = InputError(ErrorCode.undecodable, "bad")
    full = dead_letter_outcome(rec, err, None, OutcomeLimits(max_record_bytes=20_000, payload_copy_max_bytes=10_000))
    assert full.dead_letter is not None and full.dead_letter.payload_base64 is not None and full.dead_letter.upload_id == "id-1"
    no_copy = dead_letter_outcome(rec, err, None, OutcomeLimits(max_record_bytes=3000, payload_copy_max_bytes=10_000))
    assert no_copy.dead_letter is not None and no_copy.dead_letter.payload_base64 is None and no_copy.dead_letter.upload_id == "id-1"
    assert no_copy.dead_letter.payload_sha256 == full.dead_letter.payload_sha256 and "payload copy left out" in no_copy.dead_letter.message
    minimal = dead_letter_outcome(rec, InputError(ErrorCode.undecodable, "m" * 1900), None, OutcomeLimits(max_record_bytes=900, payload_copy_max_bytes=0))
    assert minimal.dead_letter is not None and minimal.dead_letter.upload_id is None and minimal.size <= 900
    assert minimal.dead_letter.source.offset == 7 and minimal.dead_letter.payload_size == 4000
