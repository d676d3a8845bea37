"""What a decode costs is bounded by what the file holds, not only by its declared pixel count.

One test per class of hostile file (devkit.corpus builds each): extreme aspect
ratios (the resize intermediate), TIFF strips/tiles (count and shared data),
bit depths and alpha (full-size temporaries), refused formats (no parser may
run), JPEG scans (counted by walking the segments), HEIF/AVIF containers
(declared sizes, grids, shared tiles, truncation). Memory is measured in a
fresh process (peak RSS over the decode, from /proc), so the numbers are the
allocator's, Pillow's C buffers included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devkit import corpus
from schemas import ErrorCode, Preprocess
from worker.errors import InputError
from worker.ingest import convert
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.jpeg_markers import jpeg_scan_count
from worker.ingest.preprocess import MAX_RESIZED_AREA, center_crop_box, native_crop, resize_and_crop, resized_size

LIMITS = DecodeLimits()
CLIP = Preprocess(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
MB = 1024 * 1024

_MEASURE = r"""
import json, sys
from pathlib import Path
from schemas import Preprocess
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.preprocess import clip_input

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
before = status("VmRSS")
out = {"before": before}
try:
    decoded = decode_image(data, DecodeLimits())
    clip_input(decoded.image, Preprocess(image_size=224, mean=(0.5,) * 3, std=(0.5,) * 3))
    out["size"] = decoded.image.size
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
out["peak_growth"] = status("VmHWM") - before
print(json.dumps(out))
"""


def _peak_growth(tmp_path: Path, data: bytes, address_space: int = 3 * 1024 * MB) -> dict:
    """Decode + preprocess ``data`` in a fresh process under an address-space cap; its peak RSS growth over the decode."""
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    cap = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({address_space}, {address_space}))\n"
    proc = subprocess.run([sys.executable, "-c", cap + _MEASURE, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- extreme aspect ratios ------------------------------------------------------------------------------------------


_THIN = {
    "png-wide": corpus.png_thin,
    "png-tall": lambda: corpus.png_thin(8, 1_900_000),
    "jpeg-wide": corpus.jpeg_thin,
    "jpeg-tall": lambda: corpus.jpeg_thin(8, 65_000),
    "gif-wide": corpus.gif_thin,
}


@pytest.mark.parametrize("name", sorted(_THIN))
def test_extreme_aspect_ratios_never_materialise_the_resize(name: str, tmp_path: Path) -> None:
    # Before: the 1,900,000 x 8 PNG resized to 53M x 224 (36 GB); the 65000 x 8 JPEG/GIF to 1.8M x 224 (1.7 GB peak here).
    data = _THIN[name]()
    assert len(data) < 20_000
    result = _peak_growth(tmp_path, data)
    assert "error" not in result, result
    w, h = result["size"]
    assert max(w / h, h / w) > 8000  # it really is that thin, and it was scored, not refused
    assert result["peak_growth"] < 150 * MB, f"{name}: peak grew {result['peak_growth'] / MB:.0f} MB"


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(2300, 100), (100, 2300), (1001, 97)])
def test_resize_straight_to_the_crop_matches_resize_then_crop(size: tuple[int, int], interpolation: str) -> None:
    img = corpus.noise_image(*size, seed=4)
    cfg = CLIP.model_copy(update={"interpolation": interpolation})
    new = resized_size(*size, cfg.image_size)
    assert new[0] * new[1] > MAX_RESIZED_AREA * cfg.image_size**2  # this shape takes the direct path
    two_step = img.resize(new, Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR)
    expected = np.asarray(two_step.crop(center_crop_box(*new, cfg.image_size)), dtype=np.int16)
    got = np.asarray(resize_and_crop(img, cfg), dtype=np.int16)
    assert got.shape == expected.shape == (224, 224, 3)
    assert np.abs(got - expected).max() <= 1  # the same resampling; only float rounding of the filter windows differs
    assert np.mean(got != expected) < 0.01


def test_ordinary_aspect_ratios_keep_the_exact_two_step_resize() -> None:
    img = corpus.noise_image(800, 210, seed=5)  # 3.8:1, under the direct-path threshold
    new = resized_size(800, 210, 224)
    expected = img.resize(new, Image.Resampling.BICUBIC).crop(center_crop_box(*new, 224))
    assert np.array_equal(np.asarray(resize_and_crop(img, CLIP)), np.asarray(expected))


@pytest.mark.parametrize("size", [(5000, 40), (40, 5000), (300, 200), (30, 20)])
def test_native_crop_crops_before_copying_and_keeps_its_result(size: tuple[int, int]) -> None:
    img = corpus.noise_image(*size, seed=6)
    arr = np.asarray(img)
    h, w = arr.shape[:2]  # the reference: the whole image as an array, padded, then cropped
    ph, pw = max(0, 64 - h), max(0, 64 - w)
    mode = "reflect" if h > ph and w > pw else "symmetric"
    padded = np.pad(arr, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)
    left, top, right, bottom = center_crop_box(padded.shape[1], padded.shape[0], 64)
    expected = padded[top:bottom, left:right].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    assert np.array_equal(native_crop(img, 64), expected)


# -- TIFF strips and tiles ------------------------------------------------------------------------------------------


def test_tiff_tiles_sharing_one_compressed_tile_are_refused() -> None:
    # 2000 x 2000 in 16 x 16 tiles = 15,625 slots (under the count limit), all pointing at one 20-byte tile.
    data = corpus.tiff_tiled(2000, 2000, 16, shared=True)
    with pytest.raises(InputError) as info:
        decode_image(data, LIMITS)
    assert info.value.code is ErrorCode.decompression_bomb and "share" in info.value.message


def test_the_1mb_shared_tile_tiff_is_refused_before_decoding() -> None:
    with pytest.raises(InputError) as info:
        decode_image(corpus.tiff_shared_tiles(), LIMITS)
    assert info.value.code is ErrorCode.decompression_bomb


def test_tiff_strip_and_tile_count_is_bounded_even_when_honestly_stored() -> None:
    limits = DecodeLimits(max_tiff_chunks=1000)
    with pytest.raises(InputError) as info:
        decode_image(corpus.tiff_tiled(1024, 1024, 16, shared=False), limits)  # 4096 distinct tiles
    assert info.value.code is ErrorCode.decompression_bomb and "4096 strips/tiles" in info.value.message


@pytest.mark.parametrize("tile", [16, 256])
def test_honest_tiled_tiffs_decode(tile: int) -> None:
    out = decode_image(corpus.tiff_tiled(512, 384, tile, shared=False), LIMITS)
    assert out.image.size == (512, 384) and out.format == "TIFF"


def test_multi_strip_tiffs_written_by_pillow_and_libtiff_decode() -> None:
    img = corpus.noise_image(300, 700, seed=2)
    for kw in ({}, {"compression": "tiff_lzw"}, {"compression": "tiff_adobe_deflate"}):
        out = decode_image(corpus.save(img, "TIFF", **kw), LIMITS)
        assert np.array_equal(np.asarray(out.image), np.asarray(img)), kw


# -- bit depths and alpha -----------------------------------------------------------------------------------------


def _whole_image_grey(img: Image.Image) -> np.ndarray:
    """The previous whole-image float64 formula, as the reference for the banded one."""
    arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(arr.max(initial=0.0))
    if img.mode.startswith("I;16"):
        hi = 65535.0
    elif img.mode == "F":
        hi = max(top, 1.0)
    else:
        hi = 255.0 if top <= 255 else (65535.0 if top <= 65535 else top)
    return np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_deep_modes_convert_band_by_band_to_the_same_pixels(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    if mode == "F":
        arr = rng.normal(0, 40, (97, 61)).astype(np.float32)
        arr[5, 5], arr[6, 6], arr[7, 7] = np.nan, np.inf, -np.inf
        img = Image.fromarray(arr, "F")
    elif mode == "I":
        img = Image.fromarray(rng.integers(-5, 300_000, (97, 61), dtype=np.int32), "I")
    else:
        img = Image.fromarray(rng.integers(0, 65536, (97, 61), dtype=np.uint16)).convert("I;16")
    monkeypatch.setattr(convert, "BAND_PIXELS", 500)  # about 8 rows a band: many bands, one odd-sized
    got = np.asarray(convert.to_rgb(img))
    expected = _whole_image_grey(img)
    assert np.array_equal(got[..., 0], expected) and np.array_equal(got[..., 1], expected) and np.array_equal(got[..., 2], expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_alpha_composites_band_by_band_to_the_same_pixels(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    rgba = Image.fromarray(rng.integers(0, 256, (53, 41, 4), dtype=np.uint8), "RGBA")
    img = rgba if mode == "RGBA" else rgba.convert(mode)
    whole = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA")).convert("RGB")
    monkeypatch.setattr(convert, "BAND_PIXELS", 200)
    assert np.array_equal(np.asarray(convert.to_rgb(img)), np.asarray(whole))


@pytest.mark.parametrize("mode", ["I;16", "F", "RGBA"])
def test_deep_and_alpha_images_never_make_full_size_float_or_rgba_copies(mode: str, tmp_path: Path) -> None:
    # 36 MP. Before: float64 copies (943 MB peak for I;16, 1013 MB for F) and a second and third RGBA image (737 MB).
    side = 6000
    data = corpus.save(Image.new(mode, (side, side), 0), "PNG") if mode == "RGBA" else corpus.tiff_flat(mode, side, side)
    result = _peak_growth(tmp_path, data)
    assert "error" not in result, result
    decoded = side * side * {"I;16": 2, "F": 4, "RGBA": 4}[mode]
    rgb = side * side * 3
    # the decoded image, the 8-bit result and (for deep modes) the 8-bit grey plane; bands are a few MB
    bound = decoded + rgb + side * side + 64 * MB
    assert result["peak_growth"] < bound, f"{mode}: peak grew {result['peak_growth'] / MB:.0f} MB, bound {bound / MB:.0f} MB"


# -- refused formats: no parser runs -------------------------------------------------------------------------------


@pytest.fixture
def pillow_open_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every call of ``PIL.Image.open`` (the entry to every Pillow parser) during the test."""
    calls: list[tuple] = []
    real = Image.open

    def spy(fp, mode="r", formats=None):  # type: ignore[no-untyped-def]
        calls.append(tuple(formats) if formats else ("*",))
        return real(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    return calls


def _refused(data: bytes) -> InputError:
    with pytest.raises(InputError) as info:
        decode_image(data, LIMITS)
    return info.value


@pytest.mark.parametrize("name", sorted(corpus.unsupported_files()))
def test_refused_formats_are_named_from_magic_bytes_without_any_parser(name: str, pillow_open_calls: list[tuple]) -> None:
    err = _refused(corpus.unsupported_files()[name])
    assert err.code is ErrorCode.unsupported_format and name in err.message
    assert pillow_open_calls == []


def test_a_large_eps_is_refused_without_being_parsed(pillow_open_calls: list[tuple]) -> None:
    # Before: Pillow's EPS plugin walked all 8 MB line by line (6.6 s) just to say "EPS".
    err = _refused(corpus.eps_padded())
    assert err.code is ErrorCode.unsupported_format and "EPS" in err.message
    assert pillow_open_calls == []


def test_unknown_bytes_are_undecodable_without_any_parser(pillow_open_calls: list[tuple]) -> None:
    for data in (b"hello, I am text", b"%PDF-1.4\n%%EOF\n", b"\x00" * 64):
        assert _refused(data).code is ErrorCode.undecodable
    assert pillow_open_calls == []


@pytest.mark.parametrize("name", sorted(corpus.accepted_files()))
def test_accepted_formats_run_exactly_their_own_parser(name: str, pillow_open_calls: list[tuple]) -> None:
    decode_image(corpus.accepted_files()[name], LIMITS)
    assert pillow_open_calls == [(name.split("-")[0],)]


# -- JPEG scans, counted by walking the segments --------------------------------------------------------------------


def test_sos_bytes_inside_icc_and_comment_segments_are_not_scans() -> None:
    # Before: data.count(b"\xff\xda") saw 1001 "scans" in this ordinary baseline JPEG and refused it as a bomb.
    data = corpus.jpeg_with_sos_bytes_in_metadata(copies=500)
    assert data.count(b"\xff\xda") > 1000
    assert jpeg_scan_count(data) == 1
    assert decode_image(data, LIMITS).image.size == (64, 48)


def test_scan_count_matches_the_real_scans_of_baseline_progressive_and_bomb_files() -> None:
    img = corpus.noise_image(64, 48)
    for data in (corpus.save(img, "JPEG"), corpus.save(img, "JPEG", progressive=True), corpus.jpeg_scan_bomb(side=64, extra_scans=150)):
        real = sum(1 for marker, _, _ in corpus.jpeg_segments(data) if marker == 0xDA)
        assert jpeg_scan_count(data) == real


def test_scan_bomb_hidden_behind_garbage_and_fill_bytes_is_still_counted() -> None:
    # libjpeg skips garbage between segments and FF fill bytes before a marker; so must the counter.
    base = corpus.save(Image.new("L", (64, 64), 128), "JPEG", progressive=True)
    start, end = [(s, e) for m, s, e in corpus.jpeg_segments(base) if m == 0xDA][-1]
    scan = base[start:end]
    bomb = base[:end] + (b"\x00\x17garbage" + b"\xff\xff\xff" + scan) * 150 + base[end:]
    assert jpeg_scan_count(bomb) > LIMITS.max_jpeg_scans
    assert _refused(bomb).code is ErrorCode.decompression_bomb


def test_scans_of_mpo_pictures_after_the_first_are_not_counted() -> None:
    data = corpus.animated("MPO")  # three pictures, only the first is decoded
    first_end = data.index(b"\xff\xd9") + 2
    assert jpeg_scan_count(data) == jpeg_scan_count(data[:first_end])


def test_scan_walk_stops_early_once_the_limit_is_passed() -> None:
    bomb = corpus.jpeg_scan_bomb(side=64, extra_scans=1000)
    assert jpeg_scan_count(bomb, stop_after=10) == 11


# -- HEIF and AVIF ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_heif_and_avif_decode_upright_at_their_size(fmt: str) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: upright it is 20 x 40, red on top
    out = decode_image(corpus.save(img, fmt, exif=exif.tobytes(), quality=95), LIMITS)
    arr = np.asarray(out.image).astype(int)
    assert out.format == fmt and out.image.size == (20, 40)
    assert arr[3, 10, 0] > 200 and arr[3, 10, 2] < 50 and arr[-4, 10, 2] > 200 and arr[-4, 10, 0] < 50


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_heif_and_avif_grids_decode_as_one_image(fmt: str) -> None:
    out = decode_image(corpus.heif_grid(fmt, 2, 3), LIMITS)
    assert out.image.size == (192, 128) and out.format == fmt


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_declared_sizes_are_checked_before_any_decoder(fmt: str, pillow_open_calls: list[tuple]) -> None:
    err = _refused(corpus.heif_declared_size(fmt, 50_000, 50_000))
    assert err.code is ErrorCode.decompression_bomb and "50000x50000" in err.message
    err = _refused(corpus.heif_grid(fmt, 2, 2, output=(20_000, 20_000)))
    assert err.code is ErrorCode.decompression_bomb
    assert pillow_open_calls == []


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_grids_whose_tiles_share_coded_data_are_refused(fmt: str, pillow_open_calls: list[tuple]) -> None:
    # 8100 tiles referencing one coded tile: 376 KB that libavif decodes for 3.1 s into 33 MP.
    err = _refused(corpus.heif_grid(fmt, 90, 90, shared=True))
    assert err.code is ErrorCode.decompression_bomb
    err = _refused(corpus.heif_grid(fmt, 2, 3, shared=True))  # sharing is refused whatever the count
    assert err.code is ErrorCode.decompression_bomb and "share" in err.message
    assert pillow_open_calls == []


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_grid_tile_count_is_bounded(fmt: str) -> None:
    assert decode_image(corpus.heif_grid(fmt, 5, 5), LIMITS).image.size == (320, 320)  # 25 tiles are fine by default
    limits = DecodeLimits(max_heif_tiles=16)
    with pytest.raises(InputError) as info:
        decode_image(corpus.heif_grid(fmt, 5, 5), limits)
    assert info.value.code is ErrorCode.decompression_bomb and "25 tiles" in info.value.message


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_truncated_heif_and_avif_are_undecodable(fmt: str) -> None:
    data = corpus.heif_single(fmt, 96, 80)
    for fraction, cut in corpus.truncations(data, (0.05, 0.3, 0.6, 0.9, 0.99)).items():
        assert _refused(cut).code is ErrorCode.undecodable, fraction
    # cut inside the coded data with the mdat box claiming "to the end of the file": the decoder itself must refuse
    mdat = data.index(b"mdat") - 4
    patched = data[:mdat] + b"\x00\x00\x00\x00" + data[mdat + 4 : mdat + 4 + (len(data) - mdat) // 2]
    assert _refused(patched).code is ErrorCode.undecodable


def test_heif_and_avif_pixels_are_checked_after_the_header_too() -> None:
    limits = DecodeLimits(max_pixels=96 * 80 - 1)
    for fmt in ("AVIF", "HEIF"):
        with pytest.raises(InputError) as info:
            decode_image(corpus.heif_single(fmt, 96, 80), limits)
        assert info.value.code is ErrorCode.decompression_bomb
