"""The SD DWT-DCT watermark decoder on images marked by devkit's torch-free encoder.

That the decoder also reads what the *reference* encoder (invisible-watermark)
writes is tests/export/test_watermark_reference.py (it needs torch); its false
positive rate on real photographs is measured by ``python -m bench.provenance``.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from devkit.watermark import embed
from export.photos import load_rgb, photo_paths
from schemas.provenance import SignalStatus, Strength, WatermarkSignal
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.provenance import ProvenanceLimits, read_provenance
from worker.ingest.provenance.watermark import MATCH_AGREEMENT, PAYLOADS, _undo_orientation, band_rows, read_watermark, score

LIMITS = ProvenanceLimits()


def photos() -> list[np.ndarray]:
    paths = photo_paths(include_grey=False)[:4]
    assert paths, "scikit-image's sample photographs are missing"
    return [np.asarray(load_rgb(p)) for p in paths]


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def through_worker(data: bytes, draft: int | None = None) -> WatermarkSignal:
    """Decode as the worker does, then read provenance with those pixels."""
    decoded = decode_image(data, DecodeLimits(), draft)
    sig = read_provenance(data, LIMITS, image=decoded.image).signals[3]
    assert isinstance(sig, WatermarkSignal)
    return sig


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_each_payload_is_read_from_a_marked_png(payload: str) -> None:
    for rgb in photos():
        sig = through_worker(png(embed(rgb, payload)))
        assert sig.status is SignalStatus.found and sig.payload == payload, sig
        assert sig.strength is Strength.watermark and sig.ai_declared
        assert sig.agreement is not None and sig.agreement >= MATCH_AGREEMENT


def test_unmarked_photographs_are_absent_near_chance() -> None:
    for rgb in photos():
        sig = through_worker(png(rgb))
        assert sig.status is SignalStatus.absent and sig.payload is None and not sig.ai_declared
        assert sig.agreement is not None and abs(sig.agreement - 0.5) < 0.06


def test_flat_image_scores_exactly_chance() -> None:
    """Every tile of a flat image reads 0; the balanced agreement makes that 0.5 for any payload, however its bits are mixed."""
    sig = read_watermark(Image.new("RGB", (512, 512), (90, 120, 200)), None, LIMITS)
    assert sig.agreement == 0.5 and sig.status is SignalStatus.absent


def test_lossless_webp_and_4_4_4_jpeg_keep_it_subsampled_jpeg_is_not_checked() -> None:
    marked = Image.fromarray(embed(photos()[0], "sdxl"))
    webp = io.BytesIO()
    marked.save(webp, "WEBP", lossless=True)
    assert through_worker(webp.getvalue()).payload == "sdxl"
    jpeg444 = io.BytesIO()
    marked.save(jpeg444, "JPEG", quality=95, subsampling=0)
    assert through_worker(jpeg444.getvalue()).payload == "sdxl"
    jpeg420 = io.BytesIO()
    marked.save(jpeg420, "JPEG", quality=95)
    sig = through_worker(jpeg420.getvalue())
    assert sig.status is SignalStatus.not_checked and "chroma" in (sig.detail or "")
    lossy = io.BytesIO()
    marked.save(lossy, "WEBP", quality=95)
    assert through_worker(lossy.getvalue()).status is SignalStatus.not_checked


def test_draft_decoded_jpeg_is_not_checked() -> None:
    """The worker decodes JPEGs downscaled (draft mode) when no head needs native pixels: the tile grid is gone."""
    rgb = np.ascontiguousarray(np.tile(photos()[0], (2, 2, 1)))
    buf = io.BytesIO()
    Image.fromarray(embed(rgb, "sd2")).save(buf, "JPEG", quality=95, subsampling=0)
    sig = through_worker(buf.getvalue(), draft=224)
    assert sig.status is SignalStatus.not_checked and "native-resolution" in (sig.detail or "")
    assert through_worker(buf.getvalue()).payload == "sd2"


def test_small_images_are_not_checked_not_absent() -> None:
    small = embed(photos()[0][:200, :200], "sdxl")
    sig = through_worker(png(np.ascontiguousarray(small)))
    assert sig.status is SignalStatus.not_checked and "minimum" in (sig.detail or "")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_undone(orientation: int) -> None:
    """The decode step rotates by EXIF orientation; the decoder reads the stored (un-rotated) pixel grid."""
    marked = Image.fromarray(embed(np.ascontiguousarray(photos()[0][:320, :384]), "sdxl"))
    exif = marked.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    marked.save(buf, "PNG", exif=exif.tobytes())
    sig = through_worker(buf.getvalue())
    assert sig.payload == "sdxl", (orientation, sig)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_undo_orientation_inverts_pillows_transpose(orientation: int) -> None:
    from worker.ingest.decode import _ORIENTATION

    a = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    shown = np.asarray(Image.fromarray(a).transpose(_ORIENTATION[orientation])) if orientation in _ORIENTATION else a
    assert np.array_equal(_undo_orientation(shown, orientation), a)


def test_crop_and_resize_erase_it() -> None:
    marked = embed(photos()[0], "sdxl")
    assert read_watermark(Image.fromarray(np.ascontiguousarray(marked[3:, 5:])), None, LIMITS).status is SignalStatus.absent
    resized = Image.fromarray(marked).resize((marked.shape[1] * 3 // 4, marked.shape[0] * 3 // 4))
    assert read_watermark(resized, None, LIMITS).status is SignalStatus.absent


def test_large_images_read_a_bounded_number_of_tiles() -> None:
    rgb = np.ascontiguousarray(np.tile(photos()[0], (4, 4, 1)))  # 2048 x 2048 = 65,536 tiles
    marked = Image.fromarray(embed(rgb, "sd1"))
    sig = read_watermark(marked, None, ProvenanceLimits(watermark_max_tiles=8192))
    assert sig.payload == "sd1" and sig.tiles is not None and 4096 <= sig.tiles <= 8192


def test_band_layout_spreads_bands_and_respects_the_cap() -> None:
    assert band_rows(10, 10, 1000) == [(0, 10)]
    bands = band_rows(375, 504, 16_384)  # a 12 MP photo: 375 tile rows of 504 tiles
    assert sum(b - a for a, b in bands) * 504 <= 16_384
    assert bands[0][0] == 0 and bands[-1][1] == 375 and len(bands) == 8
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(bands))


def test_score_counts_majority_bit_errors_like_the_reference_decoder() -> None:
    payload = PAYLOADS["sd2"]
    index = np.arange(32 * 5)
    tiles = payload[index % 32].copy()
    assert score(tiles, index, payload) == (1.0, 0)
    tiles[index % 32 == 3] ^= True  # every vote for bit 3 wrong
    agreement, errors = score(tiles, index, payload)
    assert errors == 1 and 0.9 < agreement < 1.0


def test_non_rgb_input_is_not_checked() -> None:
    assert read_watermark(Image.new("L", (300, 300)), None, LIMITS).status is SignalStatus.not_checked
    assert read_watermark(np.zeros((300, 300), np.uint8), None, LIMITS).status is SignalStatus.not_checked
    assert read_watermark(None, None, LIMITS).status is SignalStatus.not_checked
