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
from worker.ingest.provenance.watermark import MATCH_AGREEMENT, PAYLOADS, _undo_orientation, read_watermark, score, tile_windows

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
    unmarked = read_watermark(Image.fromarray(rgb), None, LIMITS)
    assert unmarked.status is SignalStatus.absent and unmarked.tiles == LIMITS.watermark_probe_tiles  # settled by the first look


def test_marked_wide_image_with_a_flat_band_is_still_found() -> None:
    """A first look confined to one tile row of a wide image could land in a flat area; windows spread across it."""
    rgb = photos()[0].copy()
    rgb = np.ascontiguousarray(np.concatenate([rgb, rgb, rgb, rgb, rgb], axis=1))  # 5x as wide as tall
    rgb[rgb.shape[0] // 2 - 40 : rgb.shape[0] // 2 + 40] = 128  # a flat grey stripe across the middle
    sig = read_watermark(Image.fromarray(embed(rgb, "sdxl")), None, LIMITS)
    assert sig.payload == "sdxl", sig


def test_windows_spread_and_respect_the_cap() -> None:
    assert tile_windows(10, 10, 1000) == [(0, 10, 0, 10)]
    windows = tile_windows(378, 504, 4096)  # a 12 MP photo (4032 x 3024): 378 tile rows of 504 tiles
    assert sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in windows) <= 4096 and len(windows) == 8
    assert windows[0][0] == 0 and windows[-1][1] == 378
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(windows))  # no two windows share a tile row
    probe = tile_windows(378, 504, 512)
    assert len({c0 for _, _, c0, _ in probe}) > 1  # small windows zig-zag across the width
    assert len({(r1 - r0, c1 - c0) for r0, r1, c0, c1 in probe}) == 1  # one size: they stack into one array


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


def test_haar_ll_is_bit_for_bit_pywavelets() -> None:
    """The decoder's LL band is the reference decoder's pywt.dwt2 result exactly (ties at the 18/36 boundary depend on the last bit)."""
    import pywt

    from worker.ingest.provenance.watermark import haar_ll, u_plane

    rng = np.random.default_rng(3)
    for h, w in ((8, 8), (64, 200), (512, 384)):
        plane = u_plane(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).astype(np.float64)
        assert np.array_equal(haar_ll(plane), pywt.dwt2(plane, "haar")[0])


def test_u_plane_is_opencvs_fixed_point_formula_for_every_colour() -> None:
    """The float32 evaluation equals the integer formula (OpenCV's 8-bit BGR->YUV U): every B with R, G on a grid incl. 0 and 255."""
    from worker.ingest.provenance.watermark import u_plane

    levels = np.unique(np.r_[np.arange(0, 256, 3), 255])
    r, g, b = (c.astype(np.int32) for c in np.meshgrid(levels, levels, np.arange(256), indexing="ij"))
    y = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
    expected = np.clip(((b - y) * 8061 + (128 << 14) + (1 << 13)) >> 14, 0, 255)
    rgb = np.stack([r, g, b], axis=-1).astype(np.uint8)
    assert np.array_equal(u_plane(rgb), expected)
