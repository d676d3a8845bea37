"""C2PA: images the tests sign themselves (a throwaway CA and an ES256 leaf), read through the worker's provenance stage.

Every case is a real manifest made by the c2pa SDK's Builder and validated by its
Reader: trusted, untrusted (another CA, or no trust list), tampered after signing,
non-AI source types, ingredients, every container the SDK writes.
"""

from __future__ import annotations

import pytest

from devkit.c2pa_signing import make_ca, make_signer, manifest_definition, sign_image, tamper
from devkit.provenance_images import encode, photo, with_xmp, xmp_packet
from schemas.provenance import C2paSignal, SignalStatus, Strength
from worker.ingest.provenance import TrustList, TrustListError, read_provenance

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff"}


@pytest.fixture(scope="module")
def ca():  # type: ignore[no-untyped-def]
    return make_ca("aigis test CA")


@pytest.fixture(scope="module")
def signer(ca):  # type: ignore[no-untyped-def]
    return make_signer(ca, "aigis test signer", "aigis test org")


@pytest.fixture(scope="module")
def trust(ca) -> TrustList:  # type: ignore[no-untyped-def]
    return TrustList.from_pem(ca.cert_pem)


def c2pa_of(data: bytes, trust: TrustList | None) -> C2paSignal:
    sig = read_provenance(data, trust=trust).signals[0]
    assert isinstance(sig, C2paSignal)
    return sig


def original(fmt: str) -> bytes:
    return encode(photo(80, 64), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_trusted_signer_declaring_ai_is_verified(fmt: str, signer, trust) -> None:  # type: ignore[no-untyped-def]
    signed = sign_image(original(fmt), FORMATS[fmt], signer, "trainedAlgorithmicMedia", claim_generator="aigis-test-gen")
    sig = c2pa_of(signed, trust)
    assert sig.status is SignalStatus.found and sig.validation == "valid" and sig.trusted is True
    assert sig.strength is Strength.verified and sig.ai_declared
    assert sig.digital_source_types == ["trainedAlgorithmicMedia"]
    assert sig.signer == "aigis test signer" and sig.issuer == "aigis test org"
    assert sig.claim_generator == "aigis-test-gen 1.0"
    assert sig.failure_codes == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_signer_from_another_ca_is_signed_but_untrusted(fmt: str, signer) -> None:  # type: ignore[no-untyped-def]
    other = TrustList.from_pem(make_ca("someone else's CA").cert_pem)
    sig = c2pa_of(sign_image(original(fmt), FORMATS[fmt], signer), other)
    assert sig.validation == "valid" and sig.trusted is False and sig.strength is Strength.signed
    assert "signingCredential.untrusted" in sig.failure_codes
    assert sig.ai_declared  # still reported: annotates, never decides


def test_without_a_trust_list_trust_is_not_evaluated(signer) -> None:  # type: ignore[no-untyped-def]
    sig = c2pa_of(sign_image(original("JPEG"), "image/jpeg", signer), None)
    assert sig.validation == "valid" and sig.trusted is None and sig.strength is Strength.signed
    assert sig.failure_codes == []  # "untrusted" is not a failure when nothing is trusted by design


@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_changed_after_signing_are_invalid_even_from_a_trusted_signer(fmt: str, signer, trust) -> None:  # type: ignore[no-untyped-def]
    raw = original(fmt)
    sig = c2pa_of(tamper(sign_image(raw, FORMATS[fmt], signer), raw), trust)
    assert sig.status is SignalStatus.found and sig.validation == "invalid"
    assert sig.strength is Strength.claimed
    assert "assertion.dataHash.mismatch" in sig.failure_codes
    assert sig.trusted is True  # the signer is still the trusted one; the bytes are not what it signed


@pytest.mark.parametrize(
    ("declared", "expected", "ai"),
    [
        ("compositeWithTrainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", True),
        ("algorithmicMedia", "algorithmicMedia", True),
        ("digitalCapture", "digitalCapture", False),
        ("https://example.org/sources/own-code", "https://example.org/sources/own-code", False),
    ],
)
def test_digital_source_types_are_iptc_short_codes_or_verbatim(declared: str, expected: str, ai: bool, signer, trust) -> None:  # type: ignore[no-untyped-def]
    sig = c2pa_of(sign_image(original("PNG"), "image/png", signer, declared), trust)
    assert sig.digital_source_types == [expected] and sig.ai_declared is ai
    assert sig.strength is Strength.verified


def test_every_action_is_read_and_ingredients_are_counted(signer, trust) -> None:  # type: ignore[no-untyped-def]
    iptc = "http://cv.iptc.org/newscodes/digitalsourcetype/"
    actions = [
        {"action": "c2pa.created", "digitalSourceType": iptc + "digitalCapture"},
        {"action": "c2pa.edited", "digitalSourceType": iptc + "compositeWithTrainedAlgorithmicMedia"},
        {"action": "c2pa.edited"},
    ]
    parts = [(original("JPEG"), "image/jpeg"), (original("PNG"), "image/png")]
    signed = sign_image(original("JPEG"), "image/jpeg", signer, manifest=manifest_definition(actions=actions), ingredients=parts)
    sig = c2pa_of(signed, trust)
    assert sig.digital_source_types == ["digitalCapture", "compositeWithTrainedAlgorithmicMedia"]
    assert sig.ai_declared and sig.ingredients == 2


def test_manifest_without_source_type_declares_nothing(signer, trust) -> None:  # type: ignore[no-untyped-def]
    """C2PA v2 claims must give c2pa.created a source type (the SDK refuses to sign one without); v1 claims may omit it."""
    manifest = {**manifest_definition(actions=[{"action": "c2pa.created"}]), "claim_version": 1}
    sig = c2pa_of(sign_image(original("JPEG"), "image/jpeg", signer, manifest=manifest), trust)
    assert sig.status is SignalStatus.found and sig.validation == "valid"
    assert sig.digital_source_types == [] and not sig.ai_declared


def test_unsigned_file_has_no_manifest_and_costs_no_sdk_call() -> None:
    sig = c2pa_of(original("JPEG"), None)
    assert sig.status is SignalStatus.absent and sig.strength is Strength.none and sig.detail is None


def test_remote_manifest_reference_is_noted_never_fetched() -> None:
    ref = "<dcterms:provenance>https://example.invalid/manifest.c2pa</dcterms:provenance>"
    sig = c2pa_of(with_xmp(xmp_packet(None, extra=ref), "JPEG"), None)
    assert sig.status is SignalStatus.absent and sig.detail is not None and "not fetched" in sig.detail


def test_gif_and_bmp_are_not_scanned() -> None:
    sig = c2pa_of(encode(photo(), "GIF"), None)
    assert sig.status is SignalStatus.not_checked and "GIF" in (sig.detail or "")


def test_trust_list_parses_and_fingerprints_the_anchor_set(ca) -> None:  # type: ignore[no-untyped-def]
    other = make_ca("second CA")
    one = TrustList.from_pem(ca.cert_pem)
    both = TrustList.from_pem(ca.cert_pem + other.cert_pem)
    reordered = TrustList.from_pem(other.cert_pem + b"\n" + ca.cert_pem)
    assert len(one) == 1 and len(both) == 2
    assert both.fingerprint == reordered.fingerprint != one.fingerprint


def test_trust_list_refuses_what_is_not_a_certificate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TrustListError, match="no PEM certificate"):
        TrustList.from_pem(b"not a pem")
    with pytest.raises(TrustListError, match="cannot parse"):
        TrustList.from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(TrustListError, match="cannot read"):
        TrustList.from_file(tmp_path / "missing.pem")


def test_trusted_by_one_list_is_untrusted_by_another(signer, trust) -> None:  # type: ignore[no-untyped-def]
    """The per-thread SDK context is keyed by the trust list: switching lists switches the answer."""
    signed = sign_image(original("JPEG"), "image/jpeg", signer)
    other = TrustList.from_pem(make_ca("x").cert_pem)
    assert [c2pa_of(signed, t).trusted for t in (trust, other, None, trust)] == [True, False, None, True]
