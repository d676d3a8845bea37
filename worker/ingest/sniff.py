"""Name an image format from its magic bytes, before any parser sees the file.

Why not ask Pillow: ``Image.open`` tries every registered plugin's parser in
turn, and some of them walk the whole file in Python before they can say what
it is. Pillow's EPS plugin reads PostScript line by line: an 8 MB EPS of
comment lines took 6.6 s to be *refused* here. So the worker decides from the
first bytes (and, for TGA, the last ones) which single parser may run: the one
for an accepted format, or none. A refused format is named from this table
alone, for the dead letter's message.

The accepted formats are recognised by exactly the prefixes Pillow's (and
pillow-heif's) plugins accept, so nothing Pillow would open as one of them is
refused. HEIF and AVIF share the ISOBMFF container: the ``ftyp`` box's brands
tell them apart (``avif``/``avis`` anywhere in the brands is AVIF; the HEVC
brands and the generic ``mif1``/``msf1`` are HEIF).
"""

from __future__ import annotations

#: Accepted formats, as Pillow's open-registry names them.
ACCEPTED = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF")

_TIFF_PREFIXES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"MM*\x00", b"II\x00*")
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})

#: (prefix, name) of formats Pillow can read but the worker refuses; the first match names the file.
#: (Files Pillow cannot read at all, PDF or SVG say, are simply "not a recognisable image".)
_REFUSED_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xffO\xffQ", "JPEG2000"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"\x01\xda", "SGI"),
    (b"Image type:", "IM"),
    (b"icns", "ICNS"),
    (b"BLP1", "BLP"),
    (b"BLP2", "BLP"),
    (b"FTEX", "FTEX"),
    (b"GRIB", "GRIB"),
    (b"BUFR", "BUFR"),
    (b"\x89HDF\r\n\x1a\n", "HDF5"),
    (b"SIMPLE  =", "FITS"),
    (b"\xb1\x68\xde\x3a", "DCX"),
    (b"\x00\x00\x01\xb3", "MPEG"),
    (b"DanM", "MSP"),
    (b"LinS", "MSP"),
    (b"\x59\xa6\x6a\x95", "SUN"),
    (b"\x80\xe8\x00\x00", "PIXAR"),
    (b"\xd7\xcd\xc6\x9a", "WMF"),
    (b"\x01\x00\x09\x00\x00\x03", "WMF"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "OLE2 (FlashPix/MIC)"),
    (b"P7 332", "XVTHUMB"),
    (b"/* XPM */", "XPM"),
    (b"#define", "XBM"),
)
_PNM = frozenset(b"123456fF")


def _ftyp_brands(data: bytes) -> frozenset[bytes] | None:
    """Major and compatible brands of a leading ``ftyp`` box; None when the file does not start with one."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return None
    size = int.from_bytes(data[:4], "big")
    if size < 16 or size > min(len(data), 4096) or size % 4:
        return None
    return frozenset([data[8:12]] + [data[i : i + 4] for i in range(16, size, 4)])


def accepted_format(data: bytes) -> str | None:
    """The accepted format ``data`` claims to be, from its magic bytes; None when it claims none."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in _TIFF_PREFIXES:
        return "TIFF"
    brands = _ftyp_brands(data)
    if brands is not None:
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
    return None


def refused_format(data: bytes) -> str | None:
    """Name of a format the worker does not accept, when its magic bytes say which; None if unknown."""
    if data.endswith(b"TRUEVISION-XFILE.\x00"):  # TGA has no leading magic; version 2 files end with this footer
        return "TGA"
    for prefix, name in _REFUSED_PREFIXES:
        if data.startswith(prefix):
            return name
    if len(data) >= 3 and data[0:1] == b"P" and data[1] in _PNM and data[2:3] in (b"\n", b" ", b"\r", b"\t"):
        return "PPM"
    if len(data) >= 3 and data[0] == 0x0A and data[1] in (0, 2, 3, 4, 5) and data[2] == 1:
        return "PCX"
    if data[4:8] == b"ftyp":
        brand = "".join(c if c.isalnum() else "?" for c in data[8:12].decode("latin-1"))
        return f"ISOBMFF ({brand})"
    return None
