"""Provenance evidence carried in a verdict: what the image's own bytes say about where it came from.

Four kinds of signal, one typed record each (the ``kind`` field tells them
apart). Every verdict lists every kind the worker looked for, with a
``status`` that separates "looked, nothing there" (``absent``) from "could not
look" (``not_checked``) and "something was there but could not be read within
the limits" (``unreadable``): absence of provenance proves nothing, and a
consumer must be able to tell it from a check that never ran.

``strength`` says how much a signal can be trusted:

* ``verified``: a C2PA manifest whose signature and hashes are valid and whose
  signer chains to one of the operator's trust anchors. Forging one needs the
  signer's private key.
* ``signed``: the same, but the signer is not on the trust list (or no list is
  configured). The bytes are intact, but anybody can sign with a certificate of
  their own.
* ``watermark``: an invisible watermark decoded from the pixels. Nobody adds one
  by accident, but it can be embedded deliberately into any image.
* ``claimed``: plain metadata (XMP, text chunks, EXIF) or a manifest that failed
  validation: any tool can write or strip it.
* ``none``: nothing was found.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The IPTC NewsCodes digital source types that declare AI (or algorithmic) generation.
AI_DIGITAL_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", "algorithmicMedia"})

_Short = Annotated[str, Field(max_length=256)]


class _Record(BaseModel):
    # Every field is in every serialized record, so the JSON Schema lists them all as required.
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_serialization_defaults_required=True)


class SignalKind(StrEnum):
    """The four provenance signals the worker reads."""

    c2pa = "c2pa"
    iptc = "iptc_digital_source_type"
    generator = "generator_metadata"
    watermark = "watermark"


class SignalStatus(StrEnum):
    """What looking for a signal gave."""

    found = "found"
    absent = "absent"
    unreadable = "unreadable"
    not_checked = "not_checked"


class Strength(StrEnum):
    """How far a found signal can be trusted (see the module docstring)."""

    verified = "verified"
    signed = "signed"
    watermark = "watermark"
    claimed = "claimed"
    none = "none"


class DecidedBy(StrEnum):
    """Who set the verdict's label."""

    model = "model"
    provenance = "provenance"


class ProvenancePolicy(StrEnum):
    """How provenance takes part in the verdict (``--provenance-policy``)."""

    off = "off"
    annotate = "annotate"
    decide = "decide"


class _Signal(_Record):
    status: SignalStatus
    strength: Strength = Strength.none
    ai_declared: bool = Field(False, description="The signal says the image was made (or composited) by an AI or algorithmic generator.")
    detail: str | None = Field(None, max_length=300, description="Why the signal is unreadable or was not checked; short, never image content.")


class C2paSignal(_Signal):
    """A C2PA manifest store embedded in the file (JUMBF), validated by the c2pa SDK."""

    kind: Literal[SignalKind.c2pa] = SignalKind.c2pa
    validation: Literal["valid", "invalid"] | None = Field(None, description="Signature, certificate and hash checks of the active manifest.")
    failure_codes: list[_Short] = Field(default_factory=list, max_length=64, description="C2PA validation status codes that failed, verbatim.")
    trusted: bool | None = Field(None, description="Signer chains to a configured trust anchor; null when no trust list is configured (report only).")
    signer: _Short | None = Field(None, description="Common name of the signing certificate.")
    issuer: _Short | None = Field(None, description="Organisation of the signing certificate.")
    claim_generator: _Short | None = Field(None, description="The tool that wrote the manifest (claim generator), as it names itself.")
    digital_source_types: list[_Short] = Field(
        default_factory=list, max_length=64, description="Every action's digitalSourceType: IPTC codes by short name, anything else verbatim."
    )
    ingredients: int = Field(0, ge=0, description="Ingredients (source assets) the active manifest lists.")


class IptcSignal(_Signal):
    """``Iptc4xmpExt:DigitalSourceType`` in the file's XMP packet(s)."""

    kind: Literal[SignalKind.iptc] = SignalKind.iptc
    digital_source_types: list[_Short] = Field(default_factory=list, max_length=64)
    containers: list[_Short] = Field(default_factory=list, max_length=16, description="Where the XMP was found, e.g. jpeg:app1, png:itxt, webp:xmp, tiff:700.")


class GeneratorSignal(_Signal):
    """Text chunks or EXIF fields an image generator writes (never the prompt)."""

    kind: Literal[SignalKind.generator] = SignalKind.generator
    generator: _Short | None = Field(None, description="The generator the metadata names, e.g. ComfyUI, AUTOMATIC1111 Stable Diffusion WebUI.")
    model: _Short | None = Field(None, description="The model (checkpoint) name where the generator writes one.")
    rule: _Short | None = Field(None, description="Id of the pattern-table entry that matched.")
    fields: list[_Short] = Field(default_factory=list, max_length=16, description="The metadata fields that matched, e.g. png:parameters, exif:Software.")


class WatermarkSignal(_Signal):
    """The DWT-DCT invisible watermark of Stable Diffusion's reference scripts."""

    kind: Literal[SignalKind.watermark] = SignalKind.watermark
    scheme: Literal["dwtDct"] = "dwtDct"
    payload: _Short | None = Field(None, description="Which known payload matched: sd1 (StableDiffusionV1), sd2 (SDV2) or sdxl.")
    agreement: float | None = Field(
        None, ge=0.0, le=1.0, description="Balanced fraction of 8x8 tiles carrying the payload's bit (0.5 = chance); the best payload's."
    )
    bit_errors: int | None = Field(None, ge=0, description="Payload bits the majority vote got wrong (the reference decoder's reading).")
    tiles: int | None = Field(None, ge=0, description="8x8 pixel tiles read.")


Signal = Annotated[C2paSignal | IptcSignal | GeneratorSignal | WatermarkSignal, Field(discriminator="kind")]


class Provenance(_Record):
    """Every provenance signal read for an upload, and which of them set the label."""

    policy: ProvenancePolicy = Field(description="The --provenance-policy the verdict was made under; off means nothing was read.")
    signals: list[Signal] = Field(default_factory=list, max_length=16, description="One record per signal kind looked for.")
    decisive: list[SignalKind] = Field(
        default_factory=list, max_length=4, description="Signals that set the label (empty unless the verdict's decided_by is provenance)."
    )

    @classmethod
    def not_read(cls) -> Provenance:
        """The record for a verdict made without reading provenance (policy off)."""
        return cls(policy=ProvenancePolicy.off)

    def signal(self, kind: SignalKind) -> C2paSignal | IptcSignal | GeneratorSignal | WatermarkSignal | None:
        return next((s for s in self.signals if s.kind == kind), None)


def normalise_digital_source_type(value: str) -> str:
    """An IPTC NewsCodes URI to its short code (``trainedAlgorithmicMedia``); anything else verbatim (trimmed, bounded)."""
    v = value.strip()
    for prefix in ("http://cv.iptc.org/newscodes/digitalsourcetype/", "https://cv.iptc.org/newscodes/digitalsourcetype/"):
        if v.startswith(prefix):
            v = v[len(prefix) :]
            break
    return v[:256]


__all__ = [
    "AI_DIGITAL_SOURCE_TYPES",
    "C2paSignal",
    "DecidedBy",
    "GeneratorSignal",
    "IptcSignal",
    "Provenance",
    "ProvenancePolicy",
    "Signal",
    "SignalKind",
    "SignalStatus",
    "Strength",
    "WatermarkSignal",
    "normalise_digital_source_type",
]
