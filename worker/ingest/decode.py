"""Bytes to an RGB Pillow image, refusing what could hurt the worker.

Order matters: the byte size is checked before anything parses the data; the
format is named from its magic bytes (:mod:`worker.ingest.sniff`, never
trusted from a header or a content type) and only that format's parser may run,
so a refused format is refused before any parser reads it; the pixel count is
checked from the header before pixels are decoded (decompression bombs); the
work a decoder may do beyond the pixel count is bounded (JPEG scans, TIFF
strips and tiles, HEIF/AVIF grids); only then is the image loaded, converted to
RGB in bands (:mod:`worker.ingest.convert`). Every refusal is an
:class:`~worker.errors.InputError` with a dead-letter code.

Why each bound exists (each one was a real way to stall or blow up a worker,
see ``tests/unit/ingest/test_decode.py``):

* **Pixels, from the header.** A 45-byte PNG can declare 50000x50000. Our check
  runs right after the header is parsed, before any pixel is decoded. Pillow's
  own guard (``Image.MAX_IMAGE_PIXELS``) is a process-wide setting that raises
  only above *twice* its value (179 MP by default): a configured limit above
  that was silently capped, so the guard is raised to match (never lowered:
  that would change Pillow for every other caller in the process, see
  :func:`_raise_pillow_pixel_guard`). WebP allocates its canvas inside
  ``Image.open``, before our check could run, so its canvas size is read from
  the first 30 bytes and checked before Pillow sees the file.
* **Refused formats, from magic bytes.** Pillow's ``Image.open`` tries every
  plugin, and some parse the whole file in Python first: an 8 MB EPS took
  6.6 s just to be refused. Now no parser runs for a format we refuse.
* **JPEG scans.** Progressive JPEG lets a file repeat scans; each scan walks
  every coefficient block of the image, and a scan of an all-flat image costs a
  few dozen bytes. A 200 KB, 36 MP file with 1000 extra scans took 21 s to
  decode here, so a 10 MB one takes hours, in a thread nobody can kill (a
  decode timeout can abandon the future but not stop the C decoder). Real
  encoders write 10 or so; we refuse more than :attr:`DecodeLimits.max_jpeg_scans`
  (libtiff uses the same bound, 100, for JPEG-in-TIFF, so TIFF is covered by
  libtiff itself). The scans are counted by walking the marker segments
  (:mod:`worker.ingest.jpeg_markers`), not by counting ``FF DA`` bytes, which
  also occur inside ICC profiles, comments and EXIF thumbnails.
* **TIFF strips and tiles.** The decoder's work grows with the number of
  strips/tiles, not only with pixels, and TIFF lets every tile offset point at
  the same few compressed bytes: a 1 MB file of 140,625 16x16 tile slots all
  sharing one deflated tile decodes 36 MP. Strips/tiles whose byte ranges
  overlap are refused (no writer shares them), and their number is bounded by
  :attr:`DecodeLimits.max_tiff_chunks`.
* **HEIF/AVIF containers.** Declared sizes, grid tile counts and shared coded
  data are read from the boxes before libheif/libavif run
  (:mod:`worker.ingest.isobmff`).
* **Bit depth and alpha.** 16-bit, 32-bit and float images, and images with
  alpha, are converted to 8-bit RGB in bands of rows, never through full-size
  float64 or RGBA temporaries (those were about 1 GB for a 36 MP float TIFF).
* **Frames.** ``n_frames`` on GIF and TIFF walks the whole file (it took 130 ms
  for a 384 KB TIFF of 2000 pages, growing with the file). We only need the
  first frame, which is where an image stands right after opening, so we ask
  ``is_animated`` (which looks at most one frame ahead) and never count.
* **Text/ICC chunks.** Pillow caps a PNG zTXt/iTXt/iCCP chunk at 1 MB inflated
  and all text at 64 MB; beyond that it raises ``ValueError``, which we report as
  ``decompression_bomb`` rather than ``undecodable``.

What is *not* bounded here beyond the byte limit: formats whose structure Pillow
walks in Python (10 MB of empty PNG chunks, JPEG comment markers, GIF extension
blocks or BMP RLE commands cost 1 to 3.5 s on this machine's CPU). That cost is
linear in the bytes; the pipeline's per-image decode time limit covers it.

Warnings: Pillow warns about corrupt EXIF, odd TIFF tags and the like.
``warnings.catch_warnings`` is not thread-safe before Python 3.14 and decoding
runs in a thread pool, so rather than toggling filters per call this module
installs one process-wide filter at import that silences the *data* warnings
raised from inside Pillow (``UserWarning``: corrupt EXIF, odd TIFF tags, bad
APNG chunks; they carry no upload id, a hostile stream makes a flood of them,
and the outcome of a decode is carried by the return value or the
``InputError``) and the decompression-bomb warning (the pixel limits here are
checked before Pillow's). Pillow's deprecation and runtime warnings still
surface: they are about this code, not about the image.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import pillow_heif
from PIL import Image, ImageFile, UnidentifiedImageError

from schemas import ErrorCode
from worker.errors import InputError
from worker.ingest import sniff
from worker.ingest.convert import to_rgb
from worker.ingest.isobmff import ContainerLimits, check_container
from worker.ingest.jpeg_markers import jpeg_scan_count

# HEIF through pillow-heif (libheif); AVIF is Pillow's own plugin (libavif). Embedded
# thumbnails are never decoded in place of the image.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# Register every plugin now: Image.open(formats=...) looks the format up in
# the registry, which otherwise holds only the five formats Pillow preloads.
Image.init()
#: Formats the worker decodes, as Pillow's open-registry names them. Others are
#: named from their magic bytes (in the error) but refused before any parser
#: runs: vector, camera-raw, texture and container formats are not photographs
#: we can score, and each extra decoder is attack surface.
ALLOWED_FORMATS: tuple[str, ...] = tuple(f for f in sniff.ACCEPTED if f in Image.ID)

#: ``Image.format`` values an opened image may report. Multi-picture JPEG (MPO,
#: what phones write for portrait/stereo shots) is opened by the JPEG plugin and
#: reports "MPO"; since Pillow 13 MPO is no longer an id of its own in
#: ``Image.ID``, so it cannot be named in ``formats=`` (it would be ignored) and
#: must be accepted here instead.
ACCEPTED_RESULT_FORMATS: frozenset[str] = frozenset((*ALLOWED_FORMATS, "MPO"))

# Never accept truncated data silently: a half-decoded image gives a misleading score.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# One process-wide filter instead of per-call catch_warnings (see module docstring).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\..*)?$")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# EXIF Orientation tag value -> the transpose that shows the image upright.
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 8
    #: Start-of-scan markers allowed in a JPEG/MPO file (embedded thumbnails and
    #: extra MPO pictures included). Baseline JPEG has 1 to 3, libjpeg's
    #: progressive default 10, mozjpeg a few more.
    max_jpeg_scans: int = 100
    #: Strips or tiles in a TIFF's first image. Each costs the decoder a fixed
    #: overhead (2 to 8 us here); a 40 MP image in 256x256 tiles has 610 and
    #: one strip per row of an 8000-row image 8000.
    max_tiff_chunks: int = 65_536
    #: Coded tiles a HEIF/AVIF grid may hold (a 48 MP phone photo has ~200).
    max_heif_tiles: int = 1024


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    format: str
    original_size: tuple[int, int]
    #: True when the file holds more than one frame/page (only the first is scored).
    animated: bool


def _raise_pillow_pixel_guard(max_pixels: int) -> None:
    """Let Pillow open images up to our limit when it is above Pillow's own error threshold.

    Pillow raises ``DecompressionBombError`` above ``2 * MAX_IMAGE_PIXELS`` (179 MP by
    default), so without this a configured limit of, say, 200 MP would be capped at
    179 MP by Pillow. Only ever raised: lowering a process-wide setting would change
    what every other Pillow caller in the process may open (the export side, tests).
    Idempotent, so concurrent decode threads may all call it.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and max_pixels > 2 * current:
        Image.MAX_IMAGE_PIXELS = (max_pixels + 1) // 2


def webp_canvas_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP header (VP8, VP8L or VP8X), without decoding; None if not WebP.

    Mirrors Pillow's private ``WebPImagePlugin._get_size``: libwebp's animation
    decoder allocates the whole canvas when Pillow opens the file, so the size must
    be checked before ``Image.open``.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _orientation(img: Image.Image) -> Image.Transpose | None:
    """The transpose that shows the image upright per its EXIF Orientation tag (JPEG, PNG eXIf, WebP, TIFF, AVIF).

    Read from the decoded image and applied after the RGB conversion, so the
    transpose copies 8-bit RGB rather than a deeper mode. HEIF's rotations are
    applied by libheif itself (pillow-heif then reports orientation 1). Unlike
    ``ImageOps.exif_transpose`` nothing is copied when there is nothing to do
    (most uploads). A corrupt EXIF block never costs the upload: the stored
    orientation is kept.
    """
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    except Exception:
        return None


def _check_tiff_chunks(img: Image.Image, limits: DecodeLimits) -> None:
    """Bound a TIFF's strips/tiles: their number, and no two sharing bytes (see the module docstring)."""
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return
    offsets = tags.get(324) or tags.get(273)  # TileOffsets, else StripOffsets
    counts = tags.get(325) or tags.get(279)  # TileByteCounts, else StripByteCounts
    offsets = offsets if isinstance(offsets, tuple) else (offsets,) if offsets is not None else ()
    counts = counts if isinstance(counts, tuple) else (counts,) if counts is not None else ()
    if len(offsets) > limits.max_tiff_chunks:
        raise InputError(
            ErrorCode.decompression_bomb, f"TIFF has {len(offsets)} strips/tiles, limit {limits.max_tiff_chunks} (each costs the decoder a fixed overhead)"
        )
    spans = sorted((int(o), int(o) + int(c)) for o, c in zip(offsets, counts, strict=False) if isinstance(o, int) and isinstance(c, int) and c > 0)
    reach = -1
    for start, stop in spans:
        if start < reach:
            raise InputError(ErrorCode.decompression_bomb, "TIFF strips/tiles share compressed data (each would be decoded again)")
        reach = max(reach, stop)


def _refuse_unknown(data: bytes) -> InputError:
    name = sniff.refused_format(data)
    if name:
        return InputError(ErrorCode.unsupported_format, f"format {name} is not accepted (allowed: {', '.join(ALLOWED_FORMATS)})")
    return InputError(ErrorCode.undecodable, "not a recognisable image")


def draft_request(size: tuple[int, int], target_short_side: int) -> tuple[int, int]:
    """Smallest (w, h) whose shortest side still covers the target after scaling."""
    w, h = size
    scale = target_short_side / min(w, h)
    return (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale)))


def decode_image(data: bytes, limits: DecodeLimits, draft_short_side: int | None = None) -> DecodedImage:
    """Decode ``data`` to RGB, applying EXIF orientation and taking the first frame.

    ``draft_short_side``: for JPEG, let libjpeg downscale by 1/2..1/8 in the DCT
    domain while keeping the shortest side at least this large (much cheaper than
    a full decode of a 12 MP photo). ``None`` decodes at native resolution.
    """
    if len(data) == 0:
        raise InputError(ErrorCode.undecodable, "empty image payload")
    if len(data) > limits.max_bytes:
        raise InputError(ErrorCode.too_large, f"image is {len(data)} bytes, limit {limits.max_bytes}")
    claimed = sniff.accepted_format(data)
    if claimed is None or claimed not in ALLOWED_FORMATS:
        raise _refuse_unknown(data)
    _raise_pillow_pixel_guard(limits.max_pixels)
    canvas = webp_canvas_size(data)
    if canvas is not None and canvas[0] * canvas[1] > limits.max_pixels:
        w, h = canvas
        raise InputError(ErrorCode.decompression_bomb, f"WebP canvas {w}x{h} = {w * h} pixels exceeds the limit of {limits.max_pixels}")
    if claimed in ("AVIF", "HEIF"):
        check_container(data, ContainerLimits(limits.max_pixels, limits.max_heif_tiles))
    try:
        img = Image.open(io.BytesIO(data), formats=(claimed,))
    except Image.DecompressionBombError as exc:
        raise InputError(ErrorCode.decompression_bomb, str(exc)) from None
    except UnidentifiedImageError:
        raise InputError(ErrorCode.undecodable, f"not a valid {claimed} file") from None
    except ValueError as exc:  # PNG text/ICC chunks inflating past Pillow's caps, among others
        raise InputError(_value_error_code(exc), f"cannot parse image header: {exc}") from None
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise InputError(ErrorCode.undecodable, f"cannot parse image header: {type(exc).__name__}: {exc}") from None

    fmt = img.format or "unknown"
    if fmt not in ACCEPTED_RESULT_FORMATS:  # a plugin under an allowed name reporting another format
        raise InputError(ErrorCode.unsupported_format, f"format {fmt} is not accepted (allowed: {', '.join(ALLOWED_FORMATS)})")
    w, h = img.size
    if w * h > limits.max_pixels:
        raise InputError(ErrorCode.decompression_bomb, f"{w}x{h} = {w * h} pixels exceeds the limit of {limits.max_pixels}")
    if min(w, h) < limits.min_side:
        raise InputError(ErrorCode.image_too_small, f"{w}x{h} is smaller than {limits.min_side} pixels on a side")
    if fmt in ("JPEG", "MPO"):
        scans = jpeg_scan_count(data, stop_after=limits.max_jpeg_scans)
        if scans > limits.max_jpeg_scans:
            raise InputError(ErrorCode.decompression_bomb, f"JPEG has more than {limits.max_jpeg_scans} scans (each scan re-walks every pixel block)")
    if fmt == "TIFF":
        _check_tiff_chunks(img, limits)
    try:
        animated = bool(getattr(img, "is_animated", False))
    except Exception:
        animated = False  # a broken second frame does not matter: only the first is decoded
    try:
        if draft_short_side is not None and fmt in ("JPEG", "MPO"):
            img.draft("RGB", draft_request((w, h), draft_short_side))
        img.load()
    except ValueError as exc:
        raise InputError(_value_error_code(exc), f"cannot decode {fmt} data: {exc}") from None
    except Exception as exc:  # truncated data, corrupt streams, decoder errors
        raise InputError(ErrorCode.undecodable, f"cannot decode {fmt} data: {type(exc).__name__}: {exc}") from None
    transpose = _orientation(img)
    try:
        rgb = to_rgb(img)
    except Exception as exc:
        raise InputError(ErrorCode.undecodable, f"cannot convert mode {img.mode} to RGB: {exc}") from None
    del img  # the decoded image in its own mode is no longer needed: free it before the transpose copies
    if transpose is not None:
        rgb = rgb.transpose(transpose)
    return DecodedImage(rgb, fmt, (w, h), animated)


def _value_error_code(exc: ValueError) -> ErrorCode:
    """PNG text/ICC chunks that inflate past Pillow's caps are zlib bombs; other ValueErrors are corrupt data."""
    text = str(exc)
    if "Decompressed data too large" in text or "Too much memory used in text chunks" in text:
        return ErrorCode.decompression_bomb
    return ErrorCode.undecodable
