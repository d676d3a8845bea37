"""Bytes to an RGB Pillow image, refusing what could hurt the worker.

Order matters: the byte size is checked before anything parses the data; the
format is sniffed from the bytes (never trusted from a header) and must be on
the allow-list; the pixel count is checked from the header before pixels are
decoded (decompression bombs); the work a decoder may do per pixel is bounded
(JPEG scan count); only then is the image loaded. Every refusal is an
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
* **JPEG scans.** Progressive JPEG lets a file repeat scans; each scan walks
  every coefficient block of the image, and a scan of an all-flat image costs a
  few dozen bytes. A 200 KB, 36 MP file with 1000 extra scans took 21 s to
  decode here, so a 10 MB one takes hours, in a thread nobody can kill (a
  decode timeout can abandon the future but not stop the C decoder). Real
  encoders write 10 or so; we refuse more than :attr:`DecodeLimits.max_jpeg_scans`
  (libtiff uses the same bound, 100, for JPEG-in-TIFF, so TIFF is covered by
  libtiff itself).
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
installs one process-wide filter at import that silences warnings raised from
inside Pillow (they carry no upload id, and would break JSON-lines logs); the
outcome of a decode is carried by the return value or the ``InputError``.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from schemas import ErrorCode
from worker.errors import InputError

#: Formats the worker decodes, as Pillow's open-registry names them. Others are
#: identified (to name them in the error) but refused: vector, camera-raw,
#: texture and container formats are not photographs we can score, and each
#: extra decoder is attack surface.
_WANTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

# Register every plugin now: Image.open(formats=...) looks the allow-list up in
# the registry, which otherwise holds only the five formats Pillow preloads.
Image.init()
ALLOWED_FORMATS: tuple[str, ...] = tuple(f for f in _WANTED_FORMATS if f in Image.ID)

#: ``Image.format`` values an opened image may report. Multi-picture JPEG (MPO,
#: what phones write for portrait/stereo shots) is opened by the JPEG plugin and
#: reports "MPO"; since Pillow 13 MPO is no longer an id of its own in
#: ``Image.ID``, so it cannot be named in ``formats=`` (it would be ignored) and
#: must be accepted here instead.
ACCEPTED_RESULT_FORMATS: frozenset[str] = frozenset((*ALLOWED_FORMATS, "MPO"))

# Never accept truncated data silently: a half-decoded image gives a misleading score.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# One process-wide filter instead of per-call catch_warnings (see module docstring).
warnings.filterwarnings("ignore", module=r"PIL(\..*)?$")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_SOS = b"\xff\xda"  # JPEG start-of-scan marker; cannot occur inside entropy-coded data (0xFF is stuffed there)

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


def _identify_unsupported(data: bytes) -> str | None:
    """Name the format if Pillow knows it at all (header only, nothing decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return probe.format
    except Image.DecompressionBombError as exc:
        raise InputError(ErrorCode.decompression_bomb, f"unsupported image format, and too large: {exc}") from None
    except Exception:
        return None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a viewer would show it.

    Alpha is composited over white (transparent pixels carry arbitrary colour
    values that would otherwise leak into the score); 16/32-bit greyscale is
    scaled to 8 bits instead of clipped; CMYK, palette, LAB etc. go through
    Pillow's conversion. ICC profiles are not applied: the heads were trained on
    images loaded the same way (Pillow ``convert("RGB")`` in open_clip's
    pipeline), so applying them here would move us away from training.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)  # float TIFFs may carry NaN/inf
        top = float(arr.max(initial=0.0))
        if mode.startswith("I;16"):
            hi = 65535.0
        elif mode == "F":
            hi = max(top, 1.0)  # floats in [0, 1] are the usual convention; larger ranges are scaled to their maximum
        else:
            hi = 255.0 if top <= 255 else (65535.0 if top <= 65535 else top)
        grey = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _apply_orientation(img: Image.Image) -> Image.Image:
    """Show the image upright per its EXIF Orientation tag (JPEG, PNG eXIf, WebP, TIFF).

    Unlike ``ImageOps.exif_transpose`` this does not copy the whole image when
    there is nothing to do (most uploads). A corrupt EXIF block never costs the
    upload: the stored orientation is kept.
    """
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    except Exception:
        return img
    return img.transpose(method) if method is not None else img


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
    _raise_pillow_pixel_guard(limits.max_pixels)
    canvas = webp_canvas_size(data)
    if canvas is not None and canvas[0] * canvas[1] > limits.max_pixels:
        w, h = canvas
        raise InputError(ErrorCode.decompression_bomb, f"WebP canvas {w}x{h} = {w * h} pixels exceeds the limit of {limits.max_pixels}")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InputError(ErrorCode.decompression_bomb, str(exc)) from None
    except UnidentifiedImageError:
        known = _identify_unsupported(data)
        if known:
            raise InputError(ErrorCode.unsupported_format, f"format {known} is not accepted (allowed: {', '.join(ALLOWED_FORMATS)})") from None
        raise InputError(ErrorCode.undecodable, "not a recognisable image") from None
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
        scans = data.count(_SOS)
        if scans > limits.max_jpeg_scans:
            raise InputError(ErrorCode.decompression_bomb, f"JPEG has {scans} scans, limit {limits.max_jpeg_scans} (each scan re-walks every pixel block)")
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
    upright: Image.Image = _apply_orientation(img)
    try:
        rgb = _to_rgb(upright)
    except Exception as exc:
        raise InputError(ErrorCode.undecodable, f"cannot convert mode {img.mode} to RGB: {exc}") from None
    return DecodedImage(rgb, fmt, (w, h), animated)


def _value_error_code(exc: ValueError) -> ErrorCode:
    """PNG text/ICC chunks that inflate past Pillow's caps are zlib bombs; other ValueErrors are corrupt data."""
    text = str(exc)
    if "Decompressed data too large" in text or "Too much memory used in text chunks" in text:
        return ErrorCode.decompression_bomb
    return ErrorCode.undecodable
