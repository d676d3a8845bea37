"""Any Pillow mode to 8-bit RGB, in bands of rows so that no full-size temporary is made.

The conversion rules (why each mode is converted the way it is) are those of
:func:`to_rgb`; this module's concern is memory. A 40 MP float TIFF is 160 MB
decoded; converting it the obvious way (``np.asarray(img, dtype=np.float64)``,
``nan_to_num``, ``arr / hi * 255``, ``clip``) makes four full float64 copies,
about 1.3 GB for one upload, and an RGBA image composited over white the
obvious way makes a second RGBA image and a third RGB one. Here every
full-size array is either the decoded image itself or the 8-bit result; the
temporaries are one band of at most :data:`BAND_PIXELS` pixels. The arithmetic
is the same as the whole-image form (float64 per band), so the pixels are
bit-identical to it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

#: Pixels per band: a float64 band is 8 MB.
BAND_PIXELS = 1 << 20
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WHITE = (255, 255, 255, 255)


def _bands(img: Image.Image) -> Iterator[tuple[int, int]]:
    w, h = img.size
    step = max(1, BAND_PIXELS // max(1, w))
    for top in range(0, h, step):
        yield top, min(h, top + step)


def _band_array(img: Image.Image, top: int, bottom: int) -> np.ndarray:
    return np.asarray(img.crop((0, top, img.width, bottom)))


def _clean(band: np.ndarray) -> np.ndarray:
    """float64 copy of one band with NaN and infinities zeroed (float TIFFs carry them)."""
    return np.nan_to_num(band.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _deep_to_grey(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8-bit ``L``, scaled to the mode's range rather than clipped."""
    mode = img.mode
    if mode.startswith("I;16"):
        hi = 65535.0
    else:
        top = 0.0
        for t, b in _bands(img):
            top = max(top, float(_clean(_band_array(img, t, b)).max(initial=0.0)))
        if mode == "F":
            hi = max(top, 1.0)  # floats in [0, 1] are the usual convention; larger ranges are scaled to their maximum
        else:
            hi = 255.0 if top <= 255 else (65535.0 if top <= 65535 else top)
    out = np.empty((img.height, img.width), dtype=np.uint8)
    for t, b in _bands(img):
        band = _clean(_band_array(img, t, b))
        np.clip(band / hi * 255.0 + 0.5, 0, 255, out=band)
        out[t:b] = band.astype(np.uint8)
    return Image.fromarray(out, "L")


def _composite_over_white(img: Image.Image) -> Image.Image:
    """Alpha (or palette transparency) composited over white, band by band."""
    out = Image.new("RGB", img.size)
    for t, b in _bands(img):
        band = img.crop((0, t, img.width, b)).convert("RGBA")
        background = Image.new("RGBA", band.size, _WHITE)
        out.paste(Image.alpha_composite(background, band).convert("RGB"), (0, t))
    return out


def to_rgb(img: Image.Image) -> Image.Image:
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
        return _deep_to_grey(img).convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        return _composite_over_white(img)
    return img.convert("RGB")
