"""Bundle variants: the same model at another precision or with fused graphs, fidelity recorded.

``python -m export variant BUNDLE OUT --precision int8|fp16|fp32 [--fuse]`` turns
an fp32 bundle into one the worker serves faster on a given device:

* **int8** (CPU): ONNX Runtime dynamic quantisation (``quantize_dynamic``) of
  the backbone's MatMul/Gemm weights to int8, activations quantised on the fly.
  Per-channel weight scales by default: on the ViT backbones here they cost
  nothing in speed and keep the embeddings closer to fp32. The patch-embedding
  convolution stays fp32 (ConvInteger is slow on CPU and the conv is under 1 %
  of a ViT's FLOPs). Weights are 7-bit (``reduce_range``) by default: on x86
  CPUs without VNNI (AVX2 only) ORT's u8s8 integer matmul adds pairs of
  products in int16 and saturates with full 8-bit weights. An int8 bundle is
  served on whatever CPU the fleet has, so the portable choice is the default;
  ``--no-reduce-range`` is for fleets known to have VNNI (AVX512-VNNI, AVX-VNNI, AMX).
* **fp16** (GPU): ``onnxruntime.transformers.float16`` with fp32 inputs and
  outputs kept, so the worker's feeds do not change. fp16 is for the CUDA and
  TensorRT providers; on CPU it is slower than fp32.
* **--fuse**: ONNX Runtime's transformer optimiser (``model_type`` clip or vit)
  fuses LayerNorm/SkipLayerNorm/BiasGelu (and attention where it recognises
  the pattern; it does not on open_clip's TorchScript export of
  ``nn.MultiheadAttention``: the fused-operator counts are recorded so this is
  visible, not assumed). Only ORT's hardware-independent level-1 rewrites are
  baked in, so the file stays portable across CPUs.

Heads are copied unchanged (they are a fraction of a per-cent of the compute
and the scores' last step). The variant's manifest records the new precision
and a :class:`~schemas.Fidelity` block: cosine similarity of its embeddings to
the fp32 bundle's, score differences and label agreement on real photographs
(scikit-image's sample photos and crops of them), measured with the worker's own
runtime. The calibration is inherited from the fp32 bundle; the recorded score
deltas say whether that is still fair.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from schemas import BundleManifest, Fidelity
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.preprocess import clip_input
from worker.model.bundle import MANIFEST, BundleError, LoadedBundle, file_sha256
from worker.model.policy import decide

Precision = Literal["fp32", "fp16", "int8"]
FusionType = Literal["clip", "vit"]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

#: Lowest embedding cosine similarity to fp32 a variant may show on real photos
#: before ``make_variant`` refuses it (override with ``min_cosine``). int8 ViTs
#: measured here stay above 0.99; 0.95 catches a broken conversion, not noise.
DEFAULT_MIN_COSINE = 0.95


def gpu_available() -> bool:
    """True where ONNX Runtime can actually open a CUDA session (not merely lists the provider)."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()


# -- graph transforms -----------------------------------------------------------------------


class _OnnxRuntimeNotices(logging.Filter):
    """Drops records below ERROR that ONNX Runtime's own Python code logged; every other record passes."""

    def __init__(self) -> None:
        super().__init__()
        import onnxruntime

        self.package = str(Path(onnxruntime.__file__).resolve().parent)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not str(Path(record.pathname).resolve()).startswith(self.package)


@contextlib.contextmanager
def _quiet_onnxruntime_notices():
    """ORT's quantiser and fuser warn about steps that do not apply here (pre-processing, symbolic shapes).

    Part of it goes to ORT's own loggers (``onnxruntime.*``: raised to ERROR for
    this call) and part straight to the root logger (``logging.warning``): there
    a filter drops only the records that ORT's own files logged below ERROR.
    Everything else anyone logs meanwhile still comes through.
    """
    notices, root, ort = _OnnxRuntimeNotices(), logging.getLogger(), logging.getLogger("onnxruntime")
    level = ort.level
    ort.setLevel(logging.ERROR)
    root.addFilter(notices)
    try:
        yield
    finally:
        root.removeFilter(notices)
        ort.setLevel(level)


def _hidden_size(path: Path) -> int:
    """Width of the transformer: the size of the first LayerNormalization scale (after ORT's fusion) or 0."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) > 1 and node.input[1] in inits:
            return int(numpy_helper.to_array(inits[node.input[1]]).shape[-1])
    return 0


def fuse_transformer(src: Path, dst: Path, model_type: FusionType = "clip", num_heads: int = 0, for_gpu: bool = False) -> dict[str, int]:
    """Apply ONNX Runtime's transformer fusions; returns the fused-operator counts (non-zero ones)."""
    from onnxruntime.transformers.optimizer import optimize_model

    hidden = _hidden_size(src)
    if model_type == "vit" and not num_heads:
        # open_clip ViTs use 64-wide heads (B/16: 768/12, L/14: 1024/16); the vit fuser needs the count.
        num_heads = max(1, hidden // 64)
    with _quiet_onnxruntime_notices():
        opt = optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden if num_heads else 0, opt_level=1, use_gpu=for_gpu)
    opt.save_model_to_file(str(dst))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def quantize_int8(src: Path, dst: Path, per_channel: bool = True, reduce_range: bool = True) -> None:
    """Dynamic int8 quantisation of MatMul/Gemm weights (activations quantised per batch at run time).

    ``reduce_range`` (7-bit weights, the default) avoids the u8s8 saturation of
    AVX2 CPUs without VNNI, where ORT's kernel sums pairs of u8 x s8 products in
    int16 (``vpmaddubsw``): on the tiny ViT with full-range per-channel weights
    the embedding cosine to fp32 fell to 0.986 on such a CPU (0.9999 was
    measured on an AVX512-VNNI one); 7-bit weights gave 0.9999 on the AVX2 CPU
    too. The same integer kernels run either way, so only a fleet known to have
    VNNI gains (one bit of weight precision) from ``reduce_range=False``.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_onnxruntime_notices():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
            op_types_to_quantize=["MatMul", "Gemm"],
            # After --fuse, outputs of com.microsoft ops (BiasGelu, SkipLayerNormalization) have no
            # type for ONNX shape inference; every activation in these graphs is float32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and arithmetic, fp32 inputs/outputs (the worker feeds float32 pixels either way)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    onnx.save(convert_float_to_float16(model, keep_io_types=True), str(dst))


# -- fidelity -------------------------------------------------------------------------------


def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has an integer dot-product instruction set (VNNI/AMX); None where /proc/cpuinfo says nothing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(set(line.split(":", 1)[1].split()) & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return None


def fidelity_images(max_images: int = 48) -> list[tuple[str, bytes]]:
    """Real photographs (scikit-image's samples) and centre/corner crops of them, as encoded bytes.

    Crops multiply the sample count without inventing content: each is a
    different 224-px view after the worker's resize, so embeddings differ.
    """
    import io

    from export.photos import load_rgb, photo_paths

    out: list[tuple[str, bytes]] = []
    for path in photo_paths():
        img = load_rgb(path)
        w, h = img.size
        views = {
            "full": img,
            "centre": img.crop((w // 4, h // 4, w - w // 4, h - h // 4)),
            "top-left": img.crop((0, 0, max(8, w * 2 // 3), max(8, h * 2 // 3))),
        }
        for tag, view in views.items():
            buf = io.BytesIO()
            view.save(buf, "PNG")
            out.append((f"{path.name}:{tag}", buf.getvalue()))
    return out[:max_images]


def _pixels(bundle: LoadedBundle, images: Sequence[tuple[str, bytes]]) -> np.ndarray:
    limits = DecodeLimits()
    return np.stack([clip_input(decode_image(data, limits).image, bundle.preprocess) for _, data in images])


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


class _CpuFp16Backbone:
    """An fp16 backbone on the CPU provider, for measuring fidelity on a machine without a GPU.

    ONNX Runtime 1.31's CPU NCHWc layout pass (graph optimisation level ALL,
    which the worker uses) crashes the process on fp16 graphs, so this session
    runs at level EXTENDED. The numbers are fp16 arithmetic as ORT's CPU kernels
    do it; CUDA's may differ in the last bits.
    """

    def __init__(self, path: Path, input_name: str, output_name: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=[CPU])
        self.input_name, self.output_name = input_name, output_name

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: pixels})[0]


def compare_bundles(
    reference: LoadedBundle, variant: LoadedBundle | _CpuFp16Backbone, images: Sequence[tuple[str, bytes]], batch: int = 8
) -> dict[str, float | int]:
    """Embedding cosine, score deltas and label agreement of ``variant`` against ``reference``.

    Variants carry the reference's head files unchanged, so the variant's
    scores are the reference heads applied to the variant's embeddings.
    """
    pixels = _pixels(reference, images)
    ref_emb, var_emb, ref_p, var_p = [], [], [], []
    for lo in range(0, len(pixels), batch):
        chunk = pixels[lo : lo + batch]
        e_ref, e_var = reference.embed(chunk), np.asarray(variant.embed(chunk), dtype=np.float32)
        ref_emb.append(e_ref)
        var_emb.append(e_var)
        ref_p.append(reference.score_embeddings(e_ref).probability)
        var_p.append((variant if isinstance(variant, LoadedBundle) else reference).score_embeddings(e_var).probability)
    cos = _cosine(np.concatenate(ref_emb), np.concatenate(var_emb))
    p_ref, p_var = np.concatenate(ref_p), np.concatenate(var_p)
    delta = np.abs(p_ref - p_var)
    cal = reference.manifest.calibration
    agree = np.mean([decide(float(a), cal) == decide(float(b), cal) for a, b in zip(p_ref, p_var, strict=True)])
    return {
        "images": len(pixels),
        "embedding_cosine_min": float(cos.min()),
        "embedding_cosine_mean": float(cos.mean()),
        "score_abs_diff_max": float(delta.max()),
        "score_abs_diff_mean": float(delta.mean()),
        "label_agreement": float(agree),
    }


# -- the variant ----------------------------------------------------------------------------


def _write_manifest(out: Path, manifest: BundleManifest) -> None:
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)


def make_variant(
    src: Path,
    out: Path,
    precision: Precision,
    *,
    fuse: bool = False,
    fusion_type: FusionType = "clip",
    num_heads: int = 0,
    per_channel: bool = True,
    reduce_range: bool = True,
    max_images: int = 48,
    min_cosine: float = DEFAULT_MIN_COSINE,
    providers: Sequence[str] | None = None,
) -> BundleManifest:
    """Write a variant of the fp32 bundle ``src`` into ``out`` and return its manifest.

    Raises :class:`~worker.model.bundle.BundleError` when the source is not fp32, or
    when the variant's embeddings fall below ``min_cosine`` of the fp32 ones.
    """
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise BundleError("the variant must go to a new directory, not over its source")
    reference = LoadedBundle(src, [CPU])
    rm = reference.manifest
    if rm.backbone.precision != "fp32":
        raise BundleError(f"{src} is already a {rm.backbone.precision} variant; make variants from the fp32 bundle")
    if precision == "fp32" and not fuse:
        raise BundleError("an fp32 variant without --fuse would be a copy; ask for --precision int8/fp16 or --fuse")

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    for name in rm.files:
        if name != rm.backbone.file:
            shutil.copy2(src / name, out / name)

    transforms: list[str] = []
    fused_ops: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="aigis-variant-") as tmp:
        current = src / rm.backbone.file
        if fuse:
            fused = Path(tmp) / "fused.onnx"
            fused_ops = fuse_transformer(current, fused, fusion_type, num_heads, for_gpu=precision == "fp16" and gpu_available())
            transforms.append(f"fusion:{fusion_type}")
            current = fused
        target = out / rm.backbone.file
        if precision == "int8":
            quantize_int8(current, target, per_channel, reduce_range)
            transforms.append(f"quantize_dynamic:int8/{'per_channel' if per_channel else 'per_tensor'}{'/reduce_range' if reduce_range else ''}")
        elif precision == "fp16":
            convert_fp16(current, target)
            transforms.append("float16:keep_io_types")
        else:
            shutil.copy2(current, target)

    on_gpu = gpu_available()
    if providers is None:
        providers = [CUDA, CPU] if (precision == "fp16" and on_gpu) else [CPU]
    # fp16 without a GPU: measured on the CPU provider at a safe optimisation level, never loaded by the worker's session code.
    cpu_fp16 = precision == "fp16" and providers[0] == CPU
    suffix = precision + ("-fused" if fuse else "")
    notes = [
        *rm.notes,
        f"variant of {rm.name} {rm.version} (manifest sha256 {reference.sha256[:12]}…): {', '.join(transforms)}; calibration inherited from it",
    ]
    if precision == "fp16":
        notes.append("fp16 targets the CUDA/TensorRT providers; on CPU it is slower than fp32 (and ONNX Runtime 1.31's CPU NCHWc pass crashes on it)")
    files = {p.name: file_sha256(p) for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST}
    draft = rm.model_copy(
        update={
            "version": f"{rm.version}+{suffix}",
            "created_at": datetime.now(UTC),
            "backbone": rm.backbone.model_copy(update={"precision": precision}),
            "files": files,
            "notes": notes,
            "fidelity": None,
        }
    )
    _write_manifest(out, draft)
    if cpu_fp16:
        variant: LoadedBundle | _CpuFp16Backbone = _CpuFp16Backbone(out / rm.backbone.file, rm.backbone.input_name, rm.backbone.output_name)
        provider, note = CPU, "no GPU where this variant was built: measured with ORT's CPU fp16 kernels at optimisation level EXTENDED"
    else:
        variant = LoadedBundle(out, providers)
        provider, note = variant.providers[0], None
        vnni = cpu_has_vnni()
        if precision == "int8" and provider == CPU and vnni is not None:
            # int8 fidelity depends on the serving CPU's integer kernels (see quantize_int8): say which kind measured it.
            note = f"measured on a CPU {'with' if vnni else 'without'} VNNI, {'7-bit' if reduce_range else 'full 8-bit'} weights"
    stats = compare_bundles(reference, variant, fidelity_images(max_images))
    if stats["embedding_cosine_min"] < min_cosine:
        (out / MANIFEST).unlink(missing_ok=True)
        raise BundleError(f"variant embeddings drift too far: min cosine {stats['embedding_cosine_min']:.4f} < {min_cosine} ({stats})")
    fidelity = Fidelity(
        reference_name=rm.name,
        reference_version=rm.version,
        reference_sha256=reference.sha256,
        precision=precision,
        transforms=transforms,
        fused_operators=fused_ops,
        measured=True,
        provider=provider,
        image_source="scikit-image sample photographs and crops of them",
        note=note,
        **stats,
    )
    manifest = BundleManifest.model_validate({**draft.model_dump(), "fidelity": fidelity.model_dump()})
    _write_manifest(out, manifest)
    if not cpu_fp16:
        LoadedBundle(out, providers)  # what the worker will load: checksums and sessions must pass
    return manifest


# -- command line ---------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``python -m export variant``."""
    v = sub.add_parser(
        "variant",
        help="make an int8 (CPU) or fp16 (GPU) and/or fused variant of a bundle, fidelity recorded",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("bundle", type=Path, help="Source bundle directory (fp32).")
    v.add_argument("out", type=Path, help="Directory for the variant (created).")
    v.add_argument("--precision", choices=["int8", "fp16", "fp32"], required=True, help="int8 for CPU serving, fp16 for GPU, fp32 with --fuse only.")
    v.add_argument("--fuse", action="store_true", help="Apply ONNX Runtime's transformer fusions before the precision change.")
    v.add_argument("--fusion-type", choices=["clip", "vit"], default="clip", help="Fusion pattern set (default clip).")
    v.add_argument("--num-heads", type=int, default=0, help="Attention heads for --fusion-type vit (default width/64, open_clip's convention).")
    v.add_argument("--per-tensor", action="store_true", help="int8: one scale per weight tensor instead of per output channel.")
    v.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="int8: 7-bit weights (default), exact on every x86 CPU; --no-reduce-range uses full 8-bit weights, "
        "which saturate ORT's u8s8 matmul on AVX2 CPUs without VNNI: only for fleets known to have VNNI.",
    )
    v.add_argument("--images", type=int, default=48, help="Real photographs (and crops) used to measure fidelity (default 48).")
    v.add_argument(
        "--min-cosine", type=float, default=DEFAULT_MIN_COSINE, help=f"Refuse the variant below this embedding cosine (default {DEFAULT_MIN_COSINE})."
    )
    v.set_defaults(func=_cmd_variant)


def _cmd_variant(args: argparse.Namespace) -> int:
    try:
        m = make_variant(
            args.bundle,
            args.out,
            args.precision,
            fuse=args.fuse,
            fusion_type=args.fusion_type,
            num_heads=args.num_heads,
            per_channel=not args.per_tensor,
            reduce_range=args.reduce_range,
            max_images=args.images,
            min_cosine=args.min_cosine,
        )
    except BundleError as exc:
        raise SystemExit(f"variant failed: {exc}") from None
    f = m.fidelity
    assert f is not None
    print(f"wrote {args.out}: {m.backbone.architecture} {m.backbone.precision} ({', '.join(f.transforms)}), version {m.version}")
    if f.fused_operators:
        print("fused operators: " + ", ".join(f"{k}={v}" for k, v in sorted(f.fused_operators.items())))
    if f.measured:
        print(
            f"fidelity on {f.images} real photos ({f.provider}): embedding cosine min {f.embedding_cosine_min:.5f} mean {f.embedding_cosine_mean:.5f}; "
            f"|score delta| max {f.score_abs_diff_max:.2e} mean {f.score_abs_diff_mean:.2e}; label agreement {f.label_agreement:.1%}"
        )
    else:
        print(f"fidelity not measured: {f.note}")
    return 0
