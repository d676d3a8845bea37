"""``worker.ingest.preprocess.normalize`` (optimised in place) stays bit-identical to torchvision's ToTensor + Normalize."""

from __future__ import annotations

import numpy as np
import pytest
from torchvision.transforms import functional as F

from export.clip import TINY, load_encoder
from worker.ingest.preprocess import normalize


@pytest.mark.parametrize("shape", [(224, 224, 3), (336, 336, 3), (5, 7, 3)])
def test_normalize_is_bit_identical_to_torchvision(shape: tuple[int, int, int]) -> None:
    _, pre, _ = load_encoder(TINY, None, random_weights=True)
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    expected = F.normalize(F.to_tensor(rgb), list(pre.mean), list(pre.std)).numpy()
    got = normalize(rgb, pre)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got, expected), f"max |diff| {np.abs(got - expected).max()}"
    assert got.flags["C_CONTIGUOUS"], "the batch stack should not need another copy"
