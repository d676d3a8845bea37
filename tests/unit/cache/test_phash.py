"""The pHash and its band index: near for a re-encoded photo, and every hash within the distance shares a band."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from export.photos import load_rgb, photo_paths
from worker.cache.phash import band_layout, bands, hamming, phash


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_phash_is_close_for_a_re_encoded_photo_and_far_for_another_photo() -> None:
    a, b = (load_rgb(p) for p in photo_paths(include_grey=False)[:2])
    h = phash(a)
    near = phash(_jpeg(a.resize((a.width * 3 // 4, a.height * 3 // 4)), 50))
    assert hamming(h, near) <= 6
    assert hamming(h, phash(b)) > 16
    assert 0 <= h < 2**64


@pytest.mark.parametrize("distance", [0, 3, 6, 10])
def test_band_lookup_finds_every_hash_within_the_distance(distance: int) -> None:
    layout = band_layout(distance)
    assert sum(w for _, w in layout) == 64
    rng = np.random.default_rng(distance)
    for _ in range(200):
        h = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        flips = rng.choice(64, size=distance, replace=False) if distance else []
        other = h
        for bit in flips:
            other ^= 1 << int(bit)
        assert hamming(h, other) == distance
        assert any(x == y for x, y in zip(bands(h, layout), bands(other, layout), strict=True))
