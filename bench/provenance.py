"""Benchmark: the provenance stage's cost per image, and the SD watermark decoder's false-positive rate on real photographs.

``python -m bench --only provenance`` (JSON + a results.md section, with the
5%-of-decode target per cache-miss case) or ``python -m bench.provenance``
(the same parts, printed, ``--json`` optional). Three parts:

**Cache-miss path.** What the wired stage adds to a miss: the worker's own
``prepare_image`` (decode + preprocess for the tiny benchmark bundle, as the
decode pool runs it) with ``--provenance-policy off`` against ``decide`` (with
a trust list), on the images a miss sees: 12 MP JPEGs plain and C2PA-signed,
a 1 MP JPEG, generator PNGs at SD output size. The provenance time is the
``provenance_ms`` the pipeline itself records per image; the share is against
the same call's decode + preprocess time.

**Cost.** For each image the worker's own decode (``decode_image``, draft mode
for JPEG as the worker uses it with a 224 px backbone, and the native decode)
is timed against ``read_provenance(bytes, image=decoded)`` on the same image:
12 MP JPEG (4032 x 3024, photo-like, q90) plain and C2PA-signed, a 12 MP PNG
(lossless, so the watermark decoder runs, on at most ``watermark_max_tiles``
tiles), and 224/256 px images. Median of ``--reps`` runs.

**False positives.** The watermark decoder is run on real photographs that
installed packages ship (scikit-image's sample photos, matplotlib's
``grace_hopper.jpg``), each in many variants (random crops, which move the
8x8 tile grid and change which payload bit each tile carries; mirror images;
rescales; 4:4:4 JPEG re-encodes), and every variant that reaches
``MATCH_AGREEMENT`` for any payload is a false positive. The same photos
watermarked by devkit's encoder (SD 1/2 payloads in 8-bit YUV, SDXL in float
YUV, as the reference scripts do), whole and as 2x2 / 4x4 mosaics, give the
detection rate. Each unmarked variant is also read whole (no early exit) to
show the statistic's own spread.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bench.options import Options
from bench.results import BenchResult
from devkit.c2pa_signing import make_ca, make_signer, sign_image
from devkit.watermark import embed
from export.photos import load_rgb, photo_paths
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.provenance import ProvenanceLimits, TrustList, read_provenance
from worker.ingest.provenance.watermark import MATCH_AGREEMENT, PAYLOADS, read_watermark

DECODE = DecodeLimits(max_bytes=64 * 1024 * 1024, max_pixels=100_000_000)
PROV = ProvenanceLimits(max_bytes=64 * 1024 * 1024)


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up (imports, the c2pa context)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def real_photos() -> list[tuple[str, np.ndarray]]:
    """(name, RGB array) of every real photograph available offline: scikit-image's, then matplotlib's Grace Hopper."""
    out = [(p.name, np.asarray(load_rgb(p))) for p in photo_paths(include_grey=True)]
    try:
        import matplotlib

        hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if hopper.is_file():
            out.append((hopper.name, np.asarray(load_rgb(hopper))))
    except ImportError:
        pass
    return out


#: The phone-sized photo the large cases are made from (--quick makes it smaller).
BIG = (4032, 3024)


def _mp(size: tuple[int, int]) -> str:
    return f"{max(1, round(size[0] * size[1] / 1e6))}MP"


def cost(reps: int, big_size: tuple[int, int] = BIG) -> list[dict[str, object]]:
    from bench.artifacts import large_photo

    big = large_photo(*big_size)
    mp = _mp(big_size)
    ca = make_ca()
    trust = TrustList.from_pem(ca.cert_pem)
    big_jpeg = _encode(big, "JPEG", quality=90)
    small = big.resize((224, 224))
    cases = {
        f"{mp} JPEG q90": big_jpeg,
        f"{mp} JPEG q90, C2PA-signed": sign_image(big_jpeg, "image/jpeg", make_signer(ca)),
        f"{mp} PNG": _encode(big, "PNG", compress_level=1),
        "224px JPEG": _encode(small, "JPEG", quality=90),
        "256px PNG": _encode(big.resize((256, 256)), "PNG"),
        "512px PNG (SD 1.x output size)": _encode(big.resize((512, 512)), "PNG"),
    }
    rows = []
    for name, data in cases.items():
        for draft in [224, None] if "JPEG" in name else [None]:
            decoded = decode_image(data, DECODE, draft)
            decode_ms = _median_ms(functools.partial(decode_image, data, DECODE, draft), reps)
            prov_ms = _median_ms(functools.partial(read_provenance, data, PROV, trust, image=decoded.image), reps)
            reading = read_provenance(data, PROV, trust, image=decoded.image)
            rows.append(
                {
                    "image": name,
                    "bytes": len(data),
                    "decode": "draft 224" if draft else "native",
                    "decode_ms": round(decode_ms, 2),
                    "provenance_ms": round(prov_ms, 3),
                    "share_of_decode": round(prov_ms / decode_ms, 4),
                    "signals": {s.kind.value: s.status.value for s in reading.signals},
                    "watermark_tiles": getattr(reading.signals[3], "tiles", None),
                }
            )
            print(
                f"  {name:28s} {rows[-1]['decode']:10s} decode {decode_ms:8.2f} ms  provenance {prov_ms:7.3f} ms  ({100 * prov_ms / decode_ms:.2f}%)",
                flush=True,
            )
    return rows


def miss_path(reps: int, big_size: tuple[int, int] = BIG) -> list[dict[str, object]]:
    """Per image on the cache-miss path: ``prepare_image`` as the decode pool runs it, provenance off vs decide."""
    from bench.artifacts import TINY, ensure_bundle, large_photo
    from devkit import provenance_images as pi
    from schemas.provenance import ProvenancePolicy
    from worker.model.bundle import LoadedBundle
    from worker.model.rollout import Models
    from worker.pipeline.images import prepare_image
    from worker.pipeline.items import ProvenanceSettings

    models = Models(LoadedBundle(ensure_bundle(TINY), ["CPUExecutionProvider"]))
    ca = make_ca()
    trust = TrustList.from_pem(ca.cert_pem)
    off = ProvenanceSettings(ProvenancePolicy.off)
    decide = ProvenanceSettings(ProvenancePolicy.decide, trust, PROV)
    big = large_photo(*big_size)
    mp = _mp(big_size)
    big_jpeg = _encode(big, "JPEG", quality=90)
    sd = big.resize((512, 512))
    cases = {
        f"{mp} JPEG q90": big_jpeg,
        f"{mp} JPEG q90, C2PA-signed": sign_image(big_jpeg, "image/jpeg", make_signer(ca)),
        "1MP JPEG q90": _encode(big.resize((1152, 864)), "JPEG", quality=90),
        "512px A1111 PNG": pi.png_with_text({"parameters": pi.a1111_parameters()}, sd),
        "512px ComfyUI PNG": pi.png_with_text({"prompt": pi.comfyui_prompt(), "workflow": pi.comfyui_workflow()}, sd),
    }
    rows = []
    for name, data in cases.items():
        prepare_image(data, models, DECODE, False, decide)  # warm-up
        plain, read = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            prepare_image(data, models, DECODE, False, off)
            plain.append((time.perf_counter() - t0) * 1000)
            p = prepare_image(data, models, DECODE, False, decide)
            read.append((p.decode_ms, p.provenance_ms))
        decode_ms = statistics.median(d for d, _ in read)
        prov_ms = statistics.median(pr for _, pr in read)
        rows.append(
            {
                "image": name,
                "bytes": len(data),
                "prepare_off_ms": round(statistics.median(plain), 2),
                "decode_ms": round(decode_ms, 2),
                "provenance_ms": round(prov_ms, 3),
                "share_of_decode": round(prov_ms / decode_ms, 4),
            }
        )
        print(
            f"  {name:28s} prepare (off) {statistics.median(plain):8.2f} ms  decode+preprocess {decode_ms:8.2f} ms  "
            f"provenance {prov_ms:7.3f} ms  ({100 * prov_ms / decode_ms:.2f}%)",
            flush=True,
        )
    return rows


def _variants(rgb: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    out = [rgb]
    for k in range(n - 1):
        ch, cw = int(rng.integers(min(h, 256), h + 1)), int(rng.integers(min(w, 256), w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        v = rgb[y : y + ch, x : x + cw]
        if k % 2:
            v = v[:, ::-1]
        v = np.ascontiguousarray(v)
        if k % 5 == 3:
            f = float(rng.uniform(0.6, 2.0))
            v = np.asarray(Image.fromarray(v).resize((max(8, int(v.shape[1] * f)), max(8, int(v.shape[0] * f))), Image.Resampling.BICUBIC))
        if k % 7 == 4:
            v = np.asarray(Image.open(io.BytesIO(_encode(Image.fromarray(v), "JPEG", quality=int(rng.integers(75, 96)), subsampling=0))).convert("RGB"))
        out.append(v)
    return out


def false_positives(variants_per_photo: int, seed: int = 0, max_photos: int | None = None, mosaics: tuple[int, ...] = (1, 2, 4)) -> dict[str, object]:
    """``max_photos``/``mosaics`` shrink the run for ``--quick`` (first photos only; 1 = the photo itself, 2 and 4 = 2x2 and 4x4 mosaics)."""
    rng = np.random.default_rng(seed)
    limits = ProvenanceLimits()
    whole = ProvenanceLimits(watermark_probe_tiles=limits.watermark_max_tiles)  # no early exit: the statistic's own spread
    full_read: list[float] = []
    photos = real_photos()[:max_photos]
    trials = hits = hits_full = checked_colour = 0
    best: list[float] = []
    per_photo: dict[str, float] = {}
    detected = marked = 0
    marked_min = 1.0
    for name, rgb in photos:
        colour = rgb.ndim == 3 and not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
        top = 0.0
        for v in _variants(rgb, variants_per_photo if colour else max(3, variants_per_photo // 10), rng):
            sig = read_watermark(Image.fromarray(v), None, limits)
            if sig.agreement is None:
                continue  # under the minimum size: not checked
            trials += 1
            checked_colour += int(colour)
            best.append(sig.agreement)
            top = max(top, sig.agreement)
            hits += int(sig.agreement >= MATCH_AGREEMENT)
            full = read_watermark(Image.fromarray(v), None, whole)
            full_read.append(full.agreement or 0.5)
            hits_full += int((full.agreement or 0.0) >= MATCH_AGREEMENT)
        per_photo[name] = round(top, 4)
        if colour and rgb.shape[0] * rgb.shape[1] >= limits.watermark_min_pixels:
            for scale in mosaics:  # 2x2 and 4x4 mosaics: large images, read in windows
                big = np.ascontiguousarray(np.tile(rgb, (scale, scale, 1))) if scale > 1 else rgb
                for payload in PAYLOADS:
                    sig = read_watermark(Image.fromarray(embed(big, payload)), None, limits)
                    marked += 1
                    detected += int(sig.payload == payload)
                    marked_min = min(marked_min, sig.agreement or 0.0)
        print(f"  {name:26s} best agreement of any payload over its variants: {top:.4f}", flush=True)
    arr = np.array(best)
    return {
        "photos": len(photos),
        "trials": trials,
        "colour_trials": checked_colour,
        "false_positives": hits,
        "false_positive_rate": hits / trials if trials else None,
        "upper_95": (3.0 / trials) if trials and hits == 0 else None,
        "threshold": MATCH_AGREEMENT,
        "null_agreement_max": round(float(arr.max()), 4),
        "null_agreement_p999": round(float(np.percentile(arr, 99.9)), 4),
        "null_agreement_median": round(float(np.median(arr)), 4),
        "false_positives_without_early_exit": hits_full,
        "null_agreement_max_without_early_exit": round(float(max(full_read)), 4),
        "null_agreement_p999_without_early_exit": round(float(np.percentile(full_read, 99.9)), 4),
        "marked": marked,
        "marked_detected": detected,
        "marked_agreement_min": round(marked_min, 4),
        "per_photo_max": per_photo,
    }


#: The issue's target for the stage: under this share of the decode time, per image on the cache-miss path.
TARGET_SHARE = 0.05


def run_provenance(opts: Options) -> BenchResult:
    """``python -m bench --only provenance``: the three parts into one result, a 5%-of-decode target per cache-miss case."""
    r = BenchResult("provenance", "Provenance stage: cost per image on the cache-miss path, and the SD watermark's false positives on real photos", opts.quick)
    big = (2016, 1512) if opts.quick else BIG  # 3 MP: distinct from the 1 MP case
    r.config.update(reps=opts.reps, big_image=list(big), variants_per_photo=opts.provenance_variants, target_share_of_decode=TARGET_SHARE)
    print("  cache-miss path: prepare_image with provenance off vs decide", flush=True)
    for row in miss_path(opts.reps, big):
        r.add(part="miss_path", **row)
    print("  reader alone on an image decoded once", flush=True)
    for row in cost(opts.reps, big):
        r.add(part="reader", **row)
    print("  watermark false positives on real photographs", flush=True)
    fp = false_positives(opts.provenance_variants, max_photos=4 if opts.quick else None, mosaics=(1,) if opts.quick else (1, 2, 4))
    r.add(part="false_positives", **fp)
    for row in r.rows:
        if row["part"] == "miss_path":
            share = float(str(row["share_of_decode"]))
            r.target(f"provenance / decode + preprocess, {row['image']} (miss path)", f"<= {TARGET_SHARE:.0%}", 100 * share, 100 * TARGET_SHARE, "%", True)
    r.note(
        "the provenance time is the provenance_ms the pipeline records (--provenance-policy decide with a trust list); "
        "the share is against the same prepare_image call's decode + preprocess, tiny benchmark bundle"
    )
    r.note(
        "known misses of the 5% target: a C2PA manifest is validated by hashing the whole file in the SDK (paid only by files that carry one), "
        "and on small lossless PNGs the watermark decoder's fixed cost (at most 512 probe tiles) meets a cheap decode"
    )
    return r.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.provenance", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7, help="timed runs per case (median reported)")
    parser.add_argument("--variants", type=int, default=200, help="variants per colour photo for the false-positive count (grey photos get a tenth)")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-miss", action="store_true", help="skip the cache-miss path part (it builds the tiny benchmark bundle on first use)")
    parser.add_argument("--skip-fp", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    out: dict[str, object] = {}
    if not args.skip_miss:
        print("cache-miss path, per image: prepare_image with provenance off vs decide (median of --reps):", flush=True)
        out["miss_path"] = miss_path(args.reps)
    if not args.skip_cost:
        print("provenance stage cost per image (median of --reps):", flush=True)
        out["cost"] = cost(args.reps)
    if not args.skip_fp:
        print("watermark false positives on real photographs:", flush=True)
        fp = false_positives(args.variants)
        out["false_positives"] = fp
        print(
            f"  {fp['false_positives']} false positives in {fp['trials']} checks ({fp['photos']} photos); null agreement median "
            f"{fp['null_agreement_median']}, p99.9 {fp['null_agreement_p999']}, max {fp['null_agreement_max']} (threshold {fp['threshold']}); "
            f"read whole (no early exit): {fp['false_positives_without_early_exit']} false positives, max {fp['null_agreement_max_without_early_exit']}; "
            f"marked: {fp['marked_detected']}/{fp['marked']} detected, min agreement {fp['marked_agreement_min']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
