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


def _ufd_transform(image_size: int):  # type: ignore[no-untyped-def]
    """UniversalFakeDetect's validate.py test transform, written as its code writes it."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711]),
        ]
    )


@pytest.fixture(scope="module")
def ufd_cfg():  # type: ignore[no-untyped-def]
    _, pre, _ = load_encoder(TINY, None, random_weights=True, preprocess_mode="ufd")
    return pre


@pytest.mark.parametrize("path", PHOTOS, ids=[p.name for p in PHOTOS])
def test_ufd_mode_matches_validate_py_on_sample_photographs(path, ufd_cfg) -> None:  # type: ignore[no-untyped-def]
    img = load_rgb(path)
    expected = _ufd_transform(ufd_cfg.image_size)(img).numpy()
    got = clip_input(img, ufd_cfg)
    assert got.shape == expected.shape == (3, 224, 224)
    assert np.max(np.abs(got - expected)) < 1e-5


@pytest.mark.parametrize("size", [(300, 451), (225, 224), (224, 224), (150, 100), (223, 225), (101, 300), (300, 101), (7, 9), (224, 1000)])
def test_ufd_mode_matches_torchvision_center_crop_including_zero_padding(size, ufd_cfg) -> None:  # type: ignore[no-untyped-def]
    """Odd offsets and images smaller than the crop: torchvision pads with zeros (left/top (S - w) // 2) before cropping."""
    base = load_rgb(PHOTOS[0]).resize((1200, 1200), Image.Resampling.BICUBIC)
    img = base.crop((0, 0, *size))
    expected = _ufd_transform(ufd_cfg.image_size)(img).numpy()
    got = clip_input(img, ufd_cfg)
    assert np.max(np.abs(got - expected)) < 1e-5
