"""Typed records of the provenance stage: its limits, what one file's container holds, and the reading it returns.

The signal records themselves (``C2paSignal``, ``IptcSignal``, ``GeneratorSignal``,
``WatermarkSignal``) are part of the verdict contract and live in
:mod:`schemas.provenance`; they are re-exported here so the stage's callers
import from one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import TypeAdapter

from schemas.provenance import (
    AI_DIGITAL_SOURCE_TYPES,
    C2paSignal,
    GeneratorSignal,
    IptcSignal,
    Signal,
    SignalKind,
    SignalStatus,
    Strength,
    WatermarkSignal,
)

__all__ = [
    "AI_DIGITAL_SOURCE_TYPES",
    "C2paSignal",
    "Container",
    "GeneratorSignal",
    "IptcSignal",
    "ProvenanceLimits",
    "ProvenanceReading",
    "Signal",
    "SignalKind",
    "SignalStatus",
    "Strength",
    "TextField",
    "WatermarkSignal",
]


@dataclass(frozen=True)
class ProvenanceLimits:
    """Bounds on the work provenance parsing may do for one file.

    Every parser in the stage is linear in the bytes it is allowed to look at,
    and these caps bound those bytes, so the stage's cost per image is bounded
    whatever the file claims about itself. What exceeds a cap is not read: the
    signal it might have held becomes ``unreadable`` (never an exception).
    """

    #: Files above this are not parsed at all (the decode step refuses them too).
    max_bytes: int = 10 * 1024 * 1024
    #: JPEG segments, PNG chunks, RIFF chunks walked per file (a 10 MiB PNG in libpng's 8 KiB IDAT chunks has ~1,300).
    max_chunks: int = 8192
    #: One text chunk (or EXIF text value) after inflation; generators' parameters are a few KiB, ComfyUI workflows up to ~100 KiB.
    max_text_bytes: int = 512 * 1024
    #: All text chunks of one file after inflation.
    max_total_text_bytes: int = 2 * 1024 * 1024
    #: One XMP packet (extended XMP reassembled); real packets are 2 to 60 KiB.
    max_xmp_bytes: int = 1024 * 1024
    #: XML element nesting in an XMP packet (real packets nest 5 to 8 deep).
    max_xml_depth: int = 64
    #: XML elements in an XMP packet that names a property provenance reads (parsing costs ~2 us per element).
    max_xml_elements: int = 10_000
    #: Entries read from one TIFF/EXIF IFD, and IFDs followed per file.
    max_ifd_entries: int = 512
    #: Bytes of C2PA manifest store (JUMBF) handed to the c2pa SDK; real stores with thumbnails are 50 KiB to 2 MiB.
    max_c2pa_bytes: int = 8 * 1024 * 1024
    #: Images with fewer pixels are not checked for the watermark (the reference decoder refuses under 256 x 256).
    watermark_min_pixels: int = 256 * 256
    #: 8x8 tiles the watermark decoder reads first (spread over the image); most unmarked images are settled by them.
    watermark_probe_tiles: int = 512
    #: 8x8 tiles the decoder reads at most, when the first look is promising; bounds its cost on large images.
    watermark_max_tiles: int = 4096


@dataclass(frozen=True)
class TextField:
    """One metadata text value, with where it came from (``png:parameters``, ``exif:Software``)."""

    where: str
    key: str
    text: str


@dataclass
class Container:
    """What the bounded container walk found in one file (nothing here is pixel data)."""

    format: str | None = None
    width: int | None = None
    height: int | None = None
    #: Pixels went through a lossy codec (JPEG, lossy WebP, JPEG-in-TIFF).
    lossy: bool = False
    #: Chroma stored at reduced resolution (JPEG 4:2:0/4:2:2, lossy WebP): the DWT-DCT watermark lives in chroma.
    chroma_subsampled: bool = False
    #: EXIF orientation (1..8) as the decode step applies it; 1 when absent.
    orientation: int = 1
    #: XMP packets: (where, bytes).
    xmp: list[tuple[str, bytes]] = field(default_factory=list)
    #: Text values generators write, by field name (``png:parameters``).
    texts: list[TextField] = field(default_factory=list)
    #: C2PA manifest store segments found: (where, bytes of JUMBF).
    c2pa: list[tuple[str, int]] = field(default_factory=list)
    #: Remote manifest references (XMP dcterms:provenance); never fetched.
    c2pa_remote: bool = False
    #: What could not be read, one short line each (becomes a signal's ``detail``).
    problems: list[str] = field(default_factory=list)
    #: Problems that concern text metadata (generator fields), XMP, or C2PA specifically.
    text_problems: list[str] = field(default_factory=list)
    xmp_problems: list[str] = field(default_factory=list)
    c2pa_problems: list[str] = field(default_factory=list)

    @property
    def c2pa_bytes(self) -> int:
        return sum(n for _, n in self.c2pa)


_SIGNALS: TypeAdapter[list[Signal]] = TypeAdapter(list[Signal])


@dataclass(frozen=True)
class ProvenanceReading:
    """Every signal read from one file: a pure function of its bytes (and the trust list), so it can be cached with the verdict."""

    signals: tuple[Signal, ...]

    def signal(self, kind: SignalKind) -> Signal | None:
        return next((s for s in self.signals if s.kind == kind), None)

    def dumps(self) -> bytes:
        """Compact JSON for the verdict cache."""
        return _SIGNALS.dump_json(list(self.signals))

    @classmethod
    def loads(cls, raw: bytes | str) -> ProvenanceReading:
        return cls(tuple(_SIGNALS.validate_json(raw)))

    def to_jsonable(self) -> list[dict[str, object]]:
        """The signals as JSON-ready dicts (one field of a verdict cache entry)."""
        return _SIGNALS.dump_python(list(self.signals), mode="json")

    @classmethod
    def from_jsonable(cls, value: object) -> ProvenanceReading:
        """Back from :meth:`to_jsonable`'s form; ``ValueError`` (pydantic's ``ValidationError``) when it does not fit the schema."""
        return cls(tuple(_SIGNALS.validate_python(value)))
