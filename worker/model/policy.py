"""Label policy: the model's score under the bundle's calibration, then provenance evidence under ``--provenance-policy``.

Two independent assessments go into every verdict: the model's ``score`` (and
the ``model_label`` it gives) and the provenance signals. The rules that
combine them (:func:`apply_provenance`) are deliberately one-sided:

* only evidence that is hard to fake by accident decides: a C2PA manifest that
  validates, is signed by a certificate chaining to a configured trust anchor,
  and declares an AI digital source type; or a decoded SD watermark. Either
  labels the image ``ai_generated`` whatever the model says (policy
  ``decide``);
* everything else (unsigned XMP/IPTC, generator text chunks and EXIF, C2PA
  manifests from untrusted signers or failing validation) only annotates: it is
  in the verdict, the label stays the model's, and the score is never touched;
* nothing in metadata can make an image ``real``: a trusted manifest saying
  "digital capture" changes nothing, because metadata is trivially stripped or
  copied and absence or a camera claim proves nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from schemas import Calibration, Label, Thresholds
from schemas.provenance import C2paSignal, DecidedBy, Provenance, ProvenancePolicy, Signal, SignalKind, SignalStatus, WatermarkSignal
from worker.ingest.provenance import DEFAULT_LIMITS, READER_VERSION, ProvenanceLimits, ProvenanceReading, TrustList
from worker.ingest.provenance.generators import TABLE_SHA256
from worker.ingest.provenance.watermark import MATCH_AGREEMENT


def decide(score: float, cal: Calibration) -> Label:
    """>= uncertain_high: AI-generated; < uncertain_low: real; in between: uncertain.

    With no band (low == high == threshold) this is the plain ``score >= threshold``.
    """
    if score >= cal.uncertain_high:
        return Label.ai_generated
    if score < cal.uncertain_low:
        return Label.real
    return Label.uncertain


def thresholds(cal: Calibration) -> Thresholds:
    return Thresholds(
        threshold=cal.threshold,
        uncertain_low=cal.uncertain_low,
        uncertain_high=cal.uncertain_high,
        target_fpr=cal.target_fpr,
        calibrated=cal.calibrated,
    )


def is_decisive(signal: Signal) -> bool:
    """Can this signal alone label an image ai_generated? (See the module docstring.)"""
    if isinstance(signal, C2paSignal):
        return signal.status is SignalStatus.found and signal.validation == "valid" and signal.trusted is True and signal.ai_declared
    if isinstance(signal, WatermarkSignal):
        return signal.status is SignalStatus.found and signal.ai_declared
    return False


def decisive_signals(signals: Iterable[Signal]) -> list[SignalKind]:
    return [s.kind for s in signals if is_decisive(s)]


@dataclass(frozen=True)
class Decision:
    """What goes into the verdict: the label, the model's own label, who decided, and the provenance record."""

    label: Label
    model_label: Label
    decided_by: DecidedBy
    provenance: Provenance


def apply_provenance(score: float, cal: Calibration, reading: ProvenanceReading | None, policy: ProvenancePolicy) -> Decision:
    """Combine the model's score and the provenance reading under ``policy``; the score itself is never changed.

    ``reading`` None means provenance was not read (policy off, or a caller that
    skipped it); under ``annotate`` and ``decide`` the signals are attached, and
    under ``decide`` a decisive signal sets the label to ai_generated.
    """
    model_label = decide(score, cal)
    if policy is ProvenancePolicy.off or reading is None:
        record = Provenance.not_read() if policy is ProvenancePolicy.off else Provenance(policy=policy)
        return Decision(model_label, model_label, DecidedBy.model, record)
    signals = list(reading.signals)
    decisive = decisive_signals(signals) if policy is ProvenancePolicy.decide else []
    if decisive:
        return Decision(Label.ai_generated, model_label, DecidedBy.provenance, Provenance(policy=policy, signals=signals, decisive=decisive))
    return Decision(model_label, model_label, DecidedBy.model, Provenance(policy=policy, signals=signals))


def policy_fingerprint(policy: ProvenancePolicy, trust: TrustList | None, limits: ProvenanceLimits = DEFAULT_LIMITS) -> str:
    """Hash of everything besides the bytes and the bundle that a cached verdict's provenance depends on.

    The policy, the trust anchors, the reader's version, the generator table,
    the watermark threshold and the parser limits: the verdict cache key
    includes it, so changing any of them re-reads provenance instead of serving
    a verdict made under other rules.
    """
    material = {
        "policy": policy.value,
        "trust": trust.fingerprint if trust is not None else None,
        "reader": READER_VERSION,
        "generators": TABLE_SHA256,
        "watermark": MATCH_AGREEMENT,
        "limits": asdict(limits),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
