"""Hostile and odd image files, made in code at test time (no binaries in the repository).

Each builder returns bytes. Some files are written by Pillow (so they are
well-formed up to the point we break them); bombs and odd structures are
written byte by byte, because no well-behaved encoder makes them.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, features

#: The formats the worker accepts, as Pillow writes them.
ACCEPTED_WRITERS: dict[str, dict] = {
    "JPEG": {},
    "PNG": {},
    "GIF": {},
    "WEBP": {"quality": 90},
    "BMP": {},
    "TIFF": {},
}


def noise_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def accepted_files() -> dict[str, bytes]:
    """One small noise image in every accepted format (plus LZW- and JPEG-compressed TIFF)."""
    img = noise_image()
    out = {fmt: save(img, fmt, **kw) for fmt, kw in ACCEPTED_WRITERS.items()}
    out["TIFF-lzw"] = save(img, "TIFF", compression="tiff_lzw")
    out["TIFF-jpeg"] = save(img, "TIFF", compression="jpeg")
    out["WEBP-lossless"] = save(img, "WEBP", lossless=True)
    out["JPEG-progressive"] = save(img, "JPEG", progressive=True)
    return out


def psd_bytes(width: int = 16, height: int = 16) -> bytes:
    """Minimal Photoshop file (Pillow reads PSD but cannot write it)."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layer and mask info: all empty
    pixels = struct.pack(">H", 0) + bytes(3 * width * height)  # raw, planar
    return header + sections + pixels


def unsupported_files() -> dict[str, bytes]:
    """Formats Pillow reads that the worker refuses; keyed by the name Pillow reports."""
    img = noise_image(32, 32)
    out = {
        "ICO": save(img, "ICO"),
        "PCX": save(img, "PCX"),
        "PPM": save(img, "PPM"),
        "TGA": save(img, "TGA"),
        "SGI": save(img, "SGI"),
        "EPS": save(img, "EPS"),
        "QOI": save(img, "QOI"),
        "DDS": save(img.convert("RGBA"), "DDS"),
        "IM": save(img, "IM"),
        "PSD": psd_bytes(),
    }
    if features.check("jpg_2000"):
        out["JPEG2000"] = save(img, "JPEG2000")
    return out


# -- PNG by hand ---------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_ihdr(width: int, height: int, depth: int = 8, colour_type: int = 2) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))


def png_header_only(width: int, height: int) -> bytes:
    """A 45-byte PNG that declares ``width`` x ``height`` and holds no pixels: the classic pixel bomb."""
    return png_ihdr(width, height) + png_chunk(b"IEND", b"")


def png_16bit_rgb(width: int = 32, height: int = 24) -> bytes:
    """16-bit-per-channel RGB PNG (Pillow cannot write one): a horizontal ramp, red channel only."""
    rows = []
    for _ in range(height):
        row = b"".join(struct.pack(">HHH", int(65535 * x / (width - 1)), 0, 0) for x in range(width))
        rows.append(b"\x00" + row)
    return png_ihdr(width, height, 16, 2) + png_chunk(b"IDAT", zlib.compress(b"".join(rows))) + png_chunk(b"IEND", b"")


def png_ztxt_bomb(chunks: int = 2, inflated: int = 50 * 1024 * 1024) -> bytes:
    """A 16x16 PNG whose zTXt chunks each inflate to ``inflated`` bytes (a zlib bomb in metadata)."""
    bomb = zlib.compress(b"a" * inflated, 9)
    body = png_ihdr(16, 16, 8, 0)
    for i in range(chunks):
        body += png_chunk(b"zTXt", b"k%d\x00\x00" % i + bomb)
    return body + png_chunk(b"IDAT", zlib.compress(b"\x00" * (17 * 16))) + png_chunk(b"IEND", b"")


def png_iccp_bomb() -> bytes:
    """An ICC profile chunk that inflates to 100 MB."""
    icc = zlib.compress(b"\x00" * (100 * 1024 * 1024), 9)
    return png_ihdr(16, 16, 8, 0) + png_chunk(b"iCCP", b"icc\x00\x00" + icc) + png_chunk(b"IDAT", zlib.compress(b"\x00" * (17 * 16))) + png_chunk(b"IEND", b"")


# -- GIF, WebP, TIFF, JPEG by hand -------------------------------------------------------------------------------


def gif_frame_bomb(screen: int = 10, frame: int = 60000) -> bytes:
    """GIF whose logical screen is tiny but whose first frame declares ``frame`` x ``frame``."""
    out = b"GIF89a" + struct.pack("<HHBBB", screen, screen, 0xF0, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    out += b"\x2c" + struct.pack("<HHHHB", 0, 0, frame, frame, 0) + b"\x02\x02\x44\x01\x00"
    return out + b"\x3b"


def webp_canvas_bomb(width: int = 13000, height: int = 13000) -> bytes:
    """Extended WebP (VP8X) declaring a canvas of ``width`` x ``height`` and no image data.

    13000 x 13000 = 169 MP sits under Pillow's default error threshold (179 MP),
    and libwebp's animation decoder allocates the canvas while the file is opened.
    """
    vp8x = struct.pack("<I", 0x10 | 0x02) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")  # flags: EXIF, animation
    anim = struct.pack("<IH", 0, 0)
    chunks = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x + b"ANIM" + struct.pack("<I", len(anim)) + anim
    body = b"WEBP" + chunks
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_bytes(width: int, height: int, bits: tuple[int, ...], photometric: int, pixels: bytes) -> bytes:
    """Little-endian, single-strip, uncompressed TIFF with the given samples."""
    spp = len(bits)
    entries: list[tuple[int, int, int, int]] = []  # tag, type, count, value-or-offset
    extra = b""
    header_len = 8
    n_tags = 9
    ifd_len = 2 + n_tags * 12 + 4
    data_start = header_len + ifd_len
    bits_off = data_start
    if spp > 1:
        extra += struct.pack("<" + "H" * spp, *bits)
    pixel_off = data_start + len(extra)
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, spp, bits_off if spp > 1 else bits[0]),
        (259, 3, 1, 1),
        (262, 3, 1, photometric),
        (273, 4, 1, pixel_off),
        (277, 3, 1, spp),
        (278, 4, 1, height),
        (279, 4, 1, len(pixels)),
    ]
    ifd = struct.pack("<H", n_tags) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", header_len) + ifd + extra + pixels


def tiff_16bit_rgb(width: int = 16, height: int = 8) -> bytes:
    """16-bit RGB TIFF: pure green at 16 bits (Pillow cannot write one)."""
    px = struct.pack("<HHH", 0, 65535, 0) * (width * height)
    return tiff_bytes(width, height, (16, 16, 16), 2, px)


def tiff_pixel_bomb() -> bytes:
    """TIFF declaring 50000 x 50000 grey pixels with a 16-byte strip."""
    return tiff_bytes(50000, 50000, (8,), 1, b"\x00" * 16)


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each JPEG segment; an SOS segment includes its entropy-coded data."""
    i, out = 2, []
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            out.append((marker, i, i + 2))
            break
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xDA:
            j = end
            while True:
                j = data.index(b"\xff", j)
                if data[j + 1] == 0 or 0xD0 <= data[j + 1] <= 0xD7:
                    j += 2
                    continue
                break
            end = j
        out.append((marker, i, end))
        i = end
    return out


def jpeg_scan_bomb(side: int = 2000, extra_scans: int = 1000) -> bytes:
    """A flat progressive JPEG with its last scan repeated: tiny file, each scan re-walks every block.

    libjpeg accepts the repeated scans (a "bogus progression" warning only);
    2000x2000 with 1000 extra scans is 30 KB and took 2.3 s to decode here, and
    the cost grows with pixels x scans, so a 10 MB one runs for hours.
    """
    base = save(Image.new("L", (side, side), 128), "JPEG", progressive=True)
    scans = [(s, e) for m, s, e in jpeg_segments(base) if m == 0xDA]
    start, end = scans[-1]
    return base[:end] + base[start:end] * extra_scans + base[end:]


def exif_rotated_jpeg() -> bytes:
    """40x20 JPEG, left half red and right half blue, with EXIF Orientation 6 (display rotated 90 degrees clockwise).

    Upright it is 20x40 with red on top.
    """
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = img.getexif()
    exif[0x0112] = 6
    return save(img, "JPEG", exif=exif.tobytes(), quality=95)


def animated(fmt: str) -> bytes:
    """Three frames, red then green then blue (the first must be the one scored)."""
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    kw: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], **kw)


def many_page_tiff(pages: int = 300) -> bytes:
    pg = [Image.new("L", (8, 8), i % 256) for i in range(pages)]
    return save(pg[0], "TIFF", save_all=True, append_images=pg[1:])


def palette_with_transparency(fmt: str = "PNG") -> bytes:
    """32x32 palette image: index 0 (dark blue) transparent on the left half, index 1 (red) opaque on the right."""
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 80, 255, 0, 0] + [0, 0, 0] * 254)
    img.paste(1, (16, 0, 32, 32))
    return save(img, fmt, transparency=0)


def truncations(data: bytes, fractions: tuple[float, ...] = (0.3, 0.6, 0.9)) -> dict[float, bytes]:
    return {f: data[: int(len(data) * f)] for f in fractions}
