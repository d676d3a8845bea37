"""The worker's numpy preprocessing reproduces open_clip's eval transform on real photographs."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
from PIL import Image

from export.clip import TINY, load_encoder, register_project_configs
from export.photos import load_rgb, photo_paths
from worker.ingest.preprocess import clip_input, resized_size

PHOTOS = photo_paths()


def _open_clip_transform(image_size: int):  # type: ignore[no-untyped-def]
    register_project_configs()
    return open_clip.image_transform(image_size, is_train=False)


@pytest.fixture(scope="module")
def preprocess_cfg():  # type: ignore[no-untyped-def]
    _, pre, _ = load_encoder(TINY, None, random_weights=True)
    return pre


def test_there_are_real_photographs_to_compare_on() -> None:
    assert len(PHOTOS) >= 10, "scikit-image sample photographs missing"


@pytest.mark.parametrize("path", PHOTOS, ids=[p.name for p in PHOTOS])
def test_matches_open_clip_on_sample_photographs(path, preprocess_cfg) -> None:  # type: ignore[no-untyped-def]
    img = load_rgb(path)
    expected = _open_clip_transform(preprocess_cfg.image_size)(img).numpy()
    got = clip_input(img, preprocess_cfg)
    assert got.shape == expected.shape == (3, preprocess_cfg.image_size, preprocess_cfg.image_size)
    assert got.dtype == np.float32
    # identical arithmetic up to float32 rounding (one 8-bit step is ~0.015 after normalisation)
    assert np.max(np.abs(got - expected)) < 1e-5


@pytest.mark.parametrize("size", [(300, 451), (451, 300), (225, 224), (224, 1000), (801, 333), (150, 100)])
def test_matches_open_clip_on_odd_geometries(size, preprocess_cfg) -> None:  # type: ignore[no-untyped-def]
    """Crops of a real photo at awkward sizes: rounding of resize and centre-crop offsets must agree."""
    base = load_rgb(PHOTOS[0]).resize((1200, 1200), Image.Resampling.BICUBIC)
    img = base.crop((0, 0, *size))
    expected = _open_clip_transform(preprocess_cfg.image_size)(img).numpy()
    got = clip_input(img, preprocess_cfg)
    assert np.max(np.abs(got - expected)) < 1e-5


def test_resized_size_follows_torchvision_int_truncation() -> None:
    assert resized_size(451, 300, 224) == (int(224 * 451 / 300), 224)
    assert resized_size(300, 451, 224) == (224, int(224 * 451 / 300))
