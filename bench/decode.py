"""Benchmark 2: decode + preprocess of large photos, full decode vs Pillow draft mode, by thread count.

The worker's own code is timed (``worker.ingest.decode.decode_image`` then
``worker.ingest.preprocess.clip_input``): "full" decodes every pixel then resizes to
the backbone's input; "draft" lets libjpeg downscale by 1/2..1/8 in the DCT
domain first (keeping the short side >= the input size), which the worker does
whenever the bundle allows it (no native-resolution head).

Images: a 12.2 MP phone-sized JPEG (4032 x 3024, real photographs tiled and
upscaled, with sensor-like noise so the file is as heavy as a real one) and a
2 MP one. Threads 1..N decode copies of the same file in a thread pool (Pillow
releases the GIL while decoding and resampling). The draft result's fidelity is
reported as its difference from the full path, in normalised-pixel units and as
the cosine between the two backbone embeddings.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bench.artifacts import CACHE, encode_jpeg, ensure_bundle, large_photo
from bench.options import Options
from bench.results import BenchResult
from bench.stats import summarize
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.preprocess import Preprocess, clip_input, normalize, resize_and_crop
from worker.model.bundle import LoadedBundle

LIMITS = DecodeLimits(max_bytes=64 * 1024 * 1024, max_pixels=100_000_000)
SIZES = {"12MP": (4032, 3024), "2MP": (1632, 1224)}


def _image(label: str) -> bytes:
    path = CACHE / "images" / f"photo-{label}.jpg"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = SIZES[label]
        path.write_bytes(encode_jpeg(large_photo(w, h), quality=90))
    return path.read_bytes()


def _stages(data: bytes, pre: Preprocess, draft: int | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    img = decode_image(data, LIMITS, draft).image
    t1 = time.perf_counter()
    geo = resize_and_crop(img, pre)
    t2 = time.perf_counter()
    normalize(np.asarray(geo), pre)
    t3 = time.perf_counter()
    return {"decode_ms": (t1 - t0) * 1000, "resize_crop_ms": (t2 - t1) * 1000, "normalize_ms": (t3 - t2) * 1000, "decoded_size": list(img.size)}


def run_decode(opts: Options) -> BenchResult:
    r = BenchResult("decode", "Decode + preprocess: full decode vs JPEG draft mode, threads 1..N", opts.quick)
    bundle = LoadedBundle(ensure_bundle(opts.backbone_arch))
    pre = bundle.preprocess
    side = pre.image_size
    r.config.update(threads=opts.decode_threads, images_per_run=opts.decode_images, reps=opts.reps, input_size=side, arch=opts.backbone_arch)
    for label in SIZES:
        data = _image(label)
        full = clip_input(decode_image(data, LIMITS, None).image, pre)
        draft = clip_input(decode_image(data, LIMITS, side).image, pre)
        emb = bundle.embed(np.stack([full, draft]))
        cos = float(np.dot(emb[0], emb[1]) / (np.linalg.norm(emb[0]) * np.linalg.norm(emb[1])))
        fidelity = {"max_abs_diff": float(np.abs(full - draft).max()), "mean_abs_diff": float(np.abs(full - draft).mean()), "embedding_cosine": cos}
        for mode, draft_side in (("full", None), ("draft", side)):
            stage_runs = [_stages(data, pre, draft_side) for _ in range(max(2, opts.reps))]
            stages = {k: summarize([s[k] for s in stage_runs])["median"] for k in ("decode_ms", "resize_crop_ms", "normalize_ms")}
            stages["decoded_size"] = stage_runs[0]["decoded_size"]

            def one(_: int, draft_side: int | None = draft_side, data: bytes = data) -> None:
                clip_input(decode_image(data, LIMITS, draft_side).image, pre)

            for threads in opts.decode_threads:
                n = opts.decode_images * threads
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(one, range(threads)))  # warm the threads
                    secs = []
                    for _ in range(opts.reps):
                        t0 = time.perf_counter()
                        list(pool.map(one, range(n)))
                        secs.append(time.perf_counter() - t0)
                ips = summarize([n / s for s in secs])
                r.add(
                    image=label,
                    megapixels=round(SIZES[label][0] * SIZES[label][1] / 1e6, 1),
                    file_kb=round(len(data) / 1024),
                    mode=mode,
                    threads=threads,
                    images_per_s=ips,
                    ms_per_image_single=sum(v for k, v in stages.items() if k.endswith("_ms")),
                    stages=stages,
                    fidelity_vs_full=fidelity if mode == "draft" else None,
                )
                print(f"  {label} {mode:<5} threads {threads}: {ips['median']:7.1f} img/s  stages {stages}", flush=True)
    for label in SIZES:
        f = {(row["mode"], row["threads"]): row["images_per_s"]["median"] for row in r.rows if row["image"] == label}
        t1 = min(opts.decode_threads)
        r.config.setdefault("draft_speedup_1_thread", {})[label] = f[("draft", t1)] / f[("full", t1)]
    return r.finish()
