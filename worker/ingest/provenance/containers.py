"""One bounded walk over a file's container structure, collecting the metadata provenance reads.

JPEG segments, PNG chunks, RIFF (WebP) chunks and the TIFF IFD are walked by
their length fields, never by scanning pixel data, so the walk costs
microseconds per segment and a bounded number of segments
(:attr:`~worker.ingest.provenance.models.ProvenanceLimits.max_chunks`). What the
walk keeps:

* XMP packets (JPEG APP1 standard and extended XMP, PNG iTXt/tEXt/zTXt
  ``XML:com.adobe.xmp``, WebP ``XMP `` chunk, TIFF tag 700);
* EXIF blocks (JPEG APP1, PNG eXIf, WebP ``EXIF``, TIFF IFD0) read by
  :mod:`worker.ingest.provenance.exif`;
* text chunks whose keyword the generator table asks for (only those are
  inflated, each at most ``max_text_bytes``: a zTXt bomb costs its cap, not its
  claim);
* where a C2PA manifest store (JUMBF) sits and its size (JPEG APP11, PNG caBX,
  WebP C2PA, TIFF tag 52545), which decides whether the c2pa SDK is called at
  all;
* the facts the watermark check needs: format, size, lossy or not, chroma
  subsampling, EXIF orientation.

Nothing here raises on hostile data: truncation, impossible lengths and caps
reached end up as one-line problems in the :class:`Container`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection

from worker.ingest.provenance import exif as exif_reader
from worker.ingest.provenance.models import Container, ProvenanceLimits, TextField

XMP_KEYWORD = "XML:com.adobe.xmp"
_XMP_STD = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_EXT = b"http://ns.adobe.com/xmp/extension/\x00"
_EXIF = b"Exif\x00\x00"
# JPEG start-of-frame markers (all but DHT C4, JPG C8 and DAC CC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_TIFF_LOSSY_COMPRESSION = {6, 7, 34892, 34712, 50001}  # old JPEG, JPEG, lossy JPEG (DNG), JPEG 2000, WebP


def sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "HEIF"
    return None


def walk(data: bytes, limits: ProvenanceLimits, text_keys: Collection[str]) -> Container:
    """Walk ``data``'s container; ``text_keys`` are the PNG text keywords worth inflating (``parameters``, ``prompt``...)."""
    c = Container(format=sniff(data))
    if len(data) > limits.max_bytes:
        c.problems.append(f"file is {len(data)} bytes, over the provenance limit of {limits.max_bytes}")
        return c
    try:
        if c.format == "JPEG":
            _walk_jpeg(data, limits, c)
        elif c.format == "PNG":
            _walk_png(data, limits, c, set(text_keys))
        elif c.format == "WEBP":
            _walk_webp(data, limits, c)
        elif c.format == "TIFF":
            _read_exif_block(data, "tiff", limits, c, whole_file=True)
        elif c.format == "GIF" and len(data) >= 10:
            c.width, c.height = struct.unpack("<HH", data[6:10])
        elif c.format == "BMP" and len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            c.width, c.height = abs(w), abs(h)
    except (struct.error, IndexError, ValueError) as exc:  # a length field we did not bound: report, never crash
        c.problems.append(f"{c.format} structure unreadable: {type(exc).__name__}")
    return c


# -- JPEG --------------------------------------------------------------------------------------------------------


def _stopped(c: Container, why: str) -> None:
    """The walk stopped at a cap before the end of the metadata: whatever follows was not read, so no signal may say "absent"."""
    for problems in (c.problems, c.text_problems, c.xmp_problems):
        problems.append(why)


def _walk_jpeg(data: bytes, limits: ProvenanceLimits, c: Container) -> None:
    i, n, segments = 2, len(data), 0
    extended: dict[bytes, tuple[int, dict[int, bytes]]] = {}  # extended XMP chunks by GUID: full length, {offset: bytes}
    while i + 4 <= n:
        if data[i] != 0xFF:
            c.problems.append("JPEG segment marker missing")
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: all metadata sits before the first scan
            break
        segments += 1
        if segments > limits.max_chunks:
            _stopped(c, f"JPEG has more than {limits.max_chunks} segments before its first scan")
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2 or i + 2 + length > n:
            c.problems.append("JPEG segment runs past the end of the file")
            break
        payload = data[i + 4 : i + 2 + length]
        if marker == 0xE1:
            if payload.startswith(_EXIF):
                _read_exif_block(payload[len(_EXIF) :], "jpeg:app1-exif", limits, c)
            elif payload.startswith(_XMP_STD):
                c.xmp.append(("jpeg:app1", payload[len(_XMP_STD) :]))
            elif payload.startswith(_XMP_EXT) and len(payload) >= len(_XMP_EXT) + 40:
                body = payload[len(_XMP_EXT) :]
                guid, (full, offset) = body[:32], struct.unpack(">II", body[32:40])
                if full > limits.max_xmp_bytes:
                    c.xmp_problems.append(f"extended XMP declares {full} bytes, limit {limits.max_xmp_bytes}")
                else:
                    extended.setdefault(guid, (full, {}))[1][offset] = body[40:]
        elif marker == 0xEB and payload[:2] == b"JP" and len(payload) >= 16:
            # APP11 JUMBF: "JP", box instance (2), packet sequence (4), then the box (LBox, TBox) in the first packet
            c.c2pa.append(("jpeg:app11", len(payload) - 8))
        elif marker in _SOF and len(payload) >= 6:
            c.height, c.width = struct.unpack(">HH", payload[1:5])
            c.lossy = marker not in (0xC3, 0xC7, 0xCB, 0xCF)  # lossless JPEG processes are vanishingly rare
            comps = payload[5]
            factors = [payload[6 + 3 * k + 1] for k in range(comps) if 6 + 3 * k + 1 < len(payload)]
            c.chroma_subsampled = comps >= 3 and len(factors) >= 3 and any(f != factors[0] for f in factors[1:])
        i += 2 + length
    for guid, (full, parts) in extended.items():
        joined = b"".join(parts[k] for k in sorted(parts))
        if len(joined) == full:
            c.xmp.append(("jpeg:app1-extended", joined))
        else:
            c.xmp_problems.append(f"extended XMP {guid[:8].decode('latin-1')}... incomplete ({len(joined)} of {full} bytes)")


# -- PNG ---------------------------------------------------------------------------------------------------------


def _walk_png(data: bytes, limits: ProvenanceLimits, c: Container, text_keys: set[str]) -> None:
    i, n, chunks, text_budget = 8, len(data), 0, limits.max_total_text_bytes
    while i + 8 <= n:
        chunks += 1
        if chunks > limits.max_chunks:
            _stopped(c, f"PNG has more than {limits.max_chunks} chunks; the rest were not read")
            break
        length, kind = struct.unpack(">I4s", data[i : i + 8])
        body_at = i + 8
        if length > n - body_at:
            c.problems.append(f"PNG chunk {kind!r} runs past the end of the file")
            break
        if kind == b"IHDR" and length >= 8:
            c.width, c.height = struct.unpack(">II", data[body_at : body_at + 8])
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            text_budget = _png_text(data[body_at : body_at + length], kind, limits, c, text_keys, text_budget)
        elif kind == b"eXIf":
            _read_exif_block(data[body_at : body_at + length], "png:exif", limits, c)
        elif kind == b"caBX":
            c.c2pa.append(("png:caBX", length))
        elif kind == b"IEND":
            break
        i = body_at + length + 4  # + CRC (not checked: provenance never trusts a chunk for being well-formed)


def _png_text(body: bytes, kind: bytes, limits: ProvenanceLimits, c: Container, text_keys: set[str], budget: int) -> int:
    """Decode one tEXt/zTXt/iTXt chunk if its keyword is wanted; returns the text budget left."""
    nul = body.find(b"\x00", 0, 80)
    if nul < 1:
        return budget
    key = body[:nul].decode("latin-1")
    is_xmp = key == XMP_KEYWORD
    if not is_xmp and key not in text_keys:
        return budget  # never inflated: a bomb under an unknown keyword costs nothing
    rest = body[nul + 1 :]
    compressed, utf8 = False, False
    if kind == b"zTXt":
        compressed, rest = True, rest[1:]
    elif kind == b"iTXt":
        if len(rest) < 2:
            return budget
        compressed, utf8 = rest[0] == 1, True
        lang_end = rest.find(b"\x00", 2)
        trans_end = rest.find(b"\x00", lang_end + 1) if lang_end >= 0 else -1
        if trans_end < 0:
            c.text_problems.append(f"iTXt {key!r} malformed")
            return budget
        rest = rest[trans_end + 1 :]
    cap = min(limits.max_xmp_bytes if is_xmp else limits.max_text_bytes, max(budget, 0))
    raw, problem = _inflate(rest, cap) if compressed else ((rest, None) if len(rest) <= cap else (b"", f"holds {len(rest)} bytes, over the limit of {cap}"))
    where = f"png:{kind.decode('ascii').lower()}"
    if problem is not None:
        msg = f"{kind.decode()} chunk {key[:40]!r} {problem}"
        (c.xmp_problems if is_xmp else c.text_problems).append(msg)
        return budget - cap
    if is_xmp:
        c.xmp.append((where, raw))
        return budget
    text = raw.decode("utf-8", errors="replace") if utf8 else raw.decode("latin-1")
    c.texts.append(TextField(where=f"png:{key}", key=key, text=text))
    return budget - len(raw)


def _inflate(data: bytes, cap: int) -> tuple[bytes, str | None]:
    """zlib-inflate at most ``cap`` bytes: returns (bytes, None) or (b"", why) for a stream that inflates past the cap or is corrupt."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, cap + 1)
    except zlib.error:
        return b"", "is not valid zlib data"
    if len(out) > cap:
        return b"", f"inflates past the limit of {cap} bytes"
    return out, None


# -- WebP --------------------------------------------------------------------------------------------------------


def _walk_webp(data: bytes, limits: ProvenanceLimits, c: Container) -> None:
    (riff_size,) = struct.unpack("<I", data[4:8])
    n = min(len(data), 8 + riff_size)
    i, chunks = 12, 0
    while i + 8 <= n:
        chunks += 1
        if chunks > limits.max_chunks:
            _stopped(c, f"WebP has more than {limits.max_chunks} chunks; the rest were not read")
            break
        kind, length = data[i : i + 4], struct.unpack("<I", data[i + 4 : i + 8])[0]
        body_at = i + 8
        if length > n - body_at:
            c.problems.append(f"WebP chunk {kind!r} runs past the end of the file")
            break
        body = data[body_at : body_at + length]
        if kind == b"VP8X" and length >= 10:
            c.width = int.from_bytes(body[4:7], "little") + 1
            c.height = int.from_bytes(body[7:10], "little") + 1
        elif kind == b"VP8 ":
            c.lossy = c.chroma_subsampled = True
            if length >= 10 and body[3:6] == b"\x9d\x01\x2a" and c.width is None:
                c.width = int.from_bytes(body[6:8], "little") & 0x3FFF
                c.height = int.from_bytes(body[8:10], "little") & 0x3FFF
        elif kind == b"VP8L" and length >= 5 and body[0] == 0x2F and c.width is None:
            bits = int.from_bytes(body[1:5], "little")
            c.width, c.height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif kind == b"ANMF" and length >= 24 and body[16:20] == b"VP8 ":
            c.lossy = c.chroma_subsampled = True
        elif kind == b"EXIF":
            _read_exif_block(body, "webp:exif", limits, c)
        elif kind == b"XMP ":
            if length > limits.max_xmp_bytes:
                c.xmp_problems.append(f"WebP XMP chunk is {length} bytes, limit {limits.max_xmp_bytes}")
            else:
                c.xmp.append(("webp:xmp", body))
        elif kind == b"C2PA":
            c.c2pa.append(("webp:c2pa", length))
        i = body_at + length + (length & 1)


# -- EXIF / TIFF -------------------------------------------------------------------------------------------------


def _read_exif_block(block: bytes, where: str, limits: ProvenanceLimits, c: Container, *, whole_file: bool = False) -> None:
    fields = exif_reader.read_exif(block, limits.max_ifd_entries, max(limits.max_text_bytes, limits.max_xmp_bytes))
    if fields.problems:
        c.text_problems.extend(f"{where}: {p}" for p in fields.problems[:4])
        if whole_file:  # a TIFF's IFD0 is its structure: what it cannot hold (a C2PA tag, XMP) is unreadable, not absent
            c.problems.extend(f"{where}: {p}" for p in fields.problems[:4])
            c.c2pa_problems.extend(f"{where}: {p}" for p in fields.problems[:4])
            c.xmp_problems.extend(f"{where}: {p}" for p in fields.problems[:4])
    if fields.orientation is not None and 1 <= fields.orientation <= 8:
        c.orientation = fields.orientation
    for key, raw in fields.texts.items():
        c.texts.append(TextField(where=f"exif:{key}", key=key, text=exif_reader.decode_text(raw)))
    if fields.user_comment is not None:
        c.texts.append(TextField(where="exif:UserComment", key="UserComment", text=exif_reader.decode_user_comment(fields.user_comment)))
    if fields.xmp is not None:
        if len(fields.xmp) > limits.max_xmp_bytes:
            c.xmp_problems.append(f"{where} XMP is {len(fields.xmp)} bytes, limit {limits.max_xmp_bytes}")
        else:
            c.xmp.append(("tiff:700" if whole_file else f"{where}:700", fields.xmp))
    if whole_file:
        c.width, c.height = fields.width, fields.height
        c.lossy = c.chroma_subsampled = fields.compression in _TIFF_LOSSY_COMPRESSION
        if fields.c2pa_bytes is not None:
            c.c2pa.append(("tiff:52545", fields.c2pa_bytes))
