"""The backbone's preprocessing modes, reproduced with Pillow and numpy (no torch).

A bundle names its mode (``manifest.backbone.preprocess.mode``) and
:func:`clip_input` dispatches on it, so the worker, ``python -m export embed``
(hence training) and ``python -m export eval`` all run this one function:

* ``clip``: open_clip's eval transform (below).
* ``ufd``: UniversalFakeDetect's ``validate.py`` test transform:
  ``CenterCrop(S)`` on the image at native resolution (no resize), then
  ``ToTensor`` and ``Normalize``. torchvision's ``CenterCrop`` zero-pads an
  image smaller than the crop (left/top pad ``(S - w) // 2``, the rest
  right/bottom) before cropping; :func:`center_crop_or_pad` does the same.
  Such a bundle never uses JPEG draft decoding (the manifest forbids it), since
  a DCT-downscaled JPEG would show the crop other pixels.

clip mode: open_clip (``image_transform(is_train=False, resize_mode="shortest")``) does:
torchvision ``Resize(S, bicubic, antialias)`` on the shortest side, which for a
Pillow image is ``Image.resize`` with the long side ``int(S * long / short)``;
``CenterCrop(S)`` with offsets ``int(round((H - S) / 2))``; ``ToTensor`` (/255)
and ``Normalize(mean, std)``. Each step below mirrors one of those, so the
embeddings the worker computes match the ones the heads were trained on; a test
checks it against open_clip itself on real photographs.

Memory: an extreme aspect ratio makes the shortest-side resize enormous (a
1,900,000 x 8 PNG of 15 KB would become 53M x 224, 36 GB) although only its
centre crop is kept. Above :data:`MAX_RESIZED_AREA` crops the resize goes
straight to the crop (:func:`resize_to_crop`): the same two resampling passes
on just the source region under the crop, so the pixels are those of
resize-then-crop (within one level of float rounding, on under 1% of them) and
the intermediate is never made. Ordinary photographs (up to 4:1) keep the
exact full-image form.

One deliberate difference: images are converted to RGB *before* resizing (in
:mod:`worker.ingest.decode`), where open_clip converts after. For RGB inputs (every
photograph) the two are identical; for palette or alpha images ours is the
better-defined order (bicubic on colours, not palette indices).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from schemas import Preprocess

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_FILTER_SUPPORT = {Image.Resampling.BICUBIC: 2.0, Image.Resampling.BILINEAR: 1.0}
#: Largest resized image, in crops (size x size), made before cropping; above it the resize targets the crop directly.
MAX_RESIZED_AREA = 4


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after torchvision's shortest-side resize to ``size``."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """torchvision's CenterCrop box (left, top, right, bottom); Python's round, as theirs."""
    left = round((width - crop) / 2.0)
    top = round((height - crop) / 2.0)
    return left, top, left + crop, top + crop


def resize_and_crop(img: Image.Image, cfg: Preprocess) -> Image.Image:
    """clip mode's geometry: shortest-side resize then centre crop."""
    w, h = img.size
    new = resized_size(w, h, cfg.image_size)
    if new[0] * new[1] > MAX_RESIZED_AREA * cfg.image_size * cfg.image_size:
        return resize_to_crop(img, cfg.image_size, _RESAMPLE[cfg.interpolation])
    if new != (w, h):
        img = img.resize(new, _RESAMPLE[cfg.interpolation])
    if img.size != (cfg.image_size, cfg.image_size):
        img = center_crop_or_pad(img, cfg.image_size)
    return img


def resize_to_crop(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """The centre ``size`` crop of the shortest-side resize, computed from the source region it covers only.

    Pillow's full-image resize runs a horizontal pass, rounds to 8 bits, then a
    vertical pass. This does the same two passes in the same order on the rows
    and columns the crop needs (plus the filter's reach): first the source rows
    under the crop, resized across to just the crop's columns (``box``), then
    those resized down or up to just the crop's rows. Each output pixel sees the
    same source pixels with the same weights (up to float rounding of the
    window centres), and no pass ever holds more than ``size`` columns.
    (A single ``resize(box=...)`` would not do: Pillow then picks the vertical
    pass first for tall images, which rounds differently.)
    """
    w, h = img.size
    new_w, new_h = resized_size(w, h, size)
    left, top, _, _ = center_crop_box(new_w, new_h, size)
    sx, sy = w / new_w, h / new_h
    reach = _FILTER_SUPPORT[resample] * max(sy, 1.0) + 2
    y0 = max(0, math.floor(top * sy - reach))
    y1 = min(h, math.ceil((top + size) * sy + reach))
    rows = img if (y0, y1) == (0, h) else img.crop((0, y0, w, y1))
    across = rows.resize((size, y1 - y0), resample, box=(left * sx, 0, (left + size) * sx, y1 - y0))
    return across.resize((size, size), resample, box=(0, top * sy - y0, size, (top + size) * sy - y0))


def native_center_crop(img: Image.Image, cfg: Preprocess) -> Image.Image:
    """ufd mode's geometry: torchvision ``CenterCrop(S)`` at native resolution, no resize."""
    if img.size == (cfg.image_size, cfg.image_size):
        return img
    return center_crop_or_pad(img, cfg.image_size)


#: Geometry of each preprocessing mode: RGB image -> S x S RGB image.
GEOMETRY = {"clip": resize_and_crop, "ufd": native_center_crop}


def geometry(img: Image.Image, cfg: Preprocess) -> Image.Image:
    """The S x S crop the mode ``cfg.mode`` shows the backbone (before normalisation)."""
    return GEOMETRY[cfg.mode](img, cfg)


def center_crop_or_pad(img: Image.Image, size: int) -> Image.Image:
    """torchvision's CenterCrop: where the image is smaller than the crop, zero-pad first.

    torchvision pads a short axis left/top by ``(size - w) // 2`` and right/bottom
    by the rest, with fill 0 (black), and crops a long one at
    ``round((w - size) / 2)`` (:func:`center_crop_box`). Computed per axis on
    the part of the image that lands in the crop, so a 1,000,000 x 8 image costs
    a 224 x 8 copy, not a padded 1,000,000 x 224 canvas.
    """
    w, h = img.size
    if w >= size and h >= size:
        return img.crop(center_crop_box(w, h, size))
    left = round((w - size) / 2.0) if w >= size else 0
    top = round((h - size) / 2.0) if h >= size else 0
    cw, ch = min(w, size), min(h, size)
    canvas = Image.new(img.mode, (size, size))
    canvas.paste(img.crop((left, top, left + cw, top + ch)), ((size - cw) // 2, (size - ch) // 2))
    return canvas


def normalize(rgb: np.ndarray, cfg: Preprocess) -> np.ndarray:
    """uint8 HWC -> float32 CHW (C-contiguous), scaled to [0,1] then standardised per channel.

    The same float32 operations in the same order as torchvision's ToTensor
    (``/ 255``) and Normalize (``- mean``, ``/ std``), so the result is
    bit-identical to theirs; done in place in one preallocated CHW buffer,
    which is 4x faster than the expression form (0.11 ms vs 0.47 ms at
    224 x 224) and leaves the array contiguous for the batch stack.
    """
    mean = np.asarray(cfg.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(cfg.std, dtype=np.float32).reshape(3, 1, 1)
    hwc = np.asarray(rgb)
    out = np.empty((3, *hwc.shape[:2]), dtype=np.float32)
    np.copyto(out, hwc.transpose(2, 0, 1), casting="unsafe")
    out /= np.float32(255.0)
    out -= mean
    out /= std
    return out


def clip_input(img: Image.Image, cfg: Preprocess) -> np.ndarray:
    """The backbone's input for one RGB image in the bundle's mode: float32 (3, S, S)."""
    return normalize(np.asarray(geometry(img, cfg)), cfg)


def native_crop(img: Image.Image, size: int) -> np.ndarray:
    """Centre crop at native resolution for frequency heads: float32 (3, size, size) in [0, 1].

    Never resized: resampling would erase the upsampling traces such heads look
    for. An image smaller than ``size`` is mirror-padded (reflection keeps local
    statistics closer to the image's own than a constant border would).
    """
    w, h = img.size
    if w > size or h > size:  # crop before the array copy: a 40 MP image is 120 MB as an array, its crop 12 KB
        left = round((w - size) / 2.0) if w > size else 0
        top = round((h - size) / 2.0) if h > size else 0
        img = img.crop((left, top, left + min(w, size), top + min(h, size)))
    arr = np.asarray(img, dtype=np.uint8)
    h, w = arr.shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        widths = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
        arr = np.pad(arr, widths, mode="reflect") if h > ph and w > pw else np.pad(arr, widths, mode="symmetric")
        h, w = arr.shape[:2]
    left, top, right, bottom = center_crop_box(w, h, size)
    crop = arr[top:bottom, left:right]
    return np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
