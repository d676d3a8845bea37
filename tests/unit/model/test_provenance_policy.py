"""The provenance policy in each direction, on readings of real files the tests sign, tag and watermark themselves."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from devkit import provenance_images as pi
from devkit.c2pa_signing import make_ca, make_signer, sign_image, tamper
from devkit.watermark import embed
from export.photos import load_rgb, photo_paths
from schemas import BundleRef, CacheStatus, Calibration, Label, Timings, VerdictEvent
from schemas.provenance import DecidedBy, ProvenancePolicy, SignalKind
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.provenance import ProvenanceLimits, ProvenanceReading, TrustList, read_provenance
from worker.model.policy import apply_provenance, policy_fingerprint, thresholds

CAL = Calibration(threshold=0.5, uncertain_low=0.3, uncertain_high=0.7, calibrated=True)
LOW, MID, HIGH = 0.05, 0.5, 0.95  # model says real, uncertain, ai_generated
CA = make_ca()
SIGNER = make_signer(CA)
TRUST = TrustList.from_pem(CA.cert_pem)


def reading(data: bytes, trust: TrustList | None = TRUST) -> ProvenanceReading:
    return read_provenance(data, trust=trust, image=decode_image(data, DecodeLimits()).image)


def jpeg() -> bytes:
    return pi.encode(pi.photo(80, 64), "JPEG")


def watermarked_png() -> bytes:
    rgb = np.asarray(load_rgb(photo_paths(include_grey=False)[0]))
    buf = io.BytesIO()
    Image.fromarray(embed(rgb, "sdxl")).save(buf, "PNG")
    return buf.getvalue()


def verdict(score: float, r: ProvenanceReading | None, policy: ProvenancePolicy) -> VerdictEvent:
    """The decision, as the pipeline will put it in a verdict (the schema's validator checks its consistency)."""
    d = apply_provenance(score, CAL, r, policy)
    return VerdictEvent(
        upload_id="u",
        content_sha256="0" * 64,
        label=d.label,
        score=score,
        model_label=d.model_label,
        decided_by=d.decided_by,
        provenance=d.provenance,
        thresholds=thresholds(CAL),
        bundle=BundleRef(name="b", version="1", sha256="1" * 64),
        cache=CacheStatus.miss,
        timings=Timings(queue_ms=0, decode_ms=0, inference_ms=0, total_ms=0),
    )


@pytest.mark.parametrize("score", [LOW, MID, HIGH])
def test_trusted_valid_ai_manifest_labels_ai_generated_whatever_the_model_says(score: float) -> None:
    v = verdict(score, reading(sign_image(jpeg(), "image/jpeg", SIGNER, "trainedAlgorithmicMedia")), ProvenancePolicy.decide)
    assert v.label is Label.ai_generated and v.decided_by is DecidedBy.provenance
    assert v.provenance.decisive == [SignalKind.c2pa]
    assert v.score == score  # the model's score is never touched


@pytest.mark.parametrize("score", [LOW, MID])
def test_watermark_match_labels_ai_generated(score: float) -> None:
    v = verdict(score, reading(watermarked_png()), ProvenancePolicy.decide)
    assert v.label is Label.ai_generated and v.provenance.decisive == [SignalKind.watermark] and v.model_label is not Label.ai_generated


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: sign_image(jpeg(), "image/jpeg", make_signer(make_ca("stranger")), "trainedAlgorithmicMedia"), id="untrusted-manifest"),
        pytest.param(lambda: tamper(sign_image(raw := jpeg(), "image/jpeg", SIGNER, "trainedAlgorithmicMedia"), raw), id="tampered-manifest"),
        pytest.param(lambda: pi.with_xmp(pi.xmp_packet("trainedAlgorithmicMedia"), "PNG"), id="xmp"),
        pytest.param(lambda: pi.png_with_text({"parameters": pi.a1111_parameters()}), id="a1111"),
        pytest.param(lambda: pi.with_exif("JPEG", software="Midjourney"), id="exif-software"),
    ],
)
@pytest.mark.parametrize("score", [LOW, MID, HIGH])
def test_weak_signals_annotate_and_never_change_the_label(data, score: float) -> None:  # type: ignore[no-untyped-def]
    r = reading(data())
    assert any(s.ai_declared for s in r.signals)  # the file does claim AI
    v = verdict(score, r, ProvenancePolicy.decide)
    assert v.decided_by is DecidedBy.model and v.label is v.model_label and v.provenance.decisive == []
    assert v.provenance.signals == list(r.signals)


def test_untrusted_manifest_is_decisive_only_once_its_ca_is_trusted() -> None:
    stranger = make_ca("stranger")
    data = sign_image(jpeg(), "image/jpeg", make_signer(stranger), "trainedAlgorithmicMedia")
    assert verdict(LOW, reading(data, TRUST), ProvenancePolicy.decide).label is Label.real
    assert verdict(LOW, reading(data, None), ProvenancePolicy.decide).label is Label.real  # no trust list: report only
    assert verdict(LOW, reading(data, TrustList.from_pem(stranger.cert_pem)), ProvenancePolicy.decide).label is Label.ai_generated


@pytest.mark.parametrize("score", [MID, HIGH])
def test_nothing_in_metadata_makes_an_image_real(score: float) -> None:
    """A trusted, valid manifest saying 'digital capture' (a camera) leaves the model's uncertain/ai_generated label alone."""
    v = verdict(score, reading(sign_image(jpeg(), "image/jpeg", SIGNER, "digitalCapture")), ProvenancePolicy.decide)
    assert v.label is v.model_label is not Label.real and v.decided_by is DecidedBy.model
    v = verdict(score, reading(pi.with_xmp(pi.xmp_packet("digitalCapture"), "JPEG")), ProvenancePolicy.decide)
    assert v.label is not Label.real


def test_annotate_attaches_signals_and_leaves_the_label_to_the_model() -> None:
    r = reading(sign_image(jpeg(), "image/jpeg", SIGNER, "trainedAlgorithmicMedia"))
    v = verdict(LOW, r, ProvenancePolicy.annotate)
    assert v.label is Label.real and v.decided_by is DecidedBy.model and v.provenance.decisive == []
    assert v.provenance.policy is ProvenancePolicy.annotate and v.provenance.signals == list(r.signals)


def test_off_reads_and_attaches_nothing() -> None:
    r = reading(sign_image(jpeg(), "image/jpeg", SIGNER, "trainedAlgorithmicMedia"))
    for given in (r, None):
        v = verdict(LOW, given, ProvenancePolicy.off)
        assert v.label is Label.real and v.provenance.policy is ProvenancePolicy.off and v.provenance.signals == []


def test_no_reading_under_decide_is_the_model_alone() -> None:
    v = verdict(HIGH, None, ProvenancePolicy.decide)
    assert v.label is Label.ai_generated and v.decided_by is DecidedBy.model and v.provenance.signals == []


def test_fingerprint_changes_with_policy_trust_and_limits_only() -> None:
    base = policy_fingerprint(ProvenancePolicy.decide, TRUST)
    assert base == policy_fingerprint(ProvenancePolicy.decide, TrustList.from_pem(CA.cert_pem))  # same anchors, new object
    others = {
        policy_fingerprint(ProvenancePolicy.annotate, TRUST),
        policy_fingerprint(ProvenancePolicy.off, TRUST),
        policy_fingerprint(ProvenancePolicy.decide, None),
        policy_fingerprint(ProvenancePolicy.decide, TrustList.from_pem(CA.cert_pem + make_ca("second").cert_pem)),
        policy_fingerprint(ProvenancePolicy.decide, TRUST, ProvenanceLimits(max_chunks=10)),
    }
    assert base not in others and len(others) == 5
    assert len(base) == 64 and int(base, 16) >= 0
