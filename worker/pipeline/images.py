"""One image's bytes to the tensors every bundle of its batch reads (runs on a decode thread).

Decoded once whatever the number of bundles: the primary's backbone input and
native crop, the shadow's own tensors when its preprocessing differs, and the
pHash when the near-duplicate index is on. Draft (DCT-domain) JPEG decoding is
used only when no bundle could see the difference (:attr:`Models.draft_side`).
"""

from __future__ import annotations

import time

from schemas import ErrorCode
from worker.cache.phash import phash
from worker.errors import InputError
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.preprocess import clip_input, native_crop
from worker.model.rollout import Models
from worker.pipeline.items import Prepared


def prepare_image(data: bytes, models: Models, limits: DecodeLimits, with_phash: bool) -> Prepared:
    """Decode under ``limits`` and preprocess for every bundle of ``models``; ``InputError`` for bad input."""
    t0 = time.perf_counter()
    primary, shadow = models.primary, models.shadow
    own = shadow if shadow is not None and not models.shadow_same_input else None
    try:
        img = decode_image(data, limits, models.draft_side).image
        pixels = clip_input(img, primary.preprocess)
        native = native_crop(img, primary.native_crop_size) if primary.native_crop_size else None
        hashed = phash(img) if with_phash else None
        shadow_pixels = clip_input(img, own.preprocess) if own else None
        shadow_native = native_crop(img, own.native_crop_size) if own and own.native_crop_size else None
    except InputError:
        raise
    except Exception as exc:  # a decoder or resampler blowing up on odd data is still bad input
        raise InputError(ErrorCode.undecodable, f"image processing failed: {type(exc).__name__}: {exc}") from None
    return Prepared(pixels, native, (time.perf_counter() - t0) * 1000, hashed, shadow_pixels, shadow_native)
