"""Kafka records to uploads: the two input wire formats.

(a) value = raw image bytes, key = upload id, optional headers ``content-type``
    and ``tenant``.
(b) value = JSON :class:`~schemas.UploadEvent` (image inline as base64, or a URI).

A value is JSON when the ``content-type`` header says ``application/json`` or
its first non-blank byte (after an optional UTF-8 byte-order mark) is ``{`` (no
image format starts with one). Anything wrong raises
:class:`~worker.errors.InputError`, which becomes a dead letter.

A JSON event with the same key twice (at any depth) is refused
(``schema_invalid``): parsers disagree on which one wins (Python's ``json``
takes the last, others the first or refuse), so a producer, a gateway that
validated the first ``image_uri`` and this worker could each read a
different event from the same bytes.

Upload ids are taken exactly as sent or not at all: a key that is not UTF-8, or
an id longer than :data:`MAX_UPLOAD_ID_CHARS`, is refused (``schema_invalid``)
and the dead letter carries no ``upload_id`` rather than a lossy or truncated
one that could collide with a real upload's id (the dead-letter record keeps
the original key bytes, and ``source`` says where the record was).
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from schemas import UPLOAD_SCHEMA_VERSION, ErrorCode, SourceRecord, UploadEvent
from worker.config import inline_event_max_bytes
from worker.errors import InputError

#: Longest upload id accepted (the schemas' ``UploadId`` bound).
MAX_UPLOAD_ID_CHARS = 512
#: Longest tenant accepted, from a header as from an event (``UploadEvent.tenant``'s bound). The tenant
#: is echoed into every outcome; unbounded, a record could make a verdict too large to produce.
MAX_TENANT_CHARS = 256
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class InputRecord:
    """The parts of a Kafka record the pipeline uses (decoupled from the client library)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def from_kafka(cls, rec: Any) -> InputRecord:
        ts = rec.timestamp if getattr(rec, "timestamp", -1) not in (None, -1) else None
        return cls(rec.topic, rec.partition, rec.offset, ts, rec.key, rec.value, tuple(rec.headers or ()))

    @property
    def source(self) -> SourceRecord:
        return SourceRecord(topic=self.topic, partition=self.partition, offset=self.offset, timestamp_ms=self.timestamp_ms)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name and v is not None:
                return v.decode("utf-8", "replace").strip()
        return None

    def key_text(self) -> str | None:
        """The key as an upload id: None when absent, blank or not valid UTF-8 (never a lossy decode)."""
        if not self.key:
            return None
        try:
            text = self.key.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        return text or None

    def key_is_binary(self) -> bool:
        """True for a key that is present but not UTF-8 (refused rather than decoded with replacement characters)."""
        if not self.key:
            return False
        try:
            self.key.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False


@dataclass(frozen=True)
class Upload:
    """A parsed upload: either inline bytes or a URI still to fetch."""

    upload_id: str
    tenant: str | None
    content_type: str | None
    data: bytes | None
    uri: str | None
    submitted_at: datetime | None = None


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads``: the object as a dict, refusing repeated keys instead of keeping the last."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"duplicate key {key[:64]!r} in a JSON object")
        out[key] = value
    return out


def loads_strict(value: bytes) -> Any:
    """``json.loads`` that refuses duplicate keys (raises :class:`DuplicateKeyError`, a ``ValueError``)."""
    return json.loads(value, object_pairs_hook=_unique_keys)


def looks_like_json(rec: InputRecord) -> bool:
    ctype = (rec.header("content-type") or "").lower()
    if ctype.startswith("application/json"):
        return True
    if ctype.startswith("image/"):
        return False
    return (rec.value or b"").removeprefix(_BOM).lstrip()[:1] == b"{"


def encodable(text: str) -> bool:
    """True when ``text`` survives UTF-8 encoding (JSON's ``\\ud800`` escapes decode to lone surrogates that do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def best_effort_ids(rec: InputRecord) -> tuple[str | None, str | None]:
    """Upload id and tenant for a dead letter, from whatever part of the record is readable (and encodable)."""
    upload_id, tenant = rec.key_text(), rec.header("tenant")
    if looks_like_json(rec):
        try:
            doc = loads_strict(rec.value or b"")  # with repeated keys there is no one id to trust: keep the key's
            if isinstance(doc, dict):
                uid = doc.get("upload_id")
                if isinstance(uid, str) and 0 < len(uid) <= MAX_UPLOAD_ID_CHARS and encodable(uid):
                    upload_id = uid  # the event's own id is the one its producer tracks
                t = doc.get("tenant")
                tenant = t if isinstance(t, str) and encodable(t) else tenant
        except (ValueError, RecursionError):
            pass
    if tenant is not None and len(tenant) > MAX_TENANT_CHARS:
        tenant = None
    if upload_id is not None and len(upload_id) > MAX_UPLOAD_ID_CHARS:
        upload_id = None  # a truncated id could name a different upload
    return upload_id, tenant


def parse_record(rec: InputRecord, max_image_bytes: int) -> Upload:
    """Turn a record into an :class:`Upload` or raise ``InputError``."""
    value = rec.value
    if value is None or len(value) == 0:
        raise InputError(ErrorCode.undecodable, "record has no value")
    if looks_like_json(rec):
        return _parse_json(rec, max_image_bytes)
    if rec.key_is_binary():
        raise InputError(ErrorCode.schema_invalid, f"record key is not valid UTF-8 ({len(rec.key or b'')} bytes); the key must be the upload id as text")
    upload_id = rec.key_text()
    if upload_id is None:
        raise InputError(ErrorCode.missing_key, "raw image record without a key (the key must be the upload id)")
    if len(upload_id) > MAX_UPLOAD_ID_CHARS:
        raise InputError(ErrorCode.schema_invalid, f"upload id (record key) is {len(upload_id)} characters, limit {MAX_UPLOAD_ID_CHARS}")
    tenant = rec.header("tenant")
    if tenant is not None and len(tenant) > MAX_TENANT_CHARS:
        raise InputError(ErrorCode.schema_invalid, f"tenant header is {len(tenant)} characters, limit {MAX_TENANT_CHARS}")
    if len(value) > max_image_bytes:
        raise InputError(ErrorCode.too_large, f"image is {len(value)} bytes, limit {max_image_bytes}")
    return Upload(upload_id, tenant, rec.header("content-type"), value, None)


def _parse_json(rec: InputRecord, max_image_bytes: int) -> Upload:
    value = rec.value or b""
    # base64 inflates by 4/3; anything beyond the envelope headroom is too large before we even parse it.
    if len(value) > inline_event_max_bytes(max_image_bytes):
        raise InputError(ErrorCode.too_large, f"JSON event is {len(value)} bytes, too large for a {max_image_bytes}-byte image")
    try:
        doc = loads_strict(value)  # bytes: json detects UTF-8/16/32 and a UTF-8 BOM itself
    except DuplicateKeyError as exc:
        raise InputError(ErrorCode.schema_invalid, f"{exc}: refused rather than guessing which one the producer meant") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(ErrorCode.schema_invalid, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise InputError(ErrorCode.schema_invalid, "malformed JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise InputError(ErrorCode.schema_invalid, f"event must be a JSON object, got {type(doc).__name__}")
    # Checked before validation: a newer producer's event may carry fields this
    # version forbids, and "newer schema" is the more useful answer than "invalid".
    version = _declared_version(doc.get("schema_version", UPLOAD_SCHEMA_VERSION))
    if version is not None and version > UPLOAD_SCHEMA_VERSION:
        raise InputError(ErrorCode.unsupported_schema_version, f"schema_version {version} is newer than the {UPLOAD_SCHEMA_VERSION} this worker reads")
    try:
        event = UploadEvent.model_validate(doc)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors()[:5])
        raise InputError(ErrorCode.schema_invalid, detail) from None
    if event.schema_version > UPLOAD_SCHEMA_VERSION:  # pydantic's lax mode reads 2.0 and "2" as 2
        raise InputError(
            ErrorCode.unsupported_schema_version, f"schema_version {event.schema_version} is newer than the {UPLOAD_SCHEMA_VERSION} this worker reads"
        )
    if event.image_base64 is not None:
        try:
            data = event.image_bytes()
        except (binascii.Error, ValueError) as exc:
            raise InputError(ErrorCode.invalid_base64, f"image_base64 is not valid base64: {exc}") from None
        if len(data) > max_image_bytes:
            raise InputError(ErrorCode.too_large, f"image is {len(data)} bytes, limit {max_image_bytes}")
        return Upload(event.upload_id, event.tenant, event.content_type, data, None, event.submitted_at)
    return Upload(event.upload_id, event.tenant, event.content_type, None, event.image_uri, event.submitted_at)


def _declared_version(raw: Any) -> int | None:
    """The schema_version a producer meant, for int, integral float and numeric-string spellings; None otherwise."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and raw.strip().isdigit() and len(raw) < 20:
        return int(raw.strip())
    return None
