"""C2PA manifests, read and validated by the c2pa SDK (``c2pa-python``, Rust underneath).

The SDK is attack surface we cannot bound from inside (a call into Rust cannot
be interrupted), so it is only given what the bounded container walk
(:mod:`~worker.ingest.provenance.containers`) already vetted:

* it is called only when the walk found an embedded manifest store (JPEG APP11
  JUMBF, PNG ``caBX``, WebP ``C2PA``, TIFF tag 52545), which is where the SDK
  looks: a file without one costs nothing;
* the store may be at most ``max_c2pa_bytes``, and the file at most
  ``max_bytes`` (the SDK hashes the whole file to check the manifest's hard
  binding, which is linear in the file);
* remote manifests are never fetched (``verify.remote_manifest_fetch`` is on by
  default in the SDK and is switched off here), nor OCSP responses: reading an
  upload never makes a network call;
* any error the SDK raises becomes an ``unreadable`` signal.

``tests/unit/ingest/provenance/test_hostile.py`` feeds it truncated,
bit-flipped, oversized and deeply nested JUMBF and records how long the SDK
takes on each.

Trust: with no trust list the SDK's trust check is switched off and
``trusted`` is null (report only); with one, its anchors are the SDK's only
trust anchors and ``trusted`` is whether the signer chains to one of them.
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import c2pa

from schemas.provenance import AI_DIGITAL_SOURCE_TYPES, normalise_digital_source_type
from worker.ingest.provenance.models import C2paSignal, Container, ProvenanceLimits, SignalStatus, Strength
from worker.ingest.provenance.trust import TrustList

MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff"}
_NO_NETWORK = {"remote_manifest_fetch": False, "ocsp_fetch": False}
_TRUST_FAILURES = {"signingCredential.untrusted"}

_local = threading.local()


def _context(trust: TrustList | None) -> c2pa.Context:
    """One SDK context per thread and trust list (building one takes ~1 ms; sharing one across threads is avoided)."""
    key = trust.fingerprint if trust is not None else None
    cached = getattr(_local, "contexts", None)
    if cached is None:
        cached = _local.contexts = {}
    ctx = cached.get(key)
    if ctx is None:
        if trust is None:
            settings: dict[str, Any] = {"verify": {**_NO_NETWORK, "verify_trust": False}}
        else:
            settings = {"verify": {**_NO_NETWORK, "verify_trust": True}, "trust": {"trust_anchors": trust.pem}}
        ctx = cached[key] = c2pa.Context.from_dict(settings)
    return ctx


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return " ".join(value.split())[:256] or None


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        name, version = _text(info[0].get("name")), _text(info[0].get("version"))
        if name:
            return f"{name} {version}" if version else name
    return _text(manifest.get("claim_generator"))


def _digital_source_types(manifest: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        data = assertion.get("data")
        for action in (data.get("actions") if isinstance(data, dict) else None) or []:
            dst = action.get("digitalSourceType") if isinstance(action, dict) else None
            if isinstance(dst, str) and (v := normalise_digital_source_type(dst)) and v not in out and len(out) < 64:
                out.append(v)
    return out


def read_c2pa(data: bytes, container: Container, limits: ProvenanceLimits, trust: TrustList | None) -> C2paSignal:
    """The C2PA signal of one file; never raises."""
    if container.format not in MIME:
        return C2paSignal(status=SignalStatus.not_checked, detail=f"{container.format or 'unrecognised'} files are not scanned for C2PA")
    if not container.c2pa:
        problems = container.c2pa_problems + [p for p in container.problems if p not in container.c2pa_problems]
        if problems:
            return C2paSignal(status=SignalStatus.unreadable, detail="; ".join(problems)[:300])
        detail = "a remote manifest is referenced (dcterms:provenance) and was not fetched" if container.c2pa_remote else None
        return C2paSignal(status=SignalStatus.absent, detail=detail)
    if container.c2pa_bytes > limits.max_c2pa_bytes:
        return C2paSignal(status=SignalStatus.unreadable, detail=f"manifest store is {container.c2pa_bytes} bytes, limit {limits.max_c2pa_bytes}")
    if len(data) > limits.max_bytes:
        return C2paSignal(status=SignalStatus.unreadable, detail=f"file is {len(data)} bytes, limit {limits.max_bytes}")
    try:
        with c2pa.Reader(MIME[container.format], io.BytesIO(data), None, _context(trust)) as reader:
            state = reader.get_validation_state()
            store = json.loads(reader.json())
    except Exception as exc:  # the SDK raises C2paError subclasses, and anything else is the SDK's failure too
        return C2paSignal(status=SignalStatus.unreadable, detail=f"c2pa: {type(exc).__name__.lstrip('_')}: {' '.join(str(exc).split())[:200]}")
    return _signal(state, store, trust)


def _codes(results: object, key: str) -> list[str]:
    entries = results.get(key) if isinstance(results, dict) else None
    return [e["code"] for e in entries or [] if isinstance(e, dict) and isinstance(e.get("code"), str)]


def _signal(state: str | None, store: dict[str, Any], trust: TrustList | None) -> C2paSignal:
    found = store.get("manifests")
    manifests: dict[str, Any] = found if isinstance(found, dict) else {}
    label = store.get("active_manifest")
    manifest = manifests.get(label) if isinstance(label, str) else None
    if not isinstance(manifest, dict):
        return C2paSignal(status=SignalStatus.unreadable, detail="manifest store has no active manifest")
    results = store.get("validation_results")
    active = results.get("activeManifest") if isinstance(results, dict) else None
    failures = _codes(active, "failure")
    valid = state in ("Valid", "Trusted")
    # Trust is about the signer, validity about the bytes: a tampered file signed by a trusted signer is trusted and invalid.
    trusted = None if trust is None else "signingCredential.trusted" in _codes(active, "success")
    if not valid:
        strength = Strength.claimed
    else:
        strength = Strength.verified if trusted else Strength.signed
    info = manifest.get("signature_info")
    sig: dict[str, Any] = info if isinstance(info, dict) else {}
    dsts = _digital_source_types(manifest)
    ingredients = manifest.get("ingredients")
    return C2paSignal(
        status=SignalStatus.found,
        strength=strength,
        ai_declared=any(v in AI_DIGITAL_SOURCE_TYPES for v in dsts),
        validation="valid" if valid else "invalid",
        failure_codes=[c[:256] for c in failures if trust is not None or c not in _TRUST_FAILURES][:64],
        trusted=trusted,
        signer=_text(sig.get("common_name")),
        issuer=_text(sig.get("issuer")),
        claim_generator=_claim_generator(manifest),
        digital_source_types=dsts,
        ingredients=len(ingredients) if isinstance(ingredients, list) else 0,
    )
