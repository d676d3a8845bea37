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
import pillow_heif
from PIL import Image, features

pillow_heif.register_heif_opener()  # lets Pillow write HEIF (the worker registers it for reading itself)

#: The formats the worker accepts, as Pillow writes them.
ACCEPTED_WRITERS: dict[str, dict] = {
    "JPEG": {},
    "PNG": {},
    "GIF": {},
    "WEBP": {"quality": 90},
    "BMP": {},
    "TIFF": {},
    "AVIF": {"quality": 90},
    "HEIF": {"quality": 90},
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


# -- costs the header does not show: shapes, tiles, bit depths, refused formats -------------------------------------


def png_grey_flat(width: int, height: int, depth: int = 8) -> bytes:
    """A flat greyscale PNG of any size, written by hand (rows of zeros deflate about 1000:1)."""
    row = b"\x00" + b"\x00" * (width * depth // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return png_ihdr(width, height, depth, 0) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_thin(width: int = 1_900_000, height: int = 8) -> bytes:
    """15 KB, 15 MP (under the 40 MP limit), 237500:1 aspect: a shortest-side resize to 224 would be 53M x 224 pixels (36 GB)."""
    return png_grey_flat(width, height)


def jpeg_thin(width: int = 65_000, height: int = 8) -> bytes:
    """The widest JPEG there is (65535 is the format's limit): resized to 224 high it would be 1.8M x 224 (1.2 GB)."""
    return save(Image.new("L", (width, height), 128), "JPEG", quality=50)


def gif_thin(width: int = 65_000, height: int = 8) -> bytes:
    """The same shape as :func:`jpeg_thin` in GIF (whose sides are 16-bit too)."""
    return save(Image.new("L", (width, height), 0), "GIF")


def tiff_tiled(
    width: int, height: int, tile: int = 16, *, shared: bool = True, compression: int = 8, bits: int = 8, tiles_override: int | None = None
) -> bytes:
    """A greyscale tiled TIFF written by hand; with ``shared`` every tile offset points at one compressed tile.

    6000 x 6000 in 16 x 16 tiles is 140,625 tiles: the offset and byte-count arrays
    are 1.1 MB, the pixel data is a single deflated tile of a few bytes, and the
    decoder pays its per-tile cost 140,625 times (libtiff plus Pillow's per-tile
    Python loop). ``shared=False`` writes one copy of the tile per slot (the same
    count of tiles, honestly stored, for the tile-count bound).
    """
    tiles_across = -(-width // tile)
    tiles_down = -(-height // tile)
    n = tiles_override if tiles_override is not None else tiles_across * tiles_down
    raw = b"\x00" * (tile * tile * bits // 8)
    tile_data = zlib.compress(raw, 9) if compression == 8 else raw
    n_tags = 10
    ifd_len = 2 + n_tags * 12 + 4
    arrays_at = 8 + ifd_len
    offsets_at = arrays_at
    counts_at = offsets_at + 4 * n
    data_at = counts_at + 4 * n
    if shared:
        offsets = [data_at] * n
        pixels = tile_data
    else:
        offsets = [data_at + i * len(tile_data) for i in range(n)]
        pixels = tile_data * n
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, compression),
        (262, 3, 1, 1),
        (277, 3, 1, 1),
        (322, 4, 1, tile),
        (323, 4, 1, tile),
        (324, 4, n, offsets_at),
        (325, 4, n, counts_at),
    ]
    ifd = struct.pack("<H", n_tags) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    arrays = struct.pack(f"<{n}I", *offsets) + struct.pack(f"<{n}I", *([len(tile_data)] * n))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + arrays + pixels


def tiff_shared_tiles(width: int = 6000, height: int = 6000, tile: int = 16) -> bytes:
    """About 1 MB: 140,625 tile slots that all point at the same 20-byte deflated tile."""
    return tiff_tiled(width, height, tile, shared=True)


def tiff_flat(mode: str, width: int, height: int) -> bytes:
    """A flat image in a 16-bit or float mode, deflated (so megapixels fit under the byte limit)."""
    img = Image.new(mode, (width, height), 0)
    return save(img, "TIFF", compression="tiff_adobe_deflate")


def eps_padded(size: int = 8 * 1024 * 1024) -> bytes:
    """An EPS file (a format we refuse) padded with comment lines that Pillow's EPS parser walks in Python."""
    head = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n"
    line = b"%" + b"x" * 78 + b"\n"
    return head + line * ((size - len(head)) // len(line))


def jpeg_with_sos_bytes_in_metadata(copies: int = 500) -> bytes:
    """A plain baseline JPEG whose ICC profile and comment each hold ``copies`` x ``FF DA`` (not start-of-scan markers)."""
    fake = b"\xff\xda" * copies
    return save(noise_image(64, 48), "JPEG", icc_profile=b"\x00" * 128 + fake, comment=fake, quality=90)


# -- HEIF / AVIF (ISOBMFF) by hand -------------------------------------------------------------------------------


def _isobmff_boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    """(type, box start, payload start, box end) of the boxes in ``data[start:end]`` (32-bit sizes only)."""
    out, pos = [], start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        out.append((kind, pos, pos + 8, pos + size))
        pos += size
    return out


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full_box(kind: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return _box(kind, bytes([version]) + flags.to_bytes(3, "big") + payload)


def heif_single(fmt: str, width: int = 64, height: int = 64, seed: int = 0, **kw: object) -> bytes:
    """A noise image written by the real encoder: ``AVIF`` (Pillow/libavif) or ``HEIF`` (pillow-heif/libheif)."""
    return save(noise_image(width, height, seed), fmt, **kw)


def _coded_tile(fmt: str, tile: int, seed: int) -> tuple[bytes, bytes, list[bytes]]:
    """(ftyp box, coded image bytes, property boxes without ispe) of one encoder-written tile."""
    data = heif_single(fmt, tile, tile, seed)
    top = _isobmff_boxes(data, 0, len(data))
    ftyp = next(data[s:e] for k, s, _, e in top if k == b"ftyp")
    meta = next((p, e) for k, _, p, e in top if k == b"meta")
    coded = next(data[p:e] for k, _, p, e in top if k == b"mdat")
    props: list[bytes] = []
    for k, _, p, e in _isobmff_boxes(data, meta[0] + 4, meta[1]):
        if k == b"iprp":
            ipco = next((pp, ee) for kk, _, pp, ee in _isobmff_boxes(data, p, e) if kk == b"ipco")
            props = [data[s:ee] for kk, s, _, ee in _isobmff_boxes(data, *ipco) if kk != b"ispe"]
    return ftyp, coded, props


def heif_grid(fmt: str, rows: int, cols: int, *, tile: int = 64, shared: bool = False, output: tuple[int, int] | None = None) -> bytes:
    """A grid image (what phones write: one coded image per tile) with ``rows`` x ``cols`` tiles of ``tile`` px.

    The tiles are a real encoder's output; the container is written here. With
    ``shared`` every tile's ``iloc`` extent points at the same coded bytes: a
    few kilobytes that cost ``rows * cols`` decodes. ``output`` overrides the
    grid's declared size (default: exactly the tiles).
    """
    ftyp, coded, props = _coded_tile(fmt, tile, seed=5)
    item_type = b"av01" if fmt == "AVIF" else b"hvc1"
    n = rows * cols
    out_w, out_h = output or (cols * tile, rows * tile)
    wide = out_w > 0xFFFF or out_h > 0xFFFF
    grid_payload = bytes([0, 1 if wide else 0, rows - 1, cols - 1]) + struct.pack(">II" if wide else ">HH", out_w, out_h)
    # properties: 1.. the tile's own (codec config, colour, pixi), then ispe of a tile, then ispe of the grid
    ispe_tile = _full_box(b"ispe", 0, 0, struct.pack(">II", tile, tile))
    ispe_grid = _full_box(b"ispe", 0, 0, struct.pack(">II", out_w, out_h))
    ipco = _box(b"ipco", b"".join(props) + ispe_tile + ispe_grid)
    tile_props = list(range(1, len(props) + 2))
    pixi_index = next((i + 1 for i, p in enumerate(props) if p[4:8] == b"pixi"), None)
    grid_props = [len(props) + 2] + ([pixi_index] if pixi_index else [])
    item_ids = list(range(2, n + 2))
    ipma_entries = struct.pack(">H", 1) + bytes([len(grid_props)]) + bytes(grid_props)
    for i in item_ids:
        ipma_entries += struct.pack(">H", i) + bytes([len(tile_props)]) + bytes((0x80 | p) if j == 0 else p for j, p in enumerate(tile_props))
    ipma = _full_box(b"ipma", 0, 0, struct.pack(">I", n + 1) + ipma_entries)
    iprp = _box(b"iprp", ipco + ipma)
    infe = [_full_box(b"infe", 2, 0, struct.pack(">HH", 1, 0) + b"grid" + b"\x00")]
    infe += [_full_box(b"infe", 2, 1, struct.pack(">HH", i, 0) + item_type + b"\x00") for i in item_ids]  # flags 1: hidden
    iinf = _full_box(b"iinf", 0, 0, struct.pack(">H", n + 1) + b"".join(infe))
    iref = _full_box(b"iref", 0, 0, _box(b"dimg", struct.pack(">HH", 1, n) + b"".join(struct.pack(">H", i) for i in item_ids)))
    hdlr = _full_box(b"hdlr", 0, 0, b"\x00" * 4 + b"pict" + b"\x00" * 12 + b"\x00")
    pitm = _full_box(b"pitm", 0, 0, struct.pack(">H", 1))
    idat = _box(b"idat", grid_payload)

    def meta_with(mdat_at: int) -> bytes:
        entries = struct.pack(">HHHH", 1, 1, 0, 1) + struct.pack(">II", 0, len(grid_payload))  # grid: construction method 1 (idat)
        for k, i in enumerate(item_ids):
            offset = mdat_at + 8 + (0 if shared else k * len(coded))
            entries += struct.pack(">HHHH", i, 0, 0, 1) + struct.pack(">II", offset, len(coded))
        iloc = _full_box(b"iloc", 1, 0, bytes([0x44, 0x00]) + struct.pack(">H", n + 1) + entries)
        return _full_box(b"meta", 0, 0, hdlr + pitm + iloc + iinf + iref + iprp + idat)

    meta = meta_with(0)
    mdat_at = len(ftyp) + len(meta)
    meta = meta_with(mdat_at)
    return ftyp + meta + _box(b"mdat", coded if shared else coded * n)


def heif_declared_size(fmt: str, width: int, height: int) -> bytes:
    """A real single-image file whose ``ispe`` is rewritten to declare ``width`` x ``height``."""
    data = bytearray(heif_single(fmt))
    at = data.index(b"ispe") + 8
    data[at : at + 8] = struct.pack(">II", width, height)
    return bytes(data)


# -- provenance metadata (C2PA / JUMBF, XMP, text chunks, EXIF) --------------------------------------------------
#
# Every file below is a decodable image (Pillow opens and decodes it within the
# worker's decode limits) whose *metadata* is hostile, so a worker must give it
# a verdict with the affected provenance signal "unreadable", never a dead
# letter. They are sized against worker.ingest.provenance.ProvenanceLimits'
# defaults (512 KiB per text chunk, 2 MiB of text per file, 1 MiB per XMP
# packet, 64 levels of XML, 8192 chunks, 8 MiB of C2PA manifest store).


def _photo_png(width: int = 64, height: int = 48) -> bytes:
    return save(noise_image(width, height, seed=5), "PNG")


def _after_ihdr(png: bytes, chunks: list[bytes]) -> bytes:
    end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:end] + b"".join(chunks) + png[end:]


def png_text_bomb(keyword: str = "parameters", inflated: int = 900 * 1024, chunks: int = 1, kind: bytes = b"zTXt") -> bytes:
    """A PNG whose zTXt/iTXt chunks under a keyword provenance reads each inflate to ``inflated`` bytes.

    900 KiB stays under Pillow's 1 MiB per-chunk cap (so the image decodes) and
    over provenance's 512 KiB; many such chunks exhaust the 2 MiB text budget.
    """
    bomb = zlib.compress(b"Steps: 1, " * (inflated // 10), 9)
    key = keyword.encode("latin-1")
    body = key + b"\x00\x00" + bomb if kind == b"zTXt" else key + b"\x00\x01\x00\x00\x00" + bomb
    return _after_ihdr(_photo_png(), [png_chunk(kind, body) for _ in range(chunks)])


def png_xmp_bomb(inflated: int = 64 * 1024 * 1024) -> bytes:
    """A compressed iTXt XMP packet that inflates to ``inflated`` bytes (64 MiB: Pillow refuses it too, so it is not decodable)."""
    packet = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b" " * inflated + b"</x:xmpmeta>"
    return _after_ihdr(_photo_png(), [png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + zlib.compress(packet, 9))])


def xmp_billion_laughs() -> bytes:
    """The classic entity-expansion packet (10 levels x 10 references = 10**10 'lol's if expanded)."""
    ents = '<!ENTITY lol "lol">' + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    return (
        f'<?xml version="1.0"?><!DOCTYPE x:xmpmeta [{ents}]><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" Iptc4xmpExt:DigitalSourceType="&lol9;"/>'
        "</rdf:RDF></x:xmpmeta>"
    ).encode()


def xmp_external_entity(path: str = "/etc/passwd") -> bytes:
    """A packet whose digital source type is an external entity (XXE): a parser that resolves it reads a local file."""
    return (
        f'<?xml version="1.0"?><!DOCTYPE x:xmpmeta [<!ENTITY xxe SYSTEM "file://{path}">]><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"><Iptc4xmpExt:DigitalSourceType>&xxe;</Iptc4xmpExt:DigitalSourceType>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()


_DST_MARKER = (
    b'<d xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
    b' Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/>'
)


def xmp_deep(depth: int = 50_000) -> bytes:
    """A well-formed packet nesting ``depth`` elements around a digital source type (so a reader must parse it to find it)."""
    return b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b"<a>" * depth + _DST_MARKER + b"</a>" * depth + b"</x:xmpmeta>"


def xmp_wide(elements: int = 100_000) -> bytes:
    """A flat packet of ``elements`` empty elements (~0.4 MiB), the digital source type last."""
    return b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b"<a/>" * elements + _DST_MARKER + b"</x:xmpmeta>"


def jpeg_with_xmp_packet(packet: bytes) -> bytes:
    """A JPEG with ``packet`` as its (standard) XMP APP1 segment; packets over 64 KiB do not fit one segment."""
    base = save(noise_image(64, 48, seed=6), "JPEG")
    body = b"http://ns.adobe.com/xap/1.0/\x00" + packet
    if len(body) + 2 > 0xFFFF:
        raise ValueError("a standard XMP packet must fit one 64 KiB APP1 segment")
    return base[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + base[2:]


def png_with_xmp_packet(packet: bytes) -> bytes:
    return _after_ihdr(_photo_png(), [png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + packet)])


def webp_with_xmp_packet(packet: bytes) -> bytes:
    """A lossless WebP with an XMP chunk (any size: RIFF chunks have 32-bit lengths)."""
    return save(noise_image(64, 48, seed=6), "WEBP", lossless=True, xmp=packet)


def jpeg_extended_xmp_claiming(full_length: int = 1 << 31) -> bytes:
    """A JPEG with one extended-XMP segment whose header claims a ``full_length`` packet (a reader that preallocates it dies)."""
    base = save(noise_image(64, 48, seed=6), "JPEG")
    body = b"http://ns.adobe.com/xmp/extension/\x00" + b"0" * 32 + struct.pack(">II", full_length, 0) + b"<x/>"
    return base[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + base[2:]


def png_many_chunks(n: int = 20_000, keyword: str = "parameters") -> bytes:
    """``n`` small unrelated tEXt chunks before the image data, and a generator chunk after them (past provenance's chunk cap)."""
    filler = [png_chunk(b"tEXt", b"k\x00v") for _ in range(n)]
    late = png_chunk(b"tEXt", keyword.encode() + b"\x00" + b"x\nSteps: 20, Sampler: Euler, Model: late")
    return _after_ihdr(_photo_png(), [*filler, late])


def png_deep_json(keyword: str = "prompt", depth: int = 100_000) -> bytes:
    """A ComfyUI-style ``prompt`` chunk holding ``depth`` nested JSON arrays (a recursive JSON parser overflows)."""
    return _after_ihdr(_photo_png(), [png_chunk(b"tEXt", keyword.encode() + b"\x00" + b"[" * depth + b"]" * depth)])


def exif_hostile(kind: str = "loop") -> bytes:
    """An EXIF block (TIFF little-endian) that is hostile in one way: ``loop`` (the EXIF IFD pointer points at IFD0),
    ``count`` (IFD0 claims 65535 entries), ``offset`` (a Software value far past the block), ``huge`` (a 1 GiB UserComment claim).
    """
    header = b"II*\x00" + struct.pack("<I", 8)
    if kind == "loop":
        ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x8769, 4, 1, 8) + struct.pack("<I", 0)
    elif kind == "count":
        ifd = struct.pack("<H", 0xFFFF) + struct.pack("<HHII", 0x0131, 2, 4, 0x41414141) * 4
    elif kind == "offset":
        ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x0131, 2, 64, 0x7FFFFFF0) + struct.pack("<I", 0)
    elif kind == "huge":
        sub = 8 + 2 + 12 + 4
        ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x8769, 4, 1, sub) + struct.pack("<I", 0)
        ifd += struct.pack("<H", 1) + struct.pack("<HHII", 0x9286, 7, 1 << 30, 64) + struct.pack("<I", 0)
    else:
        raise ValueError(kind)
    return header + ifd


def jpeg_with_exif_block(block: bytes) -> bytes:
    base = save(noise_image(64, 48, seed=6), "JPEG")
    body = b"Exif\x00\x00" + block
    return base[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + base[2:]


def jumbf_box(kind: bytes, payload: bytes, lbox: int | None = None) -> bytes:
    """One ISO BMFF/JUMBF box: LBox (32-bit size, or ``lbox`` to lie about it), TBox, payload."""
    return struct.pack(">I", len(payload) + 8 if lbox is None else lbox) + kind + payload


def c2pa_store_stub(inner: bytes = b"") -> bytes:
    """A JUMBF superbox labelled ``c2pa`` (the manifest store's outer box) around ``inner``."""
    jumd = jumbf_box(b"jumd", bytes.fromhex("6332706100110010800000aa00389b71") + b"\x03c2pa\x00")
    return jumbf_box(b"jumb", jumd + inner)


def jpeg_with_jumbf(store: bytes, *, segment: int = 65000) -> bytes:
    """A JPEG carrying ``store`` in APP11 segments (common identifier ``JP``, box instance 1, packet sequence 1..n) as C2PA does."""
    base = save(noise_image(64, 48, seed=6), "JPEG")
    segs, seq = [], 1
    first, rest = store[:8], store[8:]
    for off in range(0, max(len(rest), 1), segment):
        body = b"JP" + struct.pack(">HI", 1, seq) + first + rest[off : off + segment]
        segs.append(b"\xff\xeb" + struct.pack(">H", len(body) + 2) + body)
        seq += 1
    return base[:2] + b"".join(segs) + base[2:]


def hostile_jumbf_stores() -> dict[str, bytes]:
    """Malformed C2PA manifest stores (to embed with :func:`jpeg_with_jumbf`): each one a way a JUMBF parser can be lied to."""
    deep = b""
    for _ in range(2000):
        deep = jumbf_box(b"jumb", deep)
    return {
        "empty-store": c2pa_store_stub(),
        "truncated-box": c2pa_store_stub(jumbf_box(b"jumb", b"\x00" * 16, lbox=1 << 20)),
        "lbox-max": c2pa_store_stub(jumbf_box(b"jumb", b"\x00" * 16, lbox=0xFFFFFFFF)),
        "xlbox-huge": c2pa_store_stub(struct.pack(">I", 1) + b"jumb" + struct.pack(">Q", 1 << 62) + b"\x00" * 16),
        "lbox-zero": c2pa_store_stub(struct.pack(">I", 0) + b"jumb" + b"\x00" * 64),
        "nested-2000": c2pa_store_stub(deep),
        "cbor-garbage": c2pa_store_stub(jumbf_box(b"jumb", jumbf_box(b"jumd", b"\x00" * 16 + b"c2pa.claim\x00") + jumbf_box(b"cbor", b"\xbf" * 4096))),
    }


def mutate_bytes(data: bytes, start: int, end: int, flips: int, seed: int) -> bytes:
    """``data`` with ``flips`` random bytes in [start, end) replaced (fuzzing a signed manifest store in place)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for i in rng.integers(start, max(start + 1, end), size=flips):
        out[int(i)] = int(rng.integers(0, 256))
    return bytes(out)


def jpeg_many_segments(n: int = 10_000) -> bytes:
    """A JPEG with ``n`` tiny APP4 segments before its scan (past provenance's segment cap; Pillow skips them)."""
    base = save(noise_image(64, 48, seed=6), "JPEG")
    return base[:2] + (b"\xff\xe4" + struct.pack(">H", 6) + b"junk") * n + base[2:]


def jpeg_c2pa_fuzzed(seed: int = 1, flips: int = 20) -> bytes:
    """A JPEG signed by the devkit's test CA whose manifest store then had ``flips`` bytes changed (the SDK's CBOR and JUMBF parsers get garbage)."""
    from devkit.c2pa_signing import make_ca, make_signer, sign_image

    signed = sign_image(save(noise_image(96, 64, seed=8), "JPEG"), "image/jpeg", make_signer(make_ca()))
    at = signed.find(b"jumb")
    return mutate_bytes(signed, at + 200, at + 1500, flips, seed)


def provenance_hostile_targets() -> dict[str, str]:
    """Which signal kind (``SignalKind`` value) each of :func:`provenance_hostile_files` attacks: it must come out ``unreadable``."""
    targets = {
        "png-parameters-bomb": "generator_metadata",
        "png-parameters-bombs-x4": "generator_metadata",
        "png-itxt-parameters-bomb": "generator_metadata",
        "png-many-chunks": "generator_metadata",
        "png-deep-json": "generator_metadata",
        "jpeg-many-segments": "c2pa",
        "jpeg-c2pa-fuzzed": "c2pa",
        "jpeg-xmp-billion-laughs": "iptc_digital_source_type",
        "jpeg-xmp-xxe": "iptc_digital_source_type",
        "png-xmp-deep": "iptc_digital_source_type",
        "png-xmp-wide": "iptc_digital_source_type",
        "webp-xmp-giant": "iptc_digital_source_type",
        "jpeg-extended-xmp-2gib": "iptc_digital_source_type",
    }
    targets.update({f"jpeg-exif-{k}": "generator_metadata" for k in ("loop", "count", "offset", "huge")})
    targets.update({f"jpeg-jumbf-{k}": "c2pa" for k in hostile_jumbf_stores()})
    return targets


def provenance_hostile_files() -> dict[str, bytes]:
    """Decodable images with hostile provenance metadata, by name (for a worker process: every one must get a verdict)."""
    return {
        "jpeg-many-segments": jpeg_many_segments(),
        "jpeg-c2pa-fuzzed": jpeg_c2pa_fuzzed(),
        "png-parameters-bomb": png_text_bomb(),
        "png-parameters-bombs-x4": png_text_bomb(chunks=4),
        "png-itxt-parameters-bomb": png_text_bomb(kind=b"iTXt"),
        "png-many-chunks": png_many_chunks(),
        "png-deep-json": png_deep_json(),
        "jpeg-xmp-billion-laughs": jpeg_with_xmp_packet(xmp_billion_laughs()),
        "jpeg-xmp-xxe": jpeg_with_xmp_packet(xmp_external_entity()),
        "png-xmp-deep": png_with_xmp_packet(xmp_deep()),
        "png-xmp-wide": png_with_xmp_packet(xmp_wide()),
        "webp-xmp-giant": webp_with_xmp_packet(b"<x/>" + b" " * (3 * 1024 * 1024)),
        "jpeg-extended-xmp-2gib": jpeg_extended_xmp_claiming(),
        **{f"jpeg-exif-{k}": jpeg_with_exif_block(exif_hostile(k)) for k in ("loop", "count", "offset", "huge")},
        **{f"jpeg-jumbf-{k}": jpeg_with_jumbf(v) for k, v in hostile_jumbf_stores().items()},
    }
