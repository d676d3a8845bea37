"""decode_image against hostile and odd files: every input ends as an RGB image or an InputError with the right code.

Pure unit tests (no broker): the files are made in code by tests/hostile_corpus.py.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, TiffImagePlugin

from devkit import corpus
from schemas import ErrorCode
from worker.errors import InputError
from worker.ingest.decode import ACCEPTED_RESULT_FORMATS, ALLOWED_FORMATS, DecodedImage, DecodeLimits, decode_image, webp_canvas_size

LIMITS = DecodeLimits()


def _code(data: bytes, limits: DecodeLimits = LIMITS) -> ErrorCode:
    with pytest.raises(InputError) as info:
        decode_image(data, limits)
    return info.value.code


def _ok(data: bytes, limits: DecodeLimits = LIMITS) -> DecodedImage:
    out = decode_image(data, limits)
    assert out.image.mode == "RGB"
    return out


# -- the allow-list ------------------------------------------------------------------------------


def test_allow_list_holds_every_wanted_format_and_mpo_is_accepted_as_a_result() -> None:
    # Pillow 13 has no "MPO" open id; if the allow-list silently lost a format, uploads in it would be refused.
    assert set(ALLOWED_FORMATS) == {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF"}
    assert "MPO" in ACCEPTED_RESULT_FORMATS


@pytest.mark.parametrize("name", sorted(corpus.accepted_files()))
def test_every_accepted_format_decodes_to_rgb_at_its_size(name: str) -> None:
    out = _ok(corpus.accepted_files()[name])
    assert out.image.size == (64, 48)
    assert out.format == name.split("-")[0]
    if name in ("PNG", "BMP", "TIFF", "TIFF-lzw", "WEBP-lossless"):  # lossless: the pixels themselves survive
        assert np.array_equal(np.asarray(out.image), np.asarray(corpus.noise_image()))


@pytest.mark.parametrize("name", sorted(corpus.accepted_files()))
def test_truncated_files_of_every_accepted_format_are_undecodable(name: str) -> None:
    for fraction, data in corpus.truncations(corpus.accepted_files()[name]).items():
        assert _code(data) is ErrorCode.undecodable, f"{name} cut at {fraction}"


@pytest.mark.parametrize("name", sorted(corpus.unsupported_files()))
def test_formats_pillow_reads_but_we_refuse_are_unsupported_and_named(name: str) -> None:
    with pytest.raises(InputError) as info:
        decode_image(corpus.unsupported_files()[name], LIMITS)
    assert info.value.code is ErrorCode.unsupported_format
    assert name in info.value.message


def test_random_corruption_never_escapes_as_anything_but_input_error() -> None:
    """Bit flips and byte splices in every accepted format: an image or an InputError, never another exception."""
    rng = np.random.default_rng(1234)
    outcomes = {"ok": 0, "refused": 0}
    for name, data in corpus.accepted_files().items():
        for _ in range(40):
            buf = bytearray(data)
            for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 8))):
                buf[pos] = int(rng.integers(0, 256))
            if rng.random() < 0.3:  # splice: duplicate or drop a run of bytes
                a, b = sorted(rng.integers(0, len(buf), size=2))
                buf = buf[:a] + buf[a:b] * int(rng.integers(0, 3)) + buf[b:]
            try:
                decode_image(bytes(buf), LIMITS)
                outcomes["ok"] += 1
            except InputError:
                outcomes["refused"] += 1
            except Exception as exc:  # pragma: no cover - this is the failure being tested for
                pytest.fail(f"{name}: {type(exc).__name__}: {exc} escaped decode_image")
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0  # the fuzz reached both sides


def test_garbage_empty_and_text_are_undecodable() -> None:
    assert _code(b"") is ErrorCode.undecodable
    assert _code(b"hello, I am text") is ErrorCode.undecodable
    assert _code(b"%PDF-1.4\n%%EOF\n") is ErrorCode.undecodable


# -- size and bombs ---------------------------------------------------------------------------------


def test_byte_limit_is_checked_before_anything_parses_the_data() -> None:
    limits = DecodeLimits(max_bytes=1000)
    assert _code(b"\x00" * 1001, limits) is ErrorCode.too_large  # not an image at all: still too_large, so no parser ran
    assert _code(corpus.png_header_only(10, 10) + b"\x00" * 1000, limits) is ErrorCode.too_large


@pytest.mark.parametrize(
    "builder",
    [
        lambda: corpus.png_header_only(50000, 50000),
        lambda: corpus.png_header_only(7000, 7000),  # 49 MP: over our 40 MP, under Pillow's own 179 MP error threshold
        corpus.gif_frame_bomb,
        corpus.webp_canvas_bomb,
        corpus.tiff_pixel_bomb,
    ],
    ids=["png-50000", "png-7000", "gif-frame", "webp-canvas", "tiff"],
)
def test_pixel_bombs_are_refused_from_the_header(builder) -> None:  # type: ignore[no-untyped-def]
    assert _code(builder()) is ErrorCode.decompression_bomb


def test_pixel_limit_is_configurable_beyond_pillows_default_threshold() -> None:
    """A configured limit above Pillow's 179 MP must be ours to enforce, not silently Pillow's.

    180 MP header-only PNG: refused as a bomb at 40 MP; with a 200 MP limit it passes the
    pixel check and fails later only because it holds no pixel data.
    """
    data = corpus.png_header_only(15000, 12000)
    assert _code(data) is ErrorCode.decompression_bomb
    assert _code(data, DecodeLimits(max_pixels=200_000_000)) is ErrorCode.undecodable
    assert _code(data, DecodeLimits(max_pixels=100_000_000)) is ErrorCode.decompression_bomb


def test_image_exactly_at_the_pixel_limit_is_accepted() -> None:
    img = corpus.noise_image(31, 31)  # 961 pixels
    assert _ok(corpus.save(img, "PNG"), DecodeLimits(max_pixels=961)).image.size == (31, 31)
    assert _code(corpus.save(img, "PNG"), DecodeLimits(max_pixels=960)) is ErrorCode.decompression_bomb


def test_pillows_process_wide_guard_is_never_lowered() -> None:
    """Lowering it would make every other Pillow caller in the process refuse images our worker never sees."""
    before = Image.MAX_IMAGE_PIXELS
    _ok(corpus.save(corpus.noise_image(31, 31), "PNG"), DecodeLimits(max_pixels=961))
    assert before == Image.MAX_IMAGE_PIXELS
    Image.open(io.BytesIO(corpus.save(Image.new("L", (100, 100)), "PNG"))).load()  # 10000 px, far over 961


def test_webp_canvas_is_checked_before_pillow_allocates_it() -> None:
    """libwebp allocates the canvas inside Image.open; the size comes from the first 30 bytes instead."""
    assert webp_canvas_size(corpus.webp_canvas_bomb(13000, 13000)) == (13000, 13000)
    for name in ("WEBP", "WEBP-lossless"):
        assert webp_canvas_size(corpus.accepted_files()[name]) == (64, 48)
    assert webp_canvas_size(corpus.accepted_files()["PNG"]) is None
    with pytest.raises(InputError) as info:
        decode_image(corpus.webp_canvas_bomb(13000, 13000), LIMITS)
    assert info.value.code is ErrorCode.decompression_bomb and "WebP canvas" in info.value.message


def test_jpeg_scan_bomb_is_refused_before_decoding() -> None:
    """30 KB, 4 MP, 1006 scans: decoding walks every block 1006 times (2.3 s here, hours at 10 MB)."""
    bomb = corpus.jpeg_scan_bomb(side=2000, extra_scans=1000)
    with pytest.raises(InputError) as info:
        decode_image(bomb, LIMITS)
    assert info.value.code is ErrorCode.decompression_bomb and "scans" in info.value.message
    # the same file without the repeated scans is an ordinary progressive JPEG
    assert _ok(corpus.jpeg_scan_bomb(side=64, extra_scans=0)).image.size == (64, 64)
    assert _ok(corpus.jpeg_scan_bomb(side=64, extra_scans=50)).image.size == (64, 64)  # within the limit: decodes


def test_png_text_and_icc_zlib_bombs_are_decompression_bombs() -> None:
    assert _code(corpus.png_ztxt_bomb()) is ErrorCode.decompression_bomb
    assert _code(corpus.png_iccp_bomb()) is ErrorCode.decompression_bomb


def test_frame_count_is_never_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """n_frames scans the whole file for GIF and TIFF (2.9 s for a 3.8 MB TIFF of 20000 pages); we must not call it."""

    def walked(self):  # type: ignore[no-untyped-def]
        raise AssertionError("decode_image counted frames")

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "n_frames", property(walked))
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "n_frames", property(walked))
    out = _ok(corpus.many_page_tiff(300))
    assert out.animated and out.image.size == (8, 8) and out.image.getpixel((0, 0)) == (0, 0, 0)  # page 0 is black
    assert _ok(corpus.animated("GIF")).animated


# -- odd but legitimate images -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF", "MPO"])
def test_animated_and_multi_frame_images_give_their_first_frame(fmt: str) -> None:
    out = _ok(corpus.animated(fmt))
    assert out.animated
    r, g, b = out.image.getpixel((16, 16))
    assert r > 200 and g < 40 and b < 40, (fmt, (r, g, b))  # the first frame is red


def test_exif_orientation_is_applied() -> None:
    out = _ok(corpus.exif_rotated_jpeg())
    assert out.original_size == (40, 20)
    assert out.image.size == (20, 40)  # upright: portrait
    top, bottom = out.image.getpixel((10, 5)), out.image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 40, top  # red on top
    assert bottom[2] > 200 and bottom[0] < 40, bottom


def test_corrupt_exif_keeps_the_image() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    data = corpus.save(img, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x00" * 20)
    assert _ok(data).image.size == (40, 20)


def test_cmyk_becomes_rgb() -> None:
    for fmt in ("JPEG", "TIFF"):
        r, g, b = _ok(corpus.save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), fmt)).image.getpixel((16, 16))
        assert r > 200 and g < 40 and b < 40, fmt  # no cyan, full magenta + yellow = red


def test_sixteen_bit_images_are_scaled_not_clipped() -> None:
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    for fmt in ("PNG", "TIFF"):
        grey = np.asarray(_ok(corpus.save(Image.fromarray(ramp), fmt)).image)[..., 0]
        assert grey[0, 0] == 0 and grey[-1, -1] >= 254, fmt  # clipping would saturate almost everything at 255
        assert 100 < grey[16, 0] < 160, fmt  # mid-ramp stays mid-grey
    red = np.asarray(_ok(corpus.png_16bit_rgb()).image)[..., 0]
    assert red[0, 0] == 0 and red[0, -1] == 255 and 100 < red[0, 16] < 160
    assert _ok(corpus.tiff_16bit_rgb()).image.getpixel((3, 3)) == (0, 255, 0)


def test_float_images_with_nan_decode() -> None:
    arr = np.full((16, 16), np.nan, np.float32)
    arr[:, 8:] = 1.0
    grey = np.asarray(_ok(corpus.save(Image.fromarray(arr), "TIFF")).image)[..., 0]
    assert grey[0, 0] == 0 and grey[0, 15] == 255


def test_alpha_and_palette_transparency_are_composited_over_white() -> None:
    for fmt in ("PNG", "GIF"):
        img = _ok(corpus.palette_with_transparency(fmt)).image
        assert img.getpixel((2, 2)) == (255, 255, 255), fmt  # transparent index: white, not its dark-blue palette colour
        assert img.getpixel((30, 2)) == (255, 0, 0), fmt
    rgba = Image.new("RGBA", (16, 16), (10, 20, 30, 0))
    for fmt in ("PNG", "WEBP", "TIFF"):
        kw = {"lossless": True} if fmt == "WEBP" else {}
        assert _ok(corpus.save(rgba, fmt, **kw)).image.getpixel((0, 0)) == (255, 255, 255), fmt
    half = Image.new("LA", (16, 16), (0, 128))
    assert _ok(corpus.save(half, "PNG")).image.getpixel((0, 0)) == (127, 127, 127)


def test_tiny_images_are_refused() -> None:
    assert _code(corpus.save(Image.new("RGB", (4, 4)), "PNG")) is ErrorCode.image_too_small
    assert _code(corpus.save(Image.new("RGB", (1, 1000)), "PNG")) is ErrorCode.image_too_small
    assert _ok(corpus.save(Image.new("RGB", (8, 8)), "PNG")).image.size == (8, 8)


def test_draft_mode_keeps_the_short_side_at_least_the_target() -> None:
    img = corpus.noise_image(800, 600)
    out = decode_image(corpus.save(img, "JPEG"), LIMITS, draft_short_side=100)
    assert min(out.image.size) >= 100 and out.image.size[0] < 800
    assert out.original_size == (800, 600)


def test_pillow_warnings_stay_out_of_the_worker_log_stream(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A worker's stderr is JSON lines; Pillow's warnings about hostile files must not interleave raw text there.

    Run in a fresh interpreter (pytest installs its own warning filters per test), decoding a file with
    a corrupt EXIF block and one over Pillow's warning threshold (lowered there so a small file crosses it).
    """
    import subprocess
    import sys

    img = Image.new("RGB", (40, 20), (255, 0, 0))
    (tmp_path / "exif.jpg").write_bytes(corpus.save(img, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x00" * 20))
    (tmp_path / "big.png").write_bytes(corpus.save(Image.new("L", (100, 100)), "PNG"))
    code = (
        "import sys, pathlib\n"
        "from PIL import Image\n"
        "from worker.ingest.decode import decode_image, DecodeLimits\n"
        "Image.MAX_IMAGE_PIXELS = 5000\n"
        "d = pathlib.Path(sys.argv[1])\n"
        "decode_image((d / 'big.png').read_bytes(), DecodeLimits(max_pixels=15000))\n"
        "decode_image((d / 'exif.jpg').read_bytes(), DecodeLimits())\n"
        "print('decoded')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "decoded"
    assert proc.stderr == ""
