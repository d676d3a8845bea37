"""Small distinct images made in code: cheap to make, decode and score."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def unique_jpegs(n: int, seed: int = 0, size: tuple[int, int] = (64, 48)) -> list[bytes]:
    """n small, distinct JPEGs (random colour fields: cheap to make, decode and score)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pattern_images(n: int, seed: int = 0, side: int = 224) -> list[bytes]:
    """n distinct PNGs of hard-edged stripes and checkerboards in random colours.

    Nothing like a photograph: their embeddings land far from any training set of photos (and of the synthetic
    generators' images), which is what a drift test needs from a "new kind of upload".
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((side, side))
    out = []
    for i in range(n):
        period = int(rng.integers(1, 12))
        mask = ((xx // period) % 2) if i % 2 == 0 else (((xx + yy) // period) % 2)
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        pixels = np.where(mask[..., None] == 1, a, b).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        out.append(buf.getvalue())
    return out
