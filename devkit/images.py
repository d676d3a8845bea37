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
