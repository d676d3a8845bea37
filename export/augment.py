"""UniversalFakeDetect's training-time augmentation, for ``python -m export embed --augment K``.

UFD's ``data/datasets.py`` builds its training transform as, in this order:

1. ``custom_resize``: torchvision ``Resize(loadSize=256)`` of the shortest side, bilinear;
2. ``data_augment``: with p=0.5 a Gaussian blur, sigma ~ U[0, 3), scipy's
   ``gaussian_filter`` per channel on the uint8 array (result stored as uint8);
   then with p=0.5 a JPEG round trip at a quality drawn uniformly from 30..100
   (the encoder, OpenCV or Pillow, drawn at random);
3. ``RandomCrop(224)``; 4. ``RandomHorizontalFlip()`` (p=0.5);
5. ``ToTensor`` and ``Normalize`` with CLIP's mean/std.

:func:`augmented_input` runs those steps for the ``ufd`` preprocessing mode
(crop = the bundle's ``image_size``). For the ``clip`` mode, step 1 is that
mode's own resize (shortest side to ``image_size``, its interpolation) and step
3 a random ``image_size`` crop of the result, so the augmented copies are at
the scale the mode serves. Steps 2, 4 and 5 are the same in both.

Deviations, each for a reason:

* JPEG is always encoded by Pillow: OpenCV is not a dependency, and both
  encode with libjpeg at the given quality and 4:2:0 chroma subsampling.
* An image smaller than the crop after step 1 (only possible with
  ``load_size=0``, i.e. no resize) is zero-padded as ``CenterCrop`` does,
  where torchvision's ``RandomCrop`` would raise.
* UFD draws a fresh augmentation every epoch; ``--augment K`` embeds K fixed
  draws per image (the encoder is frozen, so embeddings are computed once).
* UFD also degrades its validation images (blur sigma 1.5, JPEG 65 when the
  probabilities are 1); here validation and test images are never augmented.

Every draw comes from a ``numpy.random.Generator`` seeded per image and copy
(:func:`copy_rng`), so a rerun or another shard reproduces the same copies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import gaussian_filter

from schemas import Preprocess
from worker.ingest.preprocess import normalize, resized_size


class AugmentSpec(BaseModel):
    """UFD's augmentation parameters (its ``options/base_options.py`` defaults), recorded in the embeddings' meta."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    recipe: str = "ufd-train"
    load_size: int = Field(256, ge=0, description="ufd mode: shortest side resized to this first (UFD's loadSize, bilinear); 0 = native.")
    blur_prob: float = Field(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = Field(0.5, ge=0, le=1)
    jpeg_quality: tuple[int, int] = Field((30, 100), description="Inclusive range; each integer equally likely.")
    flip_prob: float = Field(0.5, ge=0, le=1)
    jpeg_encoder: str = "pillow"


def copy_rng(rel: str, copy: int, seed: int) -> np.random.Generator:
    """The generator for augmented copy ``copy`` of the image at ``rel``: independent of order, shard and thread."""
    digest = hashlib.sha256(f"augment:{seed}:{copy}:{rel}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """UFD's blur: scipy ``gaussian_filter`` on each channel, written back into a uint8 array."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    for c in range(3):
        gaussian_filter(out[:, :, c], output=out[:, :, c], sigma=sigma)
    return out


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """UFD's ``pil_jpg``: encode at ``quality``, decode back to RGB uint8."""
    buf = BytesIO()
    Image.fromarray(rgb).save(buf, format="jpeg", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"))


def _pad_to(img: Image.Image, size: int) -> Image.Image:
    """Zero padding as torchvision's CenterCrop places it: left/top (size - side) // 2, the rest right/bottom."""
    canvas = Image.new(img.mode, (max(img.width, size), max(img.height, size)))
    canvas.paste(img, ((canvas.width - img.width) // 2, (canvas.height - img.height) // 2))
    return canvas


def working_scale(img: Image.Image, pre: Preprocess, spec: AugmentSpec) -> Image.Image:
    """Step 1: UFD's resize to load_size (ufd mode) or the clip mode's own shortest-side resize (without its crop). Idempotent."""
    if pre.mode == "ufd":
        if not spec.load_size:
            return img
        new = resized_size(img.width, img.height, spec.load_size)
        return img if new == img.size else img.resize(new, Image.Resampling.BILINEAR)
    new = resized_size(img.width, img.height, pre.image_size)
    if new == img.size:
        return img
    return img.resize(new, Image.Resampling.BICUBIC if pre.interpolation == "bicubic" else Image.Resampling.BILINEAR)


@dataclass(frozen=True)
class Draw:
    """One draw of the random choices, in UFD's order: blur (p, sigma), JPEG (p, quality), crop position, flip."""

    blur_sigma: float | None
    jpeg_quality: int | None
    top: int
    left: int
    flip: bool


def draw(size: tuple[int, int], crop: int, rng: np.random.Generator, spec: AugmentSpec) -> Draw:
    """The random choices for an image of ``size`` (w, h) at the working scale."""
    sigma = None
    if rng.random() < spec.blur_prob:
        lo, hi = spec.blur_sigma
        sigma = float(rng.random() * (hi - lo) + lo)
    quality = None
    if rng.random() < spec.jpeg_prob:
        quality = int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1))
    w, h = max(size[0], crop), max(size[1], crop)
    top = int(rng.integers(0, h - crop + 1))
    left = int(rng.integers(0, w - crop + 1))
    return Draw(sigma, quality, top, left, bool(rng.random() < spec.flip_prob))


def apply(img: Image.Image, pre: Preprocess, d: Draw, spec: AugmentSpec) -> Image.Image:
    """UFD's training transform with the choices ``d`` fixed, up to (not including) ToTensor/Normalize: an S x S RGB image."""
    rgb = np.asarray(working_scale(img, pre, spec).convert("RGB"))
    if d.blur_sigma is not None:
        rgb = gaussian_blur(rgb, d.blur_sigma)
    if d.jpeg_quality is not None:
        rgb = jpeg_round_trip(rgb, d.jpeg_quality)
    out = Image.fromarray(rgb)
    size = pre.image_size
    if out.width < size or out.height < size:
        out = _pad_to(out, size)
    out = out.crop((d.left, d.top, d.left + size, d.top + size))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if d.flip else out


def augmented_image(img: Image.Image, pre: Preprocess, rng: np.random.Generator, spec: AugmentSpec | None = None) -> Image.Image:
    """One random draw of UFD's training transform: an S x S RGB image."""
    spec = spec or AugmentSpec()
    scaled = working_scale(img, pre, spec)
    return apply(scaled, pre, draw(scaled.size, pre.image_size, rng, spec), spec)  # working_scale is idempotent: apply's own call is a no-op


def augmented_input(img: Image.Image, pre: Preprocess, rng: np.random.Generator, spec: AugmentSpec | None = None) -> np.ndarray:
    """The backbone's input for one augmented copy: float32 (3, S, S), normalised like the served input."""
    return normalize(np.asarray(augmented_image(img, pre, rng, spec)), pre)


__all__ = ["AugmentSpec", "Draw", "apply", "augmented_image", "augmented_input", "copy_rng", "draw", "gaussian_blur", "jpeg_round_trip", "working_scale"]
