"""freq follows AIRL: the frequency stream sees only high-frequency residuals, and trains on blurred / JPEG'd crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.heads.freq import Freq, FreqConfig, HighPassDCT, dct_matrix, degrade, lowpass_mask
from tests.export.test_heads_export import FAST, toy_set


def test_flat_images_and_low_frequencies_give_no_frequency_input() -> None:
    size = 32
    stream = HighPassDCT(size, 1e-4, 0.25)
    stream.fit(torch.rand(16, 3, size, size))
    for level in (0.0, 0.2, 0.5, 0.9):
        flat = torch.full((1, 3, size, size), level)
        assert float(stream(flat).abs().max()) < 1e-6  # a constant image: nothing but DC, which is dropped
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random((1, 3, size, size)).astype(np.float32))
    base = stream(img)
    assert float(base[0, 0, 0, 0]) == 0.0 and float(base.abs().max()) > 1.0
    keep = lowpass_mask(size, 0.25)
    assert keep[0, 0] == 0 and keep[7, 0] == 0 and keep[8, 0] == 1  # u + v < 8 dropped at 32 px
    c = dct_matrix(size)
    low = 0.3 + 0.2 * np.outer(c[2], c[3]) + 0.2 * np.outer(c[0], c[7])  # brightness + two low-frequency patterns (u + v < 8)
    shifted = stream(img + torch.from_numpy(low.astype(np.float32)))
    assert float((shifted - base).abs().max()) < 1e-3 * float(base.abs().max())
    checker = (np.indices((size, size)).sum(0) % 2).astype(np.float32) * 0.1  # the highest frequency: kept
    assert float((stream(img + torch.from_numpy(checker)) - base).abs().max()) > 0.3


def test_degrade_draws_blur_and_jpeg_like_ufd() -> None:
    rng = np.random.default_rng(0)
    crops = torch.from_numpy(rng.random((200, 3, 32, 32)).astype(np.float32))
    same, n = degrade(crops, np.random.default_rng(1), FreqConfig(blur_prob=0.0, jpeg_prob=0.0))
    assert n == 0 and torch.equal(same, crops)
    blurred, n = degrade(crops[:20], np.random.default_rng(1), FreqConfig(blur_prob=1.0, jpeg_prob=0.0))
    assert n == 20
    stream = HighPassDCT(32, 1e-4, 0.25)
    assert float(stream.coefficients(blurred).abs().mean()) < 0.8 * float(stream.coefficients(crops[:20]).abs().mean())  # blur removes high frequencies
    _, n = degrade(crops, np.random.default_rng(2), FreqConfig())
    assert 0.65 < n / 200 < 0.85  # 1 - 0.5 * 0.5 of the crops blurred, JPEG'd or both


def test_fit_trains_the_frequency_stream_on_degraded_crops() -> None:
    data = toy_set()
    report = Freq(**{**FAST["freq"], "epochs": 3}).fit(data)
    assert all(0.5 < h["augmented"] < 1.0 for h in report.history)
    clean = Freq(**{**FAST["freq"], "epochs": 3, "blur_prob": 0.0, "jpeg_prob": 0.0}).fit(data)
    assert all(h["augmented"] == 0.0 for h in clean.history)
    assert report.history[-1]["loss"] != pytest.approx(clean.history[-1]["loss"])
