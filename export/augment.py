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


def _random_crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """torchvision ``RandomCrop(size)``: a uniformly placed size x size window (zero-padded first if the image is smaller)."""
    if img.width < size or img.height < size:
        img = _pad_to(img, size)
    top = int(rng.integers(0, img.height - size + 1))
    left = int(rng.integers(0, img.width - size + 1))
    return img.crop((left, top, left + size, top + size))


def _pad_to(img: Image.Image, size: int) -> Image.Image:
    """Zero padding as torchvision's CenterCrop places it: left/top (size - side) // 2, the rest right/bottom."""
    canvas = Image.new(img.mode, (max(img.width, size), max(img.height, size)))
    canvas.paste(img, ((canvas.width - img.width) // 2, (canvas.height - img.height) // 2))
    return canvas


def _working_scale(img: Image.Image, pre: Preprocess, spec: AugmentSpec) -> Image.Image:
    """Step 1: UFD's resize to load_size (ufd mode) or the clip mode's own shortest-side resize (without its crop)."""
    if pre.mode == "ufd":
        if not spec.load_size:
            return img
        new = resized_size(img.width, img.height, spec.load_size)
        return img if new == img.size else img.resize(new, Image.Resampling.BILINEAR)
    new = resized_size(img.width, img.height, pre.image_size)
    if new == img.size:
        return img
    return img.resize(new, Image.Resampling.BICUBIC if pre.interpolation == "bicubic" else Image.Resampling.BILINEAR)


def augmented_image(img: Image.Image, pre: Preprocess, rng: np.random.Generator, spec: AugmentSpec | None = None) -> Image.Image:
    """One draw of UFD's training transform up to (not including) ToTensor/Normalize: an S x S RGB image."""
    spec = spec or AugmentSpec()
    rgb = np.asarray(_working_scale(img, pre, spec).convert("RGB"))
    if rng.random() < spec.blur_prob:
        lo, hi = spec.blur_sigma
        rgb = gaussian_blur(rgb, float(rng.random() * (hi - lo) + lo))
    if rng.random() < spec.jpeg_prob:
        lo_q, hi_q = spec.jpeg_quality
        rgb = jpeg_round_trip(rgb, int(rng.integers(lo_q, hi_q + 1)))
    out = _random_crop(Image.fromarray(rgb), pre.image_size, rng)
    if rng.random() < spec.flip_prob:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def augmented_input(img: Image.Image, pre: Preprocess, rng: np.random.Generator, spec: AugmentSpec | None = None) -> np.ndarray:
    """The backbone's input for one augmented copy: float32 (3, S, S), normalised like the served input."""
    return normalize(np.asarray(augmented_image(img, pre, rng, spec)), pre)


__all__ = ["AugmentSpec", "augmented_image", "augmented_input", "copy_rng", "gaussian_blur", "jpeg_round_trip"]
