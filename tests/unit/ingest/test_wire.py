"""parse_record and best_effort_ids on odd and hostile records (pure unit tests, no broker)."""

from __future__ import annotations

import base64
import json

import pytest

from schemas import UPLOAD_SCHEMA_VERSION, ErrorCode
from worker.errors import InputError
from worker.ingest.wire import MAX_UPLOAD_ID_CHARS, InputRecord, best_effort_ids, looks_like_json, parse_record

LIMIT = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100  # parse_record never decodes, so any bytes will do


def rec(value: bytes | None, key: bytes | None = b"up-1", headers: tuple[tuple[str, bytes], ...] = ()) -> InputRecord:
    return InputRecord("uploads", 0, 7, 1_700_000_000_000, key, value, headers)


def event(**fields: object) -> bytes:
    doc: dict[str, object] = {"upload_id": "ev-1", "image_base64": base64.b64encode(PNG).decode()}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def code_of(r: InputRecord, limit: int = LIMIT) -> ErrorCode:
    with pytest.raises(InputError) as info:
        parse_record(r, limit)
    return info.value.code


# -- raw records ------------------------------------------------------------------------------


def test_raw_record_gives_bytes_id_tenant_and_content_type() -> None:
    up = parse_record(rec(PNG, b"up-1", (("tenant", b"t1"), ("Content-Type", b"image/png"))), LIMIT)
    assert (up.upload_id, up.tenant, up.content_type, up.data, up.uri) == ("up-1", "t1", "image/png", PNG, None)


@pytest.mark.parametrize("key", [None, b"", b"   "])
def test_raw_record_without_a_usable_key_is_missing_key(key: bytes | None) -> None:
    assert code_of(rec(PNG, key)) is ErrorCode.missing_key


def test_non_utf8_key_is_refused_not_decoded_lossily() -> None:
    """b'\\xff\\xfe-1' would become '\\ufffd\\ufffd-1', which two different uploads could share."""
    r = rec(PNG, b"\xff\xfe-1")
    assert code_of(r) is ErrorCode.schema_invalid
    assert best_effort_ids(r) == (None, None)


def test_over_long_upload_id_is_refused_and_never_truncated() -> None:
    long_id = "a" * (MAX_UPLOAD_ID_CHARS + 1)
    r = rec(PNG, long_id.encode())
    assert code_of(r) is ErrorCode.schema_invalid
    assert best_effort_ids(r)[0] is None  # truncating would name the upload whose id is 'a' * 512
    assert parse_record(rec(PNG, ("a" * MAX_UPLOAD_ID_CHARS).encode()), LIMIT).upload_id == "a" * MAX_UPLOAD_ID_CHARS
    j = rec(event(upload_id=long_id), key=None)
    assert code_of(j) is ErrorCode.schema_invalid
    assert best_effort_ids(j)[0] is None


def test_raw_payload_over_the_limit_is_too_large_before_anything_else() -> None:
    assert code_of(rec(b"\x00" * (LIMIT + 1))) is ErrorCode.too_large
    assert parse_record(rec(b"\x00" * LIMIT), LIMIT).data is not None


@pytest.mark.parametrize("value", [None, b""])
def test_empty_or_null_value_is_a_dead_letter(value: bytes | None) -> None:
    assert code_of(rec(value)) is ErrorCode.undecodable


def test_image_content_type_wins_over_a_leading_brace() -> None:
    r = rec(b"{not json, an odd image", headers=(("content-type", b"image/png"),))
    assert not looks_like_json(r)
    assert parse_record(r, LIMIT).data == b"{not json, an odd image"


# -- JSON events -------------------------------------------------------------------------------


def test_json_event_inline_and_uri() -> None:
    up = parse_record(rec(event(tenant="t2"), key=None), LIMIT)
    assert (up.upload_id, up.tenant, up.data) == ("ev-1", "t2", PNG)
    up = parse_record(rec(event(image_base64=..., image_uri="https://img.example/x.png"), key=None), LIMIT)
    assert (up.data, up.uri) == (None, "https://img.example/x.png")


def test_json_with_utf8_bom_and_leading_whitespace_is_json() -> None:
    assert parse_record(rec(b"\xef\xbb\xbf  \n" + event()), LIMIT).upload_id == "ev-1"


@pytest.mark.parametrize(
    "value",
    [b"{", b'{"upload_id": "x",}', b"{'single': 'quotes'}", b'{"upload_id": "\xff\xfe"}', b"{" + b"\x00" * 10],
    ids=["unclosed", "trailing-comma", "single-quotes", "bad-utf8", "nul"],
)
def test_malformed_json_is_schema_invalid(value: bytes) -> None:
    assert code_of(rec(value, headers=(("content-type", b"application/json"),))) is ErrorCode.schema_invalid


@pytest.mark.parametrize("value", [b"[1, 2]", b'"a string"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_schema_invalid(value: bytes) -> None:
    assert code_of(rec(value, headers=(("content-type", b"application/json"),))) is ErrorCode.schema_invalid


def test_deeply_nested_json_is_schema_invalid_not_a_crash() -> None:
    """json.loads raises RecursionError (not ValueError) here; uncaught, it took down the whole batch."""
    value = b'{"upload_id": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = rec(value, key=None)
    assert code_of(r) is ErrorCode.schema_invalid
    assert best_effort_ids(r) == (None, None)


@pytest.mark.parametrize("version", [UPLOAD_SCHEMA_VERSION + 1, 99, float(UPLOAD_SCHEMA_VERSION + 1), str(UPLOAD_SCHEMA_VERSION + 1)])
def test_newer_schema_version_is_refused_in_every_spelling(version: object) -> None:
    """pydantic's lax mode reads 2.0 and "2" as 2: those must not slip through as version 1 events."""
    r = rec(event(schema_version=version, unknown_future_field=1), key=None)
    assert code_of(r) is ErrorCode.unsupported_schema_version
    assert best_effort_ids(r)[0] == "ev-1"  # the dead letter still names the upload


@pytest.mark.parametrize("version", [0, -1, "one", None, 1.5])
def test_nonsense_schema_version_is_schema_invalid(version: object) -> None:
    assert code_of(rec(event(schema_version=version), key=None)) is ErrorCode.schema_invalid


def test_current_schema_version_is_accepted() -> None:
    assert parse_record(rec(event(schema_version=UPLOAD_SCHEMA_VERSION), key=None), LIMIT).upload_id == "ev-1"


@pytest.mark.parametrize(
    "b64",
    ["!!!not-base64!!!", "QUJDR===", "QUJDRA", "QUJD\nRA==", "QU JD", "QUJDé==", "QUJD_-==", "===="],
    ids=["junk", "bad-padding", "missing-padding", "newline", "space", "non-ascii", "urlsafe-alphabet", "only-padding"],
)
def test_base64_errors_are_invalid_base64(b64: str) -> None:
    assert code_of(rec(event(image_base64=b64), key=None)) is ErrorCode.invalid_base64


def test_both_or_neither_image_field_is_schema_invalid() -> None:
    assert code_of(rec(event(image_uri="https://img.example/x.png"), key=None)) is ErrorCode.schema_invalid
    assert code_of(rec(event(image_base64=...), key=None)) is ErrorCode.schema_invalid


@pytest.mark.parametrize(
    "fields",
    [{"upload_id": ""}, {"upload_id": 42}, {"upload_id": ...}, {"tenant": "t" * 300}, {"image_base64": 5}, {"extra_field": 1}],
    ids=["empty-id", "int-id", "no-id", "long-tenant", "int-image", "unknown-field"],
)
def test_schema_violations_are_schema_invalid(fields: dict) -> None:
    assert code_of(rec(event(**fields), key=None)) is ErrorCode.schema_invalid


def test_json_event_size_is_checked_before_parsing() -> None:
    """Far more than a base64 image of the limit can take: refused as too_large without json.loads ever running."""
    huge_malformed = b"{" + b" " * (LIMIT * 2)
    assert code_of(rec(huge_malformed, key=None)) is ErrorCode.too_large


def test_base64_image_over_the_limit_is_too_large() -> None:
    limit = 1024
    just_over = base64.b64encode(b"\x00" * (limit + 1)).decode()
    assert code_of(rec(event(image_base64=just_over), key=None), limit) is ErrorCode.too_large
    at_limit = base64.b64encode(b"\x00" * limit).decode()
    assert len(parse_record(rec(event(image_base64=at_limit), key=None), limit).data or b"") == limit


def test_dead_letter_ids_prefer_the_event_and_fall_back_to_the_key() -> None:
    both = rec(event(image_uri="x"), key=b"record-key")  # invalid (two image fields), id readable
    assert best_effort_ids(both) == ("ev-1", None)
    assert best_effort_ids(rec(b"{broken", key=b"record-key")) == ("record-key", None)
    assert best_effort_ids(rec(b"{broken", key=b"k", headers=(("tenant", b"t9"),))) == ("k", "t9")


def test_over_long_tenant_header_is_refused_and_not_echoed() -> None:
    """The tenant is copied into every outcome: unbounded, one record could make its verdict too large to produce."""
    r = rec(PNG, headers=(("tenant", b"t" * 257),))
    assert code_of(r) is ErrorCode.schema_invalid
    assert best_effort_ids(r) == ("up-1", None)
    assert parse_record(rec(PNG, headers=(("tenant", b"t" * 256),)), LIMIT).tenant == "t" * 256


# -- duplicate keys ------------------------------------------------------------------------------


_B64 = base64.b64encode(PNG).decode()


@pytest.mark.parametrize(
    "value",
    [
        b'{"upload_id": "a", "upload_id": "b", "image_base64": "' + _B64.encode() + b'"}',
        b'{"upload_id": "a", "image_uri": "http://img.example/1.png", "image_uri": "http://evil.example/2.png"}',
        b'{"upload_id": "a", "tenant": "t1", "tenant": "t2", "image_base64": "' + _B64.encode() + b'"}',
        b'{"upload_id": "a", "image_base64": "' + _B64.encode() + b'", "extra": {"k": 1, "k": 2}}',  # nested objects too
    ],
)
def test_duplicate_keys_are_schema_invalid_not_last_one_wins(value: bytes) -> None:
    with pytest.raises(InputError) as info:
        parse_record(rec(value, key=None), LIMIT)
    assert info.value.code is ErrorCode.schema_invalid
    assert "duplicate key" in info.value.message


def test_dead_letter_of_a_duplicate_key_event_does_not_pick_one_of_the_ids() -> None:
    value = b'{"upload_id": "a", "upload_id": "b", "image_base64": "' + _B64.encode() + b'"}'
    assert best_effort_ids(rec(value, key=b"record-key")) == ("record-key", None)
    assert best_effort_ids(rec(value, key=None)) == (None, None)


def test_the_same_key_in_sibling_objects_is_not_a_duplicate() -> None:
    value = json.dumps({"upload_id": "a", "image_base64": _B64, "meta": {"a": {"k": 1}, "b": {"k": 2}}}).encode()
    with pytest.raises(InputError) as info:  # UploadEvent forbids extra fields; the point is that it is not "duplicate key"
        parse_record(rec(value, key=None), LIMIT)
    assert "duplicate key" not in info.value.message
    assert parse_record(rec(json.dumps({"upload_id": "a", "image_base64": _B64}).encode(), key=None), LIMIT).upload_id == "a"
