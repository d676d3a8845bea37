"""A bounded TIFF/EXIF directory reader for the few tags provenance needs.

EXIF is a TIFF structure (JPEG APP1, PNG eXIf, WebP EXIF chunk, and a TIFF file
itself). Offsets in it point anywhere, so a hostile block can loop (an IFD
pointing at itself), claim billions of entries or values far past its end. This
reader follows only IFD0 and the EXIF sub-IFD, reads at most
``max_ifd_entries`` entries each, visits an offset once, checks every offset
against the block and bounds every value, and never raises: what it cannot read
is reported in ``problems``.

Pillow's own EXIF reader is not used for this because it parses every tag of
every IFD (MakerNotes included) and because the stage must read metadata of
files Pillow is never asked to open (it runs on the bytes, before decoding).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# IFD0 tags
ORIENTATION = 0x0112
IMAGE_DESCRIPTION = 0x010E
MAKE = 0x010F
MODEL = 0x0110
SOFTWARE = 0x0131
ARTIST = 0x013B
XMP = 0x02BC  # TIFF tag 700: XMLPacket
C2PA = 0xCD41  # TIFF tag 52545: C2PA manifest store (JUMBF)
EXIF_IFD = 0x8769
COMPRESSION = 0x0103
WIDTH = 0x0100
HEIGHT = 0x0101
# EXIF sub-IFD tags
USER_COMMENT = 0x9286

#: Text tags reported to the generator table, by the field name the table uses.
TEXT_TAGS = {SOFTWARE: "Software", IMAGE_DESCRIPTION: "ImageDescription", MAKE: "Make", MODEL: "Model", ARTIST: "Artist"}
_WANTED_IFD0 = {*TEXT_TAGS, ORIENTATION, XMP, C2PA, EXIF_IFD, COMPRESSION, WIDTH, HEIGHT}
_WANTED_EXIF = {USER_COMMENT}

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}


@dataclass
class ExifFields:
    """The tags provenance reads, raw; strings are decoded by the caller."""

    orientation: int | None = None
    compression: int | None = None
    width: int | None = None
    height: int | None = None
    texts: dict[str, bytes] = field(default_factory=dict)
    user_comment: bytes | None = None
    xmp: bytes | None = None
    #: Size of the C2PA manifest store the tag points at (only its size: the SDK reads the file itself).
    c2pa_bytes: int | None = None
    problems: list[str] = field(default_factory=list)


def read_exif(block: bytes, max_entries: int = 512, max_value_bytes: int = 1024 * 1024) -> ExifFields:
    """Read IFD0 (and the EXIF sub-IFD) of a TIFF-structured ``block``; never raises."""
    out = ExifFields()
    if block[:6] == b"Exif\x00\x00":  # some writers keep JPEG's APP1 prefix in PNG eXIf / WebP EXIF
        block = block[6:]
    if len(block) < 8 or block[:4] not in (b"II*\x00", b"MM\x00*"):
        out.problems.append("EXIF block without a TIFF header")
        return out
    end = "<" if block[:2] == b"II" else ">"
    (ifd0,) = struct.unpack(end + "I", block[4:8])
    visited: set[int] = set()
    exif_ifd = _read_ifd(block, end, ifd0, _WANTED_IFD0, out, visited, max_entries, max_value_bytes, top=True)
    if exif_ifd is not None:
        _read_ifd(block, end, exif_ifd, _WANTED_EXIF, out, visited, max_entries, max_value_bytes, top=False)
    return out


def _read_ifd(
    block: bytes, end: str, offset: int, wanted: set[int], out: ExifFields, visited: set[int], max_entries: int, max_value_bytes: int, *, top: bool
) -> int | None:
    """Read one IFD's wanted tags into ``out``; returns the EXIF sub-IFD offset when IFD0 names one."""
    if offset in visited:
        out.problems.append("EXIF IFD loop")
        return None
    visited.add(offset)
    if offset + 2 > len(block):
        out.problems.append("EXIF IFD offset past the end of the block")
        return None
    (count,) = struct.unpack(end + "H", block[offset : offset + 2])
    if count > max_entries:
        out.problems.append(f"EXIF IFD has {count} entries, reading the first {max_entries}")
        count = max_entries
    sub: int | None = None
    for k in range(count):
        at = offset + 2 + 12 * k
        if at + 12 > len(block):
            out.problems.append("EXIF IFD truncated")
            break
        tag, typ, n = struct.unpack(end + "HHI", block[at : at + 8])
        if tag not in wanted:
            continue
        size = _TYPE_SIZES.get(typ)
        if size is None:
            continue
        length = size * n
        if length <= 4:
            raw = block[at + 8 : at + 8 + length]
            pointer = None
        else:
            (pointer,) = struct.unpack(end + "I", block[at + 8 : at + 12])
            if tag == C2PA:  # only the size matters, and a manifest may legitimately be larger than a text value
                if pointer + length <= len(block):
                    out.c2pa_bytes = length
                else:
                    out.problems.append("C2PA tag points past the end of the file")
                continue
            if length > max_value_bytes:
                out.problems.append(f"EXIF tag {tag:#06x} holds {length} bytes, limit {max_value_bytes}")
                continue
            if pointer + length > len(block):
                out.problems.append(f"EXIF tag {tag:#06x} points past the end of the block")
                continue
            raw = block[pointer : pointer + length]
        if tag in (ORIENTATION, COMPRESSION, WIDTH, HEIGHT) and typ in (3, 4) and n >= 1:
            (value,) = struct.unpack(end + ("H" if typ == 3 else "I"), raw[:size])
            if tag == ORIENTATION:
                out.orientation = value
            elif tag == COMPRESSION:
                out.compression = value
            elif tag == WIDTH:
                out.width = value
            else:
                out.height = value
        elif tag in TEXT_TAGS:
            out.texts[TEXT_TAGS[tag]] = raw.rstrip(b"\x00")
        elif tag == USER_COMMENT:
            out.user_comment = raw
        elif tag == XMP:
            out.xmp = raw
        elif tag == C2PA:
            out.c2pa_bytes = length
        elif tag == EXIF_IFD and top and typ in (4, 13) and n == 1:
            (sub,) = struct.unpack(end + "I", raw[:4])
    return sub


def decode_text(raw: bytes) -> str:
    """An EXIF ASCII value (really: whatever encoding the writer used) as text; never raises."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def decode_user_comment(raw: bytes) -> str:
    """EXIF UserComment: an 8-byte character-code prefix, then the text.

    ``UNICODE`` is UCS-2 in an unstated byte order (piexif, which AUTOMATIC1111
    uses, writes big-endian; some tools write little-endian), so the order whose
    decoding has fewer NULs in the high bytes wins.
    """
    code, body = raw[:8], raw[8:]
    if code.startswith(b"UNICODE"):
        body = body[: len(body) // 2 * 2]
        be_zeros = body[0::2].count(0)
        le_zeros = body[1::2].count(0)
        text = body.decode("utf-16-be" if be_zeros >= le_zeros else "utf-16-le", errors="replace")
    elif code.startswith(b"ASCII") or code == b"\x00" * 8:
        text = decode_text(body)
    else:
        text = decode_text(raw)
    return text.rstrip("\x00")
