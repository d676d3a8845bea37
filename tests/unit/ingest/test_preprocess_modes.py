"""The preprocessing modes a bundle can name, implemented once and torch-free (worker/ingest/preprocess.py).

Parity with torchvision and open_clip themselves is in tests/export/test_preprocess_parity.py; here the
geometry is checked against hand-computed pixel positions, and the manifest rules against misuse.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from schemas import Preprocess
from worker.ingest.preprocess import center_crop_or_pad, clip_input, geometry, native_center_crop, resize_and_crop

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _cfg(mode: str, size: int = 8) -> Preprocess:
    return Preprocess(mode=mode, image_size=size, mean=MEAN, std=STD)  # type: ignore[arg-type]


def _gradient(w: int, h: int) -> Image.Image:
    """Every pixel distinct: R = x, G = y, B = (x + y) % 256, so a crop says exactly where it came from."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    return Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8))


def test_ufd_crops_native_pixels_without_resizing() -> None:
    img = _gradient(40, 30)
    out = np.asarray(native_center_crop(img, _cfg("ufd")))
    # torchvision's offsets: round((40 - 8) / 2) = 16, round((30 - 8) / 2) = 11
    assert np.array_equal(out, np.asarray(img)[11:19, 16:24])


def test_ufd_zero_pads_images_smaller_than_the_crop_like_torchvision() -> None:
    img = _gradient(5, 3)  # pad left (8-5)//2 = 1, right 2; top (8-3)//2 = 2, bottom 3
    out = np.asarray(native_center_crop(img, _cfg("ufd")))
    assert out.shape == (8, 8, 3)
    assert np.array_equal(out[2:5, 1:6], np.asarray(img))
    mask = np.ones((8, 8), bool)
    mask[2:5, 1:6] = False
    assert not out[mask].any(), "padding must be zeros (black), as torchvision's CenterCrop fills"


def test_ufd_pads_only_the_short_side_and_crops_the_long_one() -> None:
    img = _gradient(20, 4)  # width cropped at round(12 / 2) = 6, height padded 2 top, 2 bottom
    out = np.asarray(center_crop_or_pad(img, 8))
    assert np.array_equal(out[2:6], np.asarray(img)[:, 6:14])
    assert not out[:2].any() and not out[6:].any()


def test_clip_input_dispatches_on_the_mode() -> None:
    img = _gradient(40, 30)
    assert np.array_equal(np.asarray(geometry(img, _cfg("clip"))), np.asarray(resize_and_crop(img, _cfg("clip"))))
    assert np.array_equal(np.asarray(geometry(img, _cfg("ufd"))), np.asarray(native_center_crop(img, _cfg("ufd"))))
    a, b = clip_input(img, _cfg("clip")), clip_input(img, _cfg("ufd"))
    assert a.shape == b.shape == (3, 8, 8) and a.dtype == b.dtype == np.float32
    assert not np.allclose(a, b), "a resized view and a native crop of a 40x30 image must differ"


def test_draft_decoding_is_opt_in_and_never_for_ufd() -> None:
    assert _cfg("ufd").allow_draft is False
    assert _cfg("clip").allow_draft is False, "draft decoding is not the paper's pixels: only a bundle built with --allow-draft uses it"
    assert Preprocess(mode="clip", image_size=8, mean=MEAN, std=STD, allow_draft=True).allow_draft is True
    with pytest.raises(ValidationError, match="native-resolution"):
        Preprocess(mode="ufd", image_size=8, mean=MEAN, std=STD, allow_draft=True)
    # a manifest written by hand that forgets the field still gets draft off
    assert Preprocess.model_validate({"mode": "ufd", "image_size": 8, "mean": MEAN, "std": STD}).allow_draft is False


def test_manifests_without_a_mode_are_clip() -> None:
    old = Preprocess.model_validate({"image_size": 224, "resize_mode": "shortest", "interpolation": "bicubic", "mean": MEAN, "std": STD, "allow_draft": True})
    assert old.mode == "clip"


def test_ufd_crop_of_an_extreme_aspect_ratio_copies_only_the_crop() -> None:
    """A 200,000 x 4 strip: the result is the centre 8 columns, padded; no 200,000 x 8 canvas is built."""
    strip = Image.fromarray(np.tile(np.arange(200_000, dtype=np.uint32)[None, :, None] % 251, (4, 1, 3)).astype(np.uint8))
    out = np.asarray(center_crop_or_pad(strip, 8))
    left = round((200_000 - 8) / 2)
    assert np.array_equal(out[2:6], np.asarray(strip)[:, left : left + 8])
    assert not out[:2].any() and not out[6:].any()
