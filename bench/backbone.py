"""Benchmarks 1 and 7 and the roofline: the backbone alone, by runtime, precision, batch and model size.

Benchmark 1 (``backbone``): PyTorch eager vs ONNX Runtime on the same weights
(the bundle is exported from the very encoder PyTorch runs: random weights,
seed 0), batch 1/8/32; fp32, fp32 with ORT's transformer fusions, int8 dynamic
quantisation (with and without fusion) on CPU, each with the cosine similarity
of its embeddings to ORT fp32 on real photographs. With a GPU, fp32/fp16 on the
CUDA provider, fp16 on TensorRT and PyTorch CUDA join; without one they are
skipped with a line saying so.

Each backend is timed in its own block (one warm-up, then the repetitions, each
at least 0.1 s of back-to-back calls so that millisecond batches are not timer
noise) with a short pause between blocks: ORT and OpenMP worker threads spin for
a while after a run, and interleaving single runs would charge that spin to the
next backend.

Benchmark 7 (``scaling``): ORT fp32 and int8 on aigis-tiny, ViT-B-16 and
ViT-L-14 (random weights), with FLOPs per image, achieved GFLOP/s and the
fraction of the matmul roofline.

``roofline``: the machine's fp32 matmul peak and each backbone's FLOPs per
image, hence the physical limit in images per second.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.artifacts import ensure_bundle, ensure_variant, load_fidelity, pixels_for
from bench.flops import counted_flops, matmul_peak_gflops, vit_flops
from bench.machine import gpus
from bench.options import Options
from bench.results import BenchResult, load_results
from bench.stats import summarize
from worker.model.bundle import LoadedBundle
from worker.model.sessions import OnnxModel

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
PAUSE_S = 0.3


@dataclass
class Backend:
    name: str
    runtime: str
    precision: str
    device: str
    fused: bool
    run: Callable[[np.ndarray], np.ndarray]
    close: Callable[[], None] = lambda: None


def _ort_backend(name: str, bundle: Path, precision: str, fused: bool, providers: list[str], device: str = "cpu") -> Backend:
    b = LoadedBundle(bundle, providers)
    bb = b.manifest.backbone
    model: OnnxModel = b.backbone
    if device == "cuda" and model.providers[0] not in (CUDA, TRT):
        raise RuntimeError(f"{name}: provider {providers[0]} did not initialise (got {model.providers})")
    return Backend(name, "onnxruntime", precision, device, fused, lambda x: model.run({bb.input_name: x}, [bb.output_name])[bb.output_name])


def _trt_backend(name: str, bundle: Path, cache_dir: Path) -> Backend:
    """TensorRT provider (fp16 engine, cached on disk so the build is not timed), CUDA as fallback for unsupported nodes."""
    import onnxruntime as ort

    b = LoadedBundle(bundle, [CPU])
    bb = b.manifest.backbone
    cache_dir.mkdir(parents=True, exist_ok=True)
    opts = {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}
    sess = ort.InferenceSession(str(bundle / bb.file), providers=[(TRT, opts), CUDA, CPU])
    if sess.get_providers()[0] != TRT:
        raise RuntimeError(f"TensorRT provider did not initialise (got {sess.get_providers()})")
    return Backend(name, "onnxruntime", "fp16", "cuda", False, lambda x: sess.run([bb.output_name], {bb.input_name: x})[0])


def _torch_backend(encoder: torch.nn.Module, device: str = "cpu", half: bool = False) -> Backend:
    enc = encoder.to(device)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(device)
            if half:
                with torch.autocast("cuda", dtype=torch.float16):
                    out = enc(t)
            else:
                out = enc(t)
            if device == "cuda":
                torch.cuda.synchronize()
            return out.float().cpu().numpy()

    name = f"torch-eager-{device}" + ("-fp16" if half else "")
    return Backend(name, "pytorch", "fp16" if half else "fp32", device, False, run)


def gpu_ready() -> bool:
    return bool(gpus()) and torch.cuda.is_available()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _batch(pixels: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(pixels))
    return np.ascontiguousarray(np.concatenate([pixels] * reps)[:n])


#: Shortest repetition: a tiny model's batch takes ~1 ms, far below timer and scheduler noise, so
#: one repetition runs the batch as many times as fill this (and the rate counts them all).
MIN_SAMPLE_S = 0.1


def _time_block(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, reps: int) -> list[float]:
    """Seconds per call of ``fn(x)``, one value per repetition (each repetition >= MIN_SAMPLE_S of calls)."""
    fn(x)  # warm-up: first-run allocations, kernel selection
    t0 = time.perf_counter()
    fn(x)
    calls = max(1, int(MIN_SAMPLE_S / max(time.perf_counter() - t0, 1e-6)))
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(x)
        out.append((time.perf_counter() - t0) / calls)
    return out


def build_backends(arch: str, result: BenchResult, with_torch: bool = True) -> list[Backend]:
    """CPU backends always; GPU backends when a GPU is usable (else a note says they were skipped)."""
    from export.clip import load_encoder

    fp32 = ensure_bundle(arch)
    variants = {
        "ort-cpu-fp32-fused": ("fp32", True),
        "ort-cpu-int8": ("int8", False),
        "ort-cpu-int8-fused": ("int8", True),
    }
    backends = []
    if with_torch:
        encoder, _, _ = load_encoder(arch, None, seed=0, random_weights=True)
        backends.append(_torch_backend(encoder))
    backends.append(_ort_backend("ort-cpu-fp32", fp32, "fp32", False, [CPU]))
    fidelity: dict[str, Any] = {}
    for name, (precision, fused) in variants.items():
        path = ensure_variant(arch, precision, fused)
        fidelity[name] = load_fidelity(path)
        backends.append(_ort_backend(name, path, precision, fused, [CPU]))
    result.config["variant_fidelity"] = fidelity
    if gpu_ready():
        fp16 = ensure_variant(arch, "fp16", True)
        fidelity["ort-cuda-fp16-fused"] = load_fidelity(fp16)
        for make in (
            lambda: _torch_backend(load_encoder(arch, None, seed=0, random_weights=True)[0], "cuda"),
            lambda: _torch_backend(load_encoder(arch, None, seed=0, random_weights=True)[0], "cuda", half=True),
            lambda: _ort_backend("ort-cuda-fp32", fp32, "fp32", False, [CUDA, CPU], "cuda"),
            lambda: _ort_backend("ort-cuda-fp16-fused", fp16, "fp16", True, [CUDA, CPU], "cuda"),
            lambda: _trt_backend("ort-tensorrt-fp16", fp32, fp32.parent / ".trt-cache"),
        ):
            try:
                backends.append(make())
            except Exception as exc:  # a provider missing on this GPU machine is a finding, not a crash
                result.note(f"GPU backend skipped: {type(exc).__name__}: {str(exc)[:200]}")
    else:
        result.note("no GPU on this machine: fp16, CUDA and TensorRT rows skipped (they run where nvidia-smi and torch.cuda see a GPU)")
    return backends


def run_backbone(opts: Options) -> BenchResult:
    arch = opts.backbone_arch
    r = BenchResult("backbone", f"Backbone: PyTorch eager vs ONNX Runtime, fp32 / fused / int8 ({arch})", opts.quick)
    r.config.update(
        arch=arch, batch_sizes=opts.batch_sizes, reps=opts.reps, torch_threads=torch.get_num_threads(), ort_intra_op_threads="default (physical cores)"
    )
    backends = build_backends(arch, r)
    ref_bundle = LoadedBundle(ensure_bundle(arch))
    photos = pixels_for(ref_bundle, 8)
    reference = next(b for b in backends if b.name == "ort-cpu-fp32").run(photos)
    cosines = {b.name: _cosine(b.run(photos), reference) for b in backends}
    torch_vs_ort = float(np.max(np.abs(backends[0].run(photos) - reference)))
    r.config["torch_vs_ort_fp32_max_abs_diff"] = torch_vs_ort
    print(f"  {arch}: {len(backends)} backends; torch vs ORT fp32 max |diff| = {torch_vs_ort:.2e}", flush=True)

    for batch in opts.batch_sizes:
        x = _batch(photos, batch)
        torch_median = None
        for b in backends:
            gc.collect()
            time.sleep(PAUSE_S)
            secs = _time_block(b.run, x, opts.reps)
            ips = summarize([batch / s for s in secs])
            if b.runtime == "pytorch" and b.device == "cpu":
                torch_median = ips["median"]
            row = r.add(
                backend=b.name,
                runtime=b.runtime,
                precision=b.precision,
                device=b.device,
                fused=b.fused,
                batch=batch,
                images_per_s=ips,
                ms_per_batch=summarize([s * 1000 for s in secs])["median"],
                cosine_vs_fp32_min=float(cosines[b.name].min()),
                speedup_vs_torch_cpu=(ips["median"] / torch_median) if torch_median else None,
            )
            print(
                f"  batch {batch:>3} {b.name:<22} {ips['median']:8.2f} img/s  [{ips['min']:.2f}-{ips['max']:.2f}]  cos {row['cosine_vs_fp32_min']:.5f}",
                flush=True,
            )
    best = max((row for row in r.rows if row["device"] == "cpu"), key=lambda row: row["images_per_s"]["median"])
    r.config["best_cpu"] = {"backend": best["backend"], "batch": best["batch"], "images_per_s": best["images_per_s"]["median"]}
    return r.finish()


def run_scaling(opts: Options) -> BenchResult:
    r = BenchResult("scaling", "Model size: how cost grows from aigis-tiny to ViT-B-16 to ViT-L-14 (ORT, CPU)", opts.quick)
    r.config.update(archs=opts.scaling_archs, batches=opts.scaling_batches, reps=opts.reps)
    peak = _known_peak(opts.out)
    from export.clip import load_encoder

    for arch in opts.scaling_archs:
        t0 = time.monotonic()
        try:
            fp32 = ensure_bundle(arch)
            int8 = ensure_variant(arch, "int8")
        except Exception as exc:
            r.note(f"{arch}: could not build its bundle here ({type(exc).__name__}: {str(exc)[:200]}); row skipped")
            continue
        build_s = time.monotonic() - t0
        encoder, _pre, _ = load_encoder(arch, None, seed=0, random_weights=True)
        gflops = vit_flops(encoder)["gflops"]
        del encoder
        gc.collect()
        photos = pixels_for(LoadedBundle(fp32), 4)
        for precision, path in (("fp32", fp32), ("int8", int8)):
            b = _ort_backend(f"ort-cpu-{precision}", path, precision, False, [CPU])
            for batch in opts.scaling_batches:
                time.sleep(PAUSE_S)
                reps = opts.reps if gflops * batch < 200 else max(2, opts.reps // 2)  # ViT-L at batch 8 is ~10 s a run here
                secs = _time_block(b.run, _batch(photos, batch), reps)
                ips = summarize([batch / s for s in secs])
                achieved = ips["median"] * gflops
                r.add(
                    arch=arch,
                    precision=precision,
                    batch=batch,
                    gflops_per_image=gflops,
                    images_per_s=ips,
                    achieved_gflops_per_s=achieved,
                    fraction_of_fp32_peak=(achieved / peak) if peak else None,
                    bundle_build_s=round(build_s, 1),
                )
                print(f"  {arch:<11} {precision} batch {batch:>2}: {ips['median']:8.2f} img/s = {achieved:6.1f} GFLOP/s", flush=True)
            del b
            gc.collect()
    if peak is None:
        r.note("no roofline result in the output directory: run `python -m bench --only roofline` for the fraction-of-peak column")
    return r.finish()


def _known_peak(out: Path) -> float | None:
    doc = load_results(out).get("roofline")
    if not doc:
        return None
    return doc.get("config", {}).get("peak_gflops")


def run_roofline(opts: Options) -> BenchResult:
    r = BenchResult("roofline", "Physical limit: backbone FLOPs per image and this CPU's matmul peak", opts.quick)
    peak = matmul_peak_gflops(n=1024 if opts.quick else 2048, seconds=1.0 if opts.quick else 3.0)
    best = max(peak["torch_fp32"], peak["numpy_fp32"])
    r.config.update(matmul=peak, peak_gflops=best)
    print(f"  fp32 matmul peak: torch {peak['torch_fp32']:.1f}, numpy {peak['numpy_fp32']:.1f} GFLOP/s", flush=True)
    from export.clip import load_encoder

    archs = list(dict.fromkeys([*opts.scaling_archs, opts.backbone_arch, "ViT-L-14"]))
    for arch in archs:
        encoder, pre, _ = load_encoder(arch, None, seed=0, random_weights=True)
        analytic = vit_flops(encoder)
        counted = counted_flops(encoder, pre.image_size)
        del encoder
        gc.collect()
        r.add(
            arch=arch,
            image_size=pre.image_size,
            gflops_per_image=analytic["gflops"],
            gflops_counted_by_torch=counted,
            attention_core_gflops=analytic["parts_gflops"]["attention_core"],
            shape=analytic["shape"],
            limit_images_per_s=best / analytic["gflops"],
        )
        print(f"  {arch:<11} {analytic['gflops']:8.3f} GFLOP/image (torch counter {counted:.3f}) -> limit {best / analytic['gflops']:.1f} img/s", flush=True)
    r.note("torch's flop counter misses the fused attention kernel on CPU: it is lower than the analytic count by the attention-core term; analytic is used")
    return r.finish()
