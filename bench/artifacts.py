"""What the benchmarks run on: bundles with random weights, and images made from real photographs.

Bundles are built once per architecture (random weights, seed 0, an untrained
linear probe: speed does not depend on what the weights say) and reused from
``.aigis/bench/bundles`` on later runs. Images are crops of scikit-image's real
photographs, JPEG-encoded at the sizes each benchmark needs; nothing is
downloaded.
"""

from __future__ import annotations

import io
import json
import os
import struct
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from worker.model.bundle import MANIFEST, BundleError, LoadedBundle

#: Where built bundles and generated images are kept between runs (AIGIS_BENCH_CACHE overrides, e.g. for tests).
CACHE = Path(os.environ.get("AIGIS_BENCH_CACHE") or Path(__file__).resolve().parents[1] / ".aigis" / "bench")
TINY = "aigis-tiny"


def bundle_dir(arch: str, variant: str = "fp32") -> Path:
    return CACHE / "bundles" / (arch if variant == "fp32" else f"{arch}-{variant}")


def ensure_bundle(arch: str) -> Path:
    """fp32 bundle for ``arch`` (random weights, seed 0, placeholder linear probe), built on first use."""
    out = bundle_dir(arch)
    if (out / MANIFEST).is_file():
        try:
            if not LoadedBundle(out).preprocess.allow_draft:  # built before draft decoding became opt-in: rebuild at the default
                return out
        except BundleError:
            pass
    from export.bundle import write_placeholder_bundle

    print(f"  building {arch} bundle (random weights) in {out} ...", flush=True)
    write_placeholder_bundle(
        out, arch, random_weights=True, name=f"bench-{arch}", seed=0, note="benchmark bundle: random weights, untrained head; for speed only"
    )
    return out


def ensure_variant(arch: str, precision: str, fuse: bool = False) -> Path:
    """int8/fp16/fused variant of the fp32 bundle (``python -m export variant``), rebuilt when its source changed."""
    from export.variants import make_variant

    src = ensure_bundle(arch)
    name = precision + ("-fused" if fuse else "")
    out = bundle_dir(arch, name)
    manifest = out / MANIFEST
    if manifest.is_file():
        doc = json.loads(manifest.read_text())
        fid = doc.get("fidelity") or {}
        if fid.get("reference_sha256") == LoadedBundle(src).sha256:
            return out
    print(f"  making {arch} {name} variant in {out} ...", flush=True)
    make_variant(src, out, precision, fuse=fuse)  # type: ignore[arg-type]
    return out


def load_fidelity(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text()).get("fidelity") or {}


# -- images ---------------------------------------------------------------------------------


@cache
def colour_photos() -> tuple[Image.Image, ...]:
    from export.photos import load_rgb, photo_paths

    return tuple(load_rgb(p) for p in photo_paths(include_grey=False))


def encode_jpeg(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def photo_crops(n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Image.Image]:
    """``n`` distinct RGB views (random crop of a random photo, resized to ``size``)."""
    rng = np.random.default_rng(seed)
    photos = colour_photos()
    out = []
    for _ in range(n):
        img = photos[int(rng.integers(len(photos)))]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.55, 1.0)), int(h * rng.uniform(0.55, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        view = img.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(view)
    return out


def photo_jpegs(n: int, size: tuple[int, int] = (640, 480), quality: int = 85, seed: int = 0) -> list[bytes]:
    """``n`` JPEG crops of real photographs with distinct content (so no cache or in-batch dedupe can help).

    Photo-sized and photo-like on purpose: decode and preprocessing cost what an upload costs.
    (The tests' :func:`devkit.images.unique_jpegs` are tiny colour fields, cheap to score.)
    """
    return [encode_jpeg(v, quality) for v in photo_crops(n, size, seed)]


def jpeg_near_size(target_bytes: int, seed: int = 0) -> bytes:
    """One photo crop JPEG-encoded at the quality that lands nearest ``target_bytes`` (e.g. the ~50 KB upload)."""
    view = photo_crops(1, (800, 600), seed)[0]
    best = min((encode_jpeg(view, q) for q in range(40, 97, 4)), key=lambda b: abs(len(b) - target_bytes))
    return best


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI: different bytes (and sha256), identical pixels and decode cost."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def large_photo(width: int = 4032, height: int = 3024, seed: int = 0) -> Image.Image:
    """A phone-camera-sized image (12.2 MP by default): a mosaic of upscaled real photos with sensor-like noise.

    Upscaled photos alone are too smooth (their JPEG is a fraction of a real
    12 MP photo's size, and entropy decoding cost follows file size); mild
    Gaussian noise brings the file to the 3-6 MB of a real phone picture.
    """
    rng = np.random.default_rng(seed)
    photos = colour_photos()
    cols, rows = 4, 3
    tw, th = width // cols, height // rows
    canvas = Image.new("RGB", (width, height))
    for i in range(cols * rows):
        img = photos[i % len(photos)]
        canvas.paste(img.resize((tw, th), Image.Resampling.BICUBIC), ((i % cols) * tw, (i // cols) * th))
    arr = np.asarray(canvas, dtype=np.float32)
    arr += rng.normal(0.0, 4.0, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def pixels_for(bundle: LoadedBundle, n: int, seed: int = 0) -> np.ndarray:
    """``n`` preprocessed real-photo crops, (n, 3, S, S) float32, through the worker's own preprocessing."""
    from worker.ingest.preprocess import clip_input

    return np.stack([clip_input(v, bundle.preprocess) for v in photo_crops(n, (640, 480), seed)])
