"""Event contracts: generated JSON Schema files are current, and the models enforce what they promise."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from schemas import DeadLetter, ErrorCode, UploadEvent, VerdictEvent
from schemas.generate import MODELS, SCHEMA_DIR, render, stale_files


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
