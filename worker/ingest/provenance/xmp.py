"""IPTC digital source type from XMP packets, parsed with a hardened, bounded XML parser.

XMP is RDF/XML, and the property can be written three ways, all read here::

    <rdf:Description Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/>
    <Iptc4xmpExt:DigitalSourceType rdf:resource="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/>
    <Iptc4xmpExt:DigitalSourceType>http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia</Iptc4xmpExt:DigitalSourceType>

The IPTC Extension schema's deprecated predecessor ``DigitalSourcefileType``
(IPTC Extension 1.0/1.1) is read too, and a value may be the NewsCodes URI or the
bare code. A ``dcterms:provenance`` property (the pointer C2PA uses for a
remote manifest) is noted, never fetched.

Why not ``xml.etree`` as it is: XMP comes from the uploader, and a packet can
declare entities that expand a billion times, reference external files, or nest
a hundred thousand elements. The parser is defusedxml's expat wrapper (no DTD
entities, no external references), fed to a target that keeps no tree, counts
depth and elements and stops at the limits; packets over ``max_xmp_bytes`` are
never parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from schemas.provenance import AI_DIGITAL_SOURCE_TYPES, normalise_digital_source_type
from worker.ingest.provenance.models import Container, IptcSignal, ProvenanceLimits, SignalStatus, Strength

_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_DCTERMS = "http://purl.org/dc/terms/"
_DST_NAMES = ("DigitalSourceType", "DigitalSourcefileType")
_MAX_VALUES = 32
# A packet that names neither property is not parsed at all (most XMP: camera and editor metadata). Checked in the
# encodings XMP allows (UTF-8, UTF-16 either order); parsing costs ~2 us per element, the search ~1 ns per byte.
_MARKERS = tuple(m.encode(enc) for m in ("DigitalSource", "provenance") for enc in ("utf-8", "utf-16-le", "utf-16-be"))


class _TooBig(Exception):
    pass


@dataclass
class XmpFacts:
    """What one or more XMP packets said."""

    digital_source_types: list[str] = field(default_factory=list)
    remote_manifest: bool = False
    containers: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _is_dst(tag: str) -> bool:
    ns, local = _split(tag)
    return local in _DST_NAMES and "iptc" in ns.lower()


class _Collector:
    """An XMLParser target that keeps only the properties provenance reads, and enforces the limits."""

    def __init__(self, facts: XmpFacts, limits: ProvenanceLimits) -> None:
        self.facts, self.limits = facts, limits
        self.depth = self.elements = 0
        self.capture: list[str] | None = None
        self.capture_chars = 0

    def _value(self, raw: str) -> None:
        value = normalise_digital_source_type(raw)
        if value and value not in self.facts.digital_source_types and len(self.facts.digital_source_types) < _MAX_VALUES:
            self.facts.digital_source_types.append(value)

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self.depth += 1
        self.elements += 1
        if self.depth > self.limits.max_xml_depth:
            raise _TooBig(f"XMP nests deeper than {self.limits.max_xml_depth} elements")
        if self.elements > self.limits.max_xml_elements:
            raise _TooBig(f"XMP has more than {self.limits.max_xml_elements} elements")
        for key, value in attrib.items():
            if _is_dst(key):
                self._value(value)
            elif _split(key) == (_DCTERMS, "provenance"):
                self.facts.remote_manifest = True
        if _is_dst(tag):
            resource = attrib.get(f"{{{_RDF}}}resource")
            if resource:
                self._value(resource)
            else:
                self.capture, self.capture_chars = [], 0
        elif _split(tag) == (_DCTERMS, "provenance"):
            self.facts.remote_manifest = True

    def data(self, text: str) -> None:
        if self.capture is not None and self.capture_chars < 1024:
            self.capture.append(text)
            self.capture_chars += len(text)

    def end(self, tag: str) -> None:
        self.depth -= 1
        if self.capture is not None and _is_dst(tag):
            text = "".join(self.capture).strip()
            if text:  # element form; an rdf:Bag/Seq inside yields its rdf:li texts through the same capture
                for part in text.split():
                    self._value(part)
            self.capture = None

    def close(self) -> None:
        return None


def parse_packets(packets: list[tuple[str, bytes]], limits: ProvenanceLimits) -> XmpFacts:
    """Read every packet (each bounded); never raises."""
    facts = XmpFacts()
    for where, raw in packets[:8]:
        if len(raw) > limits.max_xmp_bytes:
            facts.problems.append(f"{where}: XMP packet is {len(raw)} bytes, limit {limits.max_xmp_bytes}")
            continue
        raw = raw.strip(b"\x00 \t\r\n")
        if not raw:
            continue
        if not any(m in raw for m in _MARKERS):
            if where not in facts.containers:
                facts.containers.append(where)
            continue
        collector = _Collector(facts, limits)
        parser = DefusedXMLParser(target=collector, forbid_dtd=True)
        try:
            parser.feed(raw)
            parser.close()
        except _TooBig as exc:
            facts.problems.append(f"{where}: {exc}")
            continue
        except DefusedXmlException as exc:
            facts.problems.append(f"{where}: XMP refused ({type(exc).__name__}: DTDs and entities are not read)")
            continue
        except (ParseError, ValueError, UnicodeError, RecursionError) as exc:
            facts.problems.append(f"{where}: XMP is not well-formed XML ({type(exc).__name__})")
            continue
        if where not in facts.containers:
            facts.containers.append(where)
    return facts


def iptc_signal(container: Container, facts: XmpFacts) -> IptcSignal:
    """The digital-source-type signal from what the XMP said."""
    problems = container.xmp_problems + facts.problems
    if facts.digital_source_types:
        ai = any(v in AI_DIGITAL_SOURCE_TYPES for v in facts.digital_source_types)
        return IptcSignal(
            status=SignalStatus.found,
            strength=Strength.claimed,
            ai_declared=ai,
            digital_source_types=facts.digital_source_types,
            containers=facts.containers[:16],
            detail=("; ".join(problems))[:300] or None,
        )
    if problems:
        return IptcSignal(status=SignalStatus.unreadable, detail="; ".join(problems)[:300])
    return IptcSignal(status=SignalStatus.absent, containers=facts.containers[:16])
