"""Event contracts: generated JSON Schema files are current, and the models enforce what they promise."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from schemas import VERDICT_SCHEMA_VERSION, DeadLetter, ErrorCode, Label, UploadEvent, VerdictEvent
from schemas.generate import MODELS, SCHEMA_DIR, render, stale_files
from schemas.provenance import C2paSignal, DecidedBy, Provenance, ProvenancePolicy, SignalKind, WatermarkSignal


def test_checked_in_json_schemas_are_current() -> None:
    assert stale_files() == [], "run `python -m schemas` and commit the result"


def test_staleness_is_detected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name, model in MODELS.items():
        (tmp_path / name).write_text(render(model))
    assert stale_files(tmp_path) == []
    (tmp_path / "verdict_event.schema.json").write_text("{}\n")
    assert stale_files(tmp_path) == ["verdict_event.schema.json"]


def test_every_event_schema_carries_a_version() -> None:
    for name in ("upload_event", "verdict_event", "dead_letter"):
        doc = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
        assert "schema_version" in doc["properties"]


def test_upload_needs_exactly_one_image_source() -> None:
    UploadEvent(upload_id="a", image_uri="https://x/y.jpg")
    UploadEvent.inline("a", b"\xff\xd8")
    with pytest.raises(ValidationError):
        UploadEvent(upload_id="a")
    with pytest.raises(ValidationError):
        UploadEvent(upload_id="a", image_uri="https://x", image_base64=base64.b64encode(b"x").decode())
    with pytest.raises(ValidationError):
        UploadEvent(upload_id="", image_uri="https://x")


def test_inline_round_trip() -> None:
    ev = UploadEvent.inline("u1", b"\x89PNG-bytes", tenant="t")
    again = UploadEvent.model_validate_json(ev.model_dump_json())
    assert again.image_bytes() == b"\x89PNG-bytes" and again.tenant == "t"


def test_dead_letter_codes_are_a_closed_list() -> None:
    src = {"topic": "t", "partition": 0, "offset": 1}
    DeadLetter(error_code="undecodable", message="m", source=src, payload_size=0, payload_sha256="0" * 64)
    with pytest.raises(ValidationError):
        DeadLetter(error_code="whatever", message="m", source=src, payload_size=0, payload_sha256="0" * 64)
    assert {"undecodable", "too_large", "unsupported_format", "decompression_bomb", "schema_invalid", "fetch_failed"} <= {c.value for c in ErrorCode}


def test_verdict_rejects_scores_outside_unit_interval() -> None:
    doc = {
        "upload_id": "u",
        "content_sha256": "a" * 64,
        "label": "real",
        "score": 1.5,
        "thresholds": {"threshold": 0.5, "uncertain_low": 0.5, "uncertain_high": 0.5, "calibrated": False},
        "bundle": {"name": "b", "version": "1", "sha256": "b" * 64},
        "cache": "miss",
        "timings": {"queue_ms": 0, "decode_ms": 0, "inference_ms": 0, "total_ms": 0},
    }
    with pytest.raises(ValidationError):
        VerdictEvent.model_validate(doc)
    doc["score"] = 0.25
    assert VerdictEvent.model_validate(doc).cached is False


def _verdict_doc(**kw: object) -> dict:
    doc = {
        "upload_id": "u",
        "content_sha256": "a" * 64,
        "label": "real",
        "score": 0.1,
        "thresholds": {"threshold": 0.5, "uncertain_low": 0.5, "uncertain_high": 0.5, "calibrated": True},
        "bundle": {"name": "b", "version": "1", "sha256": "b" * 64},
        "cache": "miss",
        "timings": {"queue_ms": 0, "decode_ms": 0, "inference_ms": 0, "total_ms": 0},
    }
    doc.update(kw)
    return doc


def test_verdict_is_version_2_and_refuses_version_1() -> None:
    """Version 2 changed what `label` means (provenance may set it): a v1 document is not silently read as v2."""
    assert VERDICT_SCHEMA_VERSION == 2
    assert VerdictEvent.model_validate(_verdict_doc()).schema_version == 2
    with pytest.raises(ValidationError):
        VerdictEvent.model_validate(_verdict_doc(schema_version=1))


def test_model_decided_verdict_carries_the_model_label_and_an_unread_provenance() -> None:
    v = VerdictEvent.model_validate(_verdict_doc())
    assert v.model_label is Label.real and v.decided_by is DecidedBy.model
    assert v.provenance.policy is ProvenancePolicy.off and v.provenance.signals == []
    out = json.loads(v.model_dump_json())
    assert {"model_label", "decided_by", "provenance"} <= set(out)
    with pytest.raises(ValidationError, match="label differs from model_label"):
        VerdictEvent.model_validate(_verdict_doc(model_label="ai_generated"))


def test_provenance_decided_verdict_must_name_its_decisive_signals_and_say_ai_generated() -> None:
    wm = {"kind": "watermark", "status": "found", "strength": "watermark", "ai_declared": True, "payload": "sdxl", "agreement": 0.8}
    prov = {"policy": "decide", "signals": [wm], "decisive": ["watermark"]}
    v = VerdictEvent.model_validate(_verdict_doc(label="ai_generated", model_label="real", decided_by="provenance", provenance=prov))
    assert v.score == 0.1 and v.model_label is Label.real and v.label is Label.ai_generated
    assert isinstance(v.provenance.signals[0], WatermarkSignal) and v.provenance.signal(SignalKind.watermark) is not None
    again = VerdictEvent.model_validate_json(v.model_dump_json())
    assert again == v
    with pytest.raises(ValidationError, match="no signal is listed as decisive"):
        VerdictEvent.model_validate(_verdict_doc(label="ai_generated", model_label="real", decided_by="provenance", provenance={**prov, "decisive": []}))
    with pytest.raises(ValidationError, match="only decide ai_generated"):
        VerdictEvent.model_validate(_verdict_doc(label="real", model_label="ai_generated", decided_by="provenance", provenance=prov))


def test_signal_records_are_a_closed_tagged_union() -> None:
    ok = {"kind": "c2pa", "status": "found", "strength": "verified", "validation": "valid", "trusted": True}
    assert isinstance(Provenance.model_validate({"policy": "annotate", "signals": [ok]}).signals[0], C2paSignal)
    with pytest.raises(ValidationError):
        Provenance.model_validate({"policy": "annotate", "signals": [{**ok, "kind": "exif"}]})
    with pytest.raises(ValidationError):
        Provenance.model_validate({"policy": "annotate", "signals": [{**ok, "prompt": "a cat"}]})  # no free-form fields


def test_verdict_json_schema_lists_every_field_as_required() -> None:
    """Every field is in every serialized verdict, so code generated from the schema may rely on all of them."""
    doc = json.loads((SCHEMA_DIR / "verdict_event.schema.json").read_text())
    assert set(doc["required"]) == set(VerdictEvent.model_fields)
    assert {"C2paSignal", "IptcSignal", "GeneratorSignal", "WatermarkSignal", "Provenance"} <= set(doc["$defs"])


def test_provenance_decided_verdict_must_carry_the_model_label() -> None:
    wm = {"kind": "watermark", "status": "found", "strength": "watermark", "ai_declared": True}
    prov = {"policy": "decide", "signals": [wm], "decisive": ["watermark"]}
    with pytest.raises(ValidationError, match="model_label is required"):
        VerdictEvent.model_validate(_verdict_doc(label="ai_generated", decided_by="provenance", provenance=prov))
