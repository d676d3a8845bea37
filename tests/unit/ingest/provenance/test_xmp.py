"""IPTC digital source type in XMP: every RDF form, every container, the bounds of the parser."""

from __future__ import annotations

import pytest

from devkit import corpus
from devkit.provenance_images import encode, jpeg_with_extended_xmp, photo, with_xmp, xmp_packet
from schemas.provenance import IptcSignal, SignalStatus, Strength
from worker.ingest.provenance import ProvenanceLimits, read_provenance

FORMS = ("attribute", "resource", "element", "bag")
CONTAINERS = {"JPEG": "jpeg:app1", "PNG": "png:itxt", "WEBP": "webp:xmp", "TIFF": "tiff:700"}


def iptc_of(data: bytes, limits: ProvenanceLimits | None = None) -> IptcSignal:
    sig = read_provenance(data, limits or ProvenanceLimits()).signals[1]
    assert isinstance(sig, IptcSignal)
    return sig


@pytest.mark.parametrize("fmt", CONTAINERS)
@pytest.mark.parametrize("form", FORMS)
def test_ai_source_type_is_read_in_every_form_and_container(fmt: str, form: str) -> None:
    sig = iptc_of(with_xmp(xmp_packet("trainedAlgorithmicMedia", form), fmt))  # type: ignore[arg-type]
    assert sig.status is SignalStatus.found and sig.ai_declared
    assert sig.digital_source_types == ["trainedAlgorithmicMedia"]
    assert sig.containers == [CONTAINERS[fmt]]
    assert sig.strength is Strength.claimed  # anyone can write XMP


def test_compressed_png_itxt_is_read() -> None:
    sig = iptc_of(with_xmp(xmp_packet("compositeWithTrainedAlgorithmicMedia"), "PNG", compressed=True))
    assert sig.digital_source_types == ["compositeWithTrainedAlgorithmicMedia"] and sig.ai_declared


@pytest.mark.parametrize(
    ("value", "expected", "ai"),
    [
        ("algorithmicMedia", "algorithmicMedia", True),
        ("digitalCapture", "digitalCapture", False),
        ("https://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia", "trainedAlgorithmicMedia", True),
        ("https://example.org/my-source", "https://example.org/my-source", False),
    ],
)
def test_values_are_short_codes_or_verbatim(value: str, expected: str, ai: bool) -> None:
    sig = iptc_of(with_xmp(xmp_packet(value, "resource"), "JPEG"))
    assert sig.digital_source_types == [expected] and sig.ai_declared is ai


def test_bare_code_and_the_deprecated_property_are_read() -> None:
    """``DigitalSourcefileType`` (IPTC Extension 1.0/1.1) and a value written as the bare code, not the NewsCodes URI."""
    packet = xmp_packet(None, extra="<Iptc4xmpExt:DigitalSourcefileType>trainedAlgorithmicMedia</Iptc4xmpExt:DigitalSourcefileType>")
    sig = iptc_of(with_xmp(packet, "PNG"))
    assert sig.digital_source_types == ["trainedAlgorithmicMedia"] and sig.ai_declared


def test_xmp_without_the_property_is_absent_and_remembers_where_it_looked() -> None:
    sig = iptc_of(with_xmp(xmp_packet(None, extra="<dc:title>holiday</dc:title>"), "JPEG"))
    assert sig.status is SignalStatus.absent and sig.containers == ["jpeg:app1"]
    assert iptc_of(encode(photo(), "JPEG")).status is SignalStatus.absent


def test_extended_xmp_is_reassembled() -> None:
    """Large packets continue in extended-XMP APP1 segments; the property may be in the extension."""
    extension = xmp_packet("trainedAlgorithmicMedia", "element", extra="<dc:description>" + "x" * 5000 + "</dc:description>")
    sig = iptc_of(jpeg_with_extended_xmp(xmp_packet(None), extension, chunk=1500))
    assert sig.digital_source_types == ["trainedAlgorithmicMedia"]
    assert sig.containers == ["jpeg:app1", "jpeg:app1-extended"]


def test_truncated_extended_xmp_is_unreadable() -> None:
    extension = xmp_packet("trainedAlgorithmicMedia", "element", extra="<dc:description>" + "x" * 5000 + "</dc:description>")
    data = jpeg_with_extended_xmp(xmp_packet(None), extension, chunk=1500)
    last = data.rfind(b"http://ns.adobe.com/xmp/extension/")
    broken = data[: last - 4] + data[last - 4 :].replace(b"http://ns.adobe.com/xmp/extension/", b"http://ns.adobe.com/xmp/extensioX/", 1)
    sig = iptc_of(broken)
    assert sig.status is SignalStatus.unreadable and "incomplete" in (sig.detail or "")


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (corpus.xmp_billion_laughs(), "DTDs and entities are not read"),
        (corpus.xmp_external_entity(), "DTDs and entities are not read"),
        (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description Iptc4xmpExt:DigitalSourceType="x"', "not well-formed"),
    ],
)
def test_hostile_or_broken_xml_is_unreadable(packet: bytes, why: str) -> None:
    sig = iptc_of(corpus.jpeg_with_xmp_packet(packet))
    assert sig.status is SignalStatus.unreadable and why in (sig.detail or "")
    assert "root:" not in (sig.detail or "")  # the external entity (a local file) was never read


def test_depth_and_element_limits() -> None:
    sig = iptc_of(corpus.png_with_xmp_packet(corpus.xmp_deep(200)))
    assert sig.status is SignalStatus.unreadable and "deeper than 64" in (sig.detail or "")
    sig = iptc_of(corpus.png_with_xmp_packet(corpus.xmp_wide(12_000)))
    assert sig.status is SignalStatus.unreadable and "more than 10000 elements" in (sig.detail or "")
    # the same packets within the limits are read
    assert iptc_of(corpus.png_with_xmp_packet(corpus.xmp_deep(30))).digital_source_types == ["trainedAlgorithmicMedia"]
    assert iptc_of(corpus.png_with_xmp_packet(corpus.xmp_wide(5_000))).digital_source_types == ["trainedAlgorithmicMedia"]


def test_packets_that_name_no_property_are_not_parsed() -> None:
    """Camera and editor XMP (most packets) never reach the XML parser; a broken one of those is not 'unreadable'."""
    sig = iptc_of(corpus.jpeg_with_xmp_packet(b"<x:xmpmeta><unclosed>" + b"<a/>" * 10_000))
    assert sig.status is SignalStatus.absent and sig.containers == ["jpeg:app1"]


def test_oversized_packets_are_never_parsed() -> None:
    sig = iptc_of(corpus.webp_with_xmp_packet(b"<x/>" + b" " * (2 * 1024 * 1024)))
    assert sig.status is SignalStatus.unreadable and "limit 1048576" in (sig.detail or "")
    sig = iptc_of(corpus.png_xmp_bomb(8 * 1024 * 1024))
    assert sig.status is SignalStatus.unreadable and "inflates past" in (sig.detail or "")
    sig = iptc_of(corpus.jpeg_extended_xmp_claiming())
    assert sig.status is SignalStatus.unreadable and "declares 2147483648 bytes" in (sig.detail or "")
