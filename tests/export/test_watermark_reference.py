"""The worker's torch-free SD watermark decoder reads what the reference encoder (invisible-watermark, MIT) writes.

Embedding follows each reference script: SD 1.x / SD 2 (CompVis, Stability-AI
stablediffusion ``scripts/txt2img.py``) hand the encoder 8-bit BGR from
``cv2.cvtColor(np.array(img), cv2.COLOR_RGB2BGR)``; SDXL (generative-models'
``WatermarkEmbedder``, diffusers' ``StableDiffusionXLWatermarker``) hands it
float32 BGR in 0..255 and rounds the result to 8 bits when the image is saved.
Every marked image then goes through the worker's own decode and provenance
stage as a PNG. Lives in tests/export because the reference package imports
torch.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

cv2 = pytest.importorskip("cv2", reason="the reference encoder needs OpenCV (pip install -e '.[export]')")
imwatermark = pytest.importorskip("imwatermark", reason="the reference encoder is the export extra's invisible-watermark")

from export.photos import load_rgb, photo_paths  # noqa: E402
from schemas.provenance import SignalKind, SignalStatus  # noqa: E402
from worker.ingest.decode import DecodeLimits, decode_image  # noqa: E402
from worker.ingest.provenance import ProvenanceLimits, read_provenance  # noqa: E402
from worker.ingest.provenance.watermark import PAYLOADS, haar_ll, read_watermark, u_plane, u_plane_f32  # noqa: E402

PHOTOS = [np.asarray(load_rgb(p)) for p in photo_paths(include_grey=False)]


def reference_u8(rgb: np.ndarray, payload: str) -> np.ndarray:
    """SD 1/2's put_watermark: RGB -> 8-bit BGR -> encode -> back to RGB."""
    enc = imwatermark.WatermarkEncoder()
    if payload == "sdxl":
        enc.set_watermark("bits", [int(b) for b in PAYLOADS["sdxl"]])
    else:
        enc.set_watermark("bytes", {"sd1": b"StableDiffusionV1", "sd2": b"SDV2"}[payload])
    bgr = enc.encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "dwtDct")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def reference_sdxl_float(rgb: np.ndarray) -> np.ndarray:
    """diffusers' SDXL watermarker: float32 BGR in 0..255 -> encode -> RGB, clamped and rounded to 8 bits when saved."""
    enc = imwatermark.WatermarkEncoder()
    enc.set_watermark("bits", [int(b) for b in PAYLOADS["sdxl"]])
    out = enc.encode(np.ascontiguousarray(rgb[:, :, ::-1].astype(np.float32)), "dwtDct")[:, :, ::-1]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def through_worker(rgb: np.ndarray):  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    data = buf.getvalue()
    return read_provenance(data, ProvenanceLimits(), image=decode_image(data, DecodeLimits()).image).signal(SignalKind.watermark)


@pytest.mark.parametrize("payload", ["sd1", "sd2"])
def test_sd1_and_sd2_reference_marks_are_read(payload: str) -> None:
    for rgb in PHOTOS:
        sig = through_worker(reference_u8(rgb, payload))
        assert sig.status is SignalStatus.found and sig.payload == payload, sig


def test_sdxl_reference_mark_as_diffusers_writes_it_is_read() -> None:
    for rgb in PHOTOS:
        sig = through_worker(reference_sdxl_float(rgb))
        assert sig.status is SignalStatus.found and sig.payload == "sdxl", sig


def test_sdxl_bits_through_the_8_bit_path_are_read_too() -> None:
    for rgb in PHOTOS:
        assert through_worker(reference_u8(rgb, "sdxl")).payload == "sdxl"


def test_unmarked_photographs_stay_absent() -> None:
    for rgb in PHOTOS:
        assert through_worker(rgb).status is SignalStatus.absent


@pytest.mark.parametrize("payload", ["sd1", "sd2", "sdxl"])
def test_bit_errors_are_the_reference_decoders(payload: str) -> None:
    """Read whole (every tile), the majority vote per bit is the reference decoder's, bit for bit."""
    everything = ProvenanceLimits(watermark_probe_tiles=10**7, watermark_max_tiles=10**7)
    for rgb in PHOTOS[:4]:
        marked = reference_u8(rgb, payload)
        bits = PAYLOADS[payload]
        ref = np.array(imwatermark.WatermarkDecoder("bits", bits.size).decode(cv2.cvtColor(marked, cv2.COLOR_RGB2BGR), "dwtDct")).astype(bool)
        sig = read_watermark(Image.fromarray(marked), None, everything)
        assert sig.payload == payload and sig.bit_errors == int(np.sum(ref != bits))


def test_colour_planes_match_opencv() -> None:
    rng = np.random.default_rng(0)
    for rgb in [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), *PHOTOS[:3]]:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        assert np.array_equal(u_plane(rgb), cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[..., 1])
        ref = cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2YUV)[..., 1]
        assert np.max(np.abs(u_plane_f32(rgb) - ref)) <= 1e-4  # float32 rounding of OpenCV's SIMD order, far below the 36 step


def test_float32_haar_matches_pywavelets() -> None:
    import pywt

    plane = u_plane_f32(PHOTOS[0])
    assert np.array_equal(haar_ll(plane), pywt.dwt2(plane, "haar")[0])
