"""read_provenance as the pipeline will call it: one call per image, every signal, pure, thread-safe, cacheable."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, PngImagePlugin

from devkit import provenance_images as pi
from devkit.c2pa_signing import make_ca, make_signer, sign_image
from devkit.watermark import embed
from export.photos import load_rgb, photo_paths
from schemas.provenance import C2paSignal, SignalKind, SignalStatus, Strength
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.provenance import ProvenanceReading, TrustList, read_provenance
from worker.ingest.provenance.reader import _guard


def everything_at_once() -> tuple[bytes, TrustList]:
    """A watermarked PNG with XMP, A1111 parameters and a trusted C2PA manifest: all four signals found."""
    rgb = np.asarray(load_rgb(photo_paths(include_grey=False)[0]))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", pi.a1111_parameters())
    info.add_itxt("XML:com.adobe.xmp", pi.xmp_packet("trainedAlgorithmicMedia").decode())
    buf = io.BytesIO()
    Image.fromarray(embed(rgb, "sd1")).save(buf, "PNG", pnginfo=info)
    ca = make_ca()
    return sign_image(buf.getvalue(), "image/png", make_signer(ca)), TrustList.from_pem(ca.cert_pem)


def test_all_four_signals_in_one_call() -> None:
    data, trust = everything_at_once()
    reading = read_provenance(data, trust=trust, image=decode_image(data, DecodeLimits()).image)
    assert [s.kind for s in reading.signals] == [SignalKind.c2pa, SignalKind.iptc, SignalKind.generator, SignalKind.watermark]
    assert all(s.status is SignalStatus.found and s.ai_declared for s in reading.signals), reading
    assert [s.strength for s in reading.signals] == [Strength.verified, Strength.claimed, Strength.claimed, Strength.watermark]


def test_reading_round_trips_through_the_cache_format() -> None:
    data, trust = everything_at_once()
    reading = read_provenance(data, trust=trust, image=decode_image(data, DecodeLimits()).image)
    again = ProvenanceReading.loads(reading.dumps())
    assert again == reading and isinstance(again.signal(SignalKind.c2pa), C2paSignal)


def test_same_bytes_same_reading_from_many_threads() -> None:
    """Pure and thread-safe: 8 threads reading a mix of files concurrently agree with a sequential read."""
    signed, trust = everything_at_once()
    files = [signed, pi.png_with_text({"prompt": pi.comfyui_prompt()}), pi.with_xmp(pi.xmp_packet(), "JPEG"), pi.encode(pi.photo(), "WEBP")]
    images = [decode_image(f, DecodeLimits()).image for f in files]
    expected = [read_provenance(f, trust=trust, image=im) for f, im in zip(files, images, strict=True)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda k: read_provenance(files[k % 4], trust=trust, image=images[k % 4]), range(48)))
    assert all(g == expected[k % 4] for k, g in enumerate(got))


def test_without_pixels_the_watermark_is_not_checked() -> None:
    sig = read_provenance(pi.encode(pi.photo(400, 300), "PNG")).signal(SignalKind.watermark)
    assert sig is not None and sig.status is SignalStatus.not_checked


def test_bytes_that_are_no_image_are_not_checked() -> None:
    reading = read_provenance(b"%PDF-1.7 this is not an image")
    assert all(s.status is SignalStatus.not_checked for s in reading.signals)
    assert read_provenance(b"").signal(SignalKind.c2pa).status is SignalStatus.not_checked  # type: ignore[union-attr]


def test_truncations_of_a_rich_file_never_raise() -> None:
    data, trust = everything_at_once()
    for cut in range(0, len(data), max(1, len(data) // 97)):
        reading = read_provenance(data[:cut], trust=trust)
        assert len(reading.signals) == 4


def test_a_reader_that_raises_costs_only_its_own_signal() -> None:
    def broken() -> C2paSignal:
        raise RuntimeError("boom")

    sig = _guard(C2paSignal, broken)
    assert sig.status is SignalStatus.unreadable and sig.detail == "reader failed: RuntimeError"


def test_avif_and_heif_are_named_and_not_checked() -> None:
    from devkit import corpus

    for fmt in ("AVIF", "HEIF"):
        data = corpus.heif_single(fmt)
        reading = read_provenance(data, image=decode_image(data, DecodeLimits()).image)
        assert all(s.status is SignalStatus.not_checked and fmt in (s.detail or "") for s in reading.signals), reading
