"""Bytes to an RGB Pillow image, refusing what could hurt the worker.

Order matters: the byte size is checked before anything parses the data; the
format is sniffed from the bytes (never trusted from a header) and must be on
the allow-list; the pixel count is checked from the header before pixels are
decoded (decompression bombs); only then is the image loaded. Every refusal is
an :class:`~worker.errors.InputError` with a dead-letter code.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from schemas import ErrorCode
from worker.errors import InputError

#: Formats the worker decodes. Others are identified (to name them in the error)
#: but refused: vector, camera-raw and container formats are not photographs we
#: can score, and each extra decoder is attack surface.
#: (MPO, multi-picture JPEG, is opened by the JPEG plugin in recent Pillow.)
_WANTED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF")

# Register every plugin now: Image.open(formats=...) looks the allow-list up in
# the registry, which otherwise holds only the five formats Pillow preloads.
Image.init()
ALLOWED_FORMATS: tuple[str, ...] = tuple(f for f in _WANTED_FORMATS if f in Image.ID)

# Never accept truncated data silently: a half-decoded image gives a misleading score.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 8


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    format: str
    original_size: tuple[int, int]
    frames: int


def _identify_unsupported(data: bytes) -> str | None:
    """Name the format if Pillow knows it at all (header only, nothing decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as probe:
                return probe.format
    except Exception:
        return None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a viewer would show it.

    Alpha is composited over white (transparent pixels carry arbitrary colour
    values that would otherwise leak into the score); 16/32-bit greyscale is
    scaled to 8 bits instead of clipped; CMYK, palette, LAB etc. go through
    Pillow's conversion.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F":
            hi = max(float(arr.max(initial=1.0)), 1.0)
        grey = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


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
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is the policy; Pillow's warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InputError(ErrorCode.decompression_bomb, str(exc)) from None
    except UnidentifiedImageError:
        known = _identify_unsupported(data)
        if known:
            raise InputError(ErrorCode.unsupported_format, f"format {known} is not accepted (allowed: {', '.join(ALLOWED_FORMATS)})") from None
        raise InputError(ErrorCode.undecodable, "not a recognisable image") from None
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise InputError(ErrorCode.undecodable, f"cannot parse image header: {type(exc).__name__}: {exc}") from None

    fmt = img.format or "unknown"
    w, h = img.size
    if w * h > limits.max_pixels:
        raise InputError(ErrorCode.decompression_bomb, f"{w}x{h} = {w * h} pixels exceeds the limit of {limits.max_pixels}")
    if min(w, h) < limits.min_side:
        raise InputError(ErrorCode.image_too_small, f"{w}x{h} is smaller than {limits.min_side} pixels on a side")
    frames = getattr(img, "n_frames", 1)
    try:
        if frames > 1:
            img.seek(0)
        if draft_short_side is not None and fmt in ("JPEG", "MPO"):
            img.draft("RGB", draft_request((w, h), draft_short_side))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except InputError:
        raise
    except Exception as exc:  # truncated data, corrupt streams, decoder errors
        raise InputError(ErrorCode.undecodable, f"cannot decode {fmt} data: {type(exc).__name__}: {exc}") from None
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:
        pass  # a corrupt EXIF block must not cost the upload; keep the stored orientation
    try:
        rgb = _to_rgb(img)
    except Exception as exc:
        raise InputError(ErrorCode.undecodable, f"cannot convert mode {img.mode} to RGB: {exc}") from None
    return DecodedImage(rgb, fmt, (w, h), frames)
