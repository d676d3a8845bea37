"""Bundle variants (``python -m export variant``): int8/fp16 backbones the worker serves, fidelity recorded.

The tiny backbone has random weights, so "fidelity" here means the conversion
preserved the arithmetic, which is exactly what a broken quantiser or an fp16
overflow would violate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.variants import compare_bundles, fidelity_images, make_variant
from worker.model.bundle import BundleError, LoadedBundle
from worker.score import score_files

#: Stated bound: int8 per-channel (7-bit weight) embeddings of the tiny ViT stay this close to fp32 on real photos
#: (measured 0.99987 on an AVX2 CPU without VNNI; full 8-bit weights saturate there and gave 0.9856).
INT8_MIN_COSINE = 0.99
#: fp16 keeps ~3 significant digits: much closer than int8.
FP16_MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def int8_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("variant-int8")
    make_variant(tiny_bundle, out, "int8", max_images=24)
    return out


def _op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_variant_is_quantised_and_loads_in_the_worker(int8_bundle: Path, tiny_bundle: Path) -> None:
    variant = LoadedBundle(int8_bundle)
    reference = LoadedBundle(tiny_bundle)
    assert variant.manifest.backbone.precision == "int8"
    assert variant.sha256 != reference.sha256, "a variant must not share cache keys with its source"
    ops = _op_types(int8_bundle / variant.manifest.backbone.file)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops, f"no integer ops in the int8 graph: {sorted(ops)}"
    assert (int8_bundle / variant.manifest.backbone.file).stat().st_size < (tiny_bundle / reference.manifest.backbone.file).stat().st_size


def test_int8_fidelity_is_recorded_and_above_the_bound(int8_bundle: Path, tiny_bundle: Path) -> None:
    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    f = manifest["fidelity"]
    assert f["measured"] is True and f["precision"] == "int8"
    assert f["reference_sha256"] == LoadedBundle(tiny_bundle).sha256
    assert f["images"] == 24
    # 7-bit weights by default: full 8-bit ones saturate ORT's u8s8 matmul on CPUs without VNNI (see quantize_int8).
    assert f["transforms"] == ["quantize_dynamic:int8/per_channel/reduce_range"]
    assert INT8_MIN_COSINE <= f["embedding_cosine_min"] <= f["embedding_cosine_mean"] <= 1.0 + 1e-9
    assert 0.0 <= f["score_abs_diff_mean"] <= f["score_abs_diff_max"] < 0.05
    # The recorded numbers are what the worker's runtime reproduces now (not copied from anywhere).
    again = compare_bundles(LoadedBundle(tiny_bundle), LoadedBundle(int8_bundle), fidelity_images(24))
    assert again["embedding_cosine_min"] == pytest.approx(f["embedding_cosine_min"], abs=1e-9)


def test_int8_variant_scores_files_like_fp32(int8_bundle: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    from export.photos import photo_paths

    files = photo_paths(include_grey=False)[:4]
    ref = {o.record.key: o.verdict.score for o in score_files(LoadedBundle(tiny_bundle), files) if o.verdict}
    got = {o.record.key: o.verdict.score for o in score_files(LoadedBundle(int8_bundle), files) if o.verdict}
    assert ref.keys() == got.keys() and len(got) == 4
    assert max(abs(ref[k] - got[k]) for k in ref) < 0.05
    assert any(ref[k] != got[k] for k in ref), "identical scores: the int8 backbone was not used"


def test_fp16_variant_has_half_precision_weights_and_recorded_fidelity(tiny_bundle: Path, tmp_path: Path) -> None:
    m = make_variant(tiny_bundle, tmp_path / "fp16", "fp16", fuse=True, max_images=12)
    assert m.backbone.precision == "fp16" and m.version.endswith("+fp16-fused")
    model = onnx.load(str(tmp_path / "fp16" / m.backbone.file))
    dtypes = {init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in dtypes
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT, "inputs must stay float32 for the worker"
    assert m.fidelity is not None and m.fidelity.measured
    assert m.fidelity.fused_operators, "fusion reported no fused operators"
    assert m.fidelity.embedding_cosine_min is not None and m.fidelity.embedding_cosine_min >= FP16_MIN_COSINE
    assert np.isfinite(m.fidelity.score_abs_diff_max or np.nan)


def test_variants_are_made_from_fp32_only(int8_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="already a int8 variant"):
        make_variant(int8_bundle, tmp_path / "again", "int8")


def test_cli_variant_command(tiny_bundle: Path, tmp_path: Path) -> None:
    from export.cli import main

    assert main(["variant", str(tiny_bundle), str(tmp_path / "fused"), "--precision", "fp32", "--fuse", "--images", "6"]) == 0
    m = LoadedBundle(tmp_path / "fused").manifest
    assert m.backbone.precision == "fp32" and m.fidelity is not None
    assert m.fidelity.transforms == ["fusion:clip"]
    assert m.fidelity.embedding_cosine_min is not None and m.fidelity.embedding_cosine_min > 0.99999


def test_fp16_bundle_falls_back_to_cpu_without_crashing(tiny_bundle: Path, tmp_path: Path) -> None:
    """ORT's CPU NCHWc pass segfaults on fp16 graphs; the worker must disable it (run in a child: a segfault kills it, not pytest)."""
    import subprocess
    import sys

    out = tmp_path / "fp16-plain"
    make_variant(tiny_bundle, out, "fp16", fuse=False, max_images=4)
    script = (
        "import numpy as np\nfrom worker.model.bundle import LoadedBundle\n"
        f"b = LoadedBundle({str(out)!r}, ['CUDAExecutionProvider', 'CPUExecutionProvider'])\n"
        "p = b.score(np.zeros((2, 3, 224, 224), np.float32)).probability\n"
        "assert p.shape == (2,) and np.all((p >= 0) & (p <= 1))\nprint('scored')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "scored" in result.stdout, (result.returncode, result.stderr[-2000:])


def test_only_onnxruntimes_own_notices_are_quieted(caplog: pytest.LogCaptureFixture) -> None:
    """Fusion and quantisation quiet ORT's notices (its loggers, and its root-logger calls), nobody else's."""
    import logging
    import os

    import onnxruntime

    from export.variants import _quiet_onnxruntime_notices

    ort_file = os.path.join(os.path.dirname(onnxruntime.__file__), "quantization", "quantize.py")
    with caplog.at_level(logging.WARNING), _quiet_onnxruntime_notices():
        logging.getLogger("aigis.test").warning("ours")
        logging.getLogger("onnxruntime.transformers.fusion").warning("ort child notice")
        logging.getLogger().handle(logging.LogRecord("root", logging.WARNING, ort_file, 1, "ort root notice", None, None))
        logging.getLogger().handle(logging.LogRecord("root", logging.ERROR, ort_file, 1, "ort root error", None, None))
    logging.getLogger("onnxruntime.transformers.fusion").warning("ort after")
    got = [r.getMessage() for r in caplog.records]
    assert got == ["ours", "ort root error", "ort after"], got
