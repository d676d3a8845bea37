"""An ONNX Runtime error on a batch: retried with smaller batches, only the offending image is dead-lettered.

No mock: the bundle gets a second head whose ONNX graph really fails inside
ONNX Runtime whenever its batch contains an all-black image (a Gather with an
index computed from the pixels goes out of bounds), the way a shape or value
bug in an exported head fails on one odd input in production. The same batch
without that image scores normally.
"""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from devkit.bundles import copy_bundle
from devkit.images import unique_jpegs
from worker.config import WorkerConfig
from worker.ingest.wire import InputRecord
from worker.model.bundle import LoadedBundle
from worker.model.rollout import Models
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.batch import BatchProcessor
from worker.pipeline.items import PipelineSettings

CROP = 16


def poison_head(path: Path) -> None:
    """probability = sigmoid(mean pixel) per image; fails for any batch holding an image with mean < 0.02."""
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, CROP, CROP])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"])
    nodes = [
        helper.make_node("ReduceMean", ["pixels", "axes"], ["mean4"], keepdims=0),  # (N,)
        helper.make_node("Sigmoid", ["mean4"], ["prob"]),
        helper.make_node("ReduceMin", ["mean4"], ["darkest"], keepdims=0),  # scalar
        helper.make_node("Less", ["darkest", "black"], ["is_black"]),
        helper.make_node("Cast", ["is_black"], ["bad"], to=TensorProto.INT64),
        helper.make_node("Mul", ["bad", "far"], ["index"]),  # 0, or 1000 for a batch with a black image
        helper.make_node("Gather", ["table", "index"], ["picked"], axis=0),  # out of bounds -> ORT error
        helper.make_node("Mul", ["picked", "zero"], ["nothing"]),
        helper.make_node("Add", ["prob", "nothing"], ["probability"]),
    ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("black", TensorProto.FLOAT, [], [0.02]),
        helper.make_tensor("far", TensorProto.INT64, [], [1000]),
        helper.make_tensor("table", TensorProto.FLOAT, [1], [1.0]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
    ]
    graph = helper.make_graph(nodes, "poison", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture
def poisoned_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    bundle = copy_bundle(tiny_bundle, tmp_path / "poisoned")
    poison_head(bundle / "head-poison.onnx")
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["heads"].append(
        {
            "name": "poison",
            "method": "test-poison",
            "file": "head-poison.onnx",
            "inputs": [{"name": "pixels", "source": "native_crop", "crop_size": CROP}],
            "trained": False,
        }
    )
    doc["files"]["head-poison.onnx"] = hashlib.sha256((bundle / "head-poison.onnx").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(doc))
    return bundle


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(buf, "PNG")
    return buf.getvalue()


def test_one_bad_image_is_dead_lettered_and_the_rest_of_its_batch_scored(poisoned_bundle: Path) -> None:
    bundle = LoadedBundle(poisoned_bundle, ["CPUExecutionProvider"])
    images = unique_jpegs(7, seed=8)
    payloads = [*images[:5], _png((0, 0, 0)), *images[5:]]
    records = [InputRecord("t", 0, i, None, f"u-{i}".encode(), data) for i, data in enumerate(payloads)]

    # The failure is real: ONNX Runtime refuses the whole batch that holds the black image.
    from worker.ingest.preprocess import native_crop

    crops = np.stack([native_crop(Image.open(io.BytesIO(p)).convert("RGB"), CROP) for p in payloads])
    with pytest.raises(Exception, match=r"(?i)out of (data )?bounds|indices|invalid"):
        bundle.heads[1][1].run({"pixels": crops})

    metrics = WorkerMetrics()
    cfg = WorkerConfig(bundle=poisoned_bundle, redis_url="", max_batch=8)
    with ThreadPoolExecutor(2) as pool:
        outcomes = BatchProcessor(PipelineSettings.from_config(cfg), Models(bundle), None, pool, metrics).process(records)

    assert len(outcomes) == len(records)
    bad = outcomes[5]
    assert bad.dead_letter is not None and bad.dead_letter.error_code.value == "inference_failed"
    assert bad.dead_letter.upload_id == "u-5" and bad.dead_letter.message.startswith("model failed on this image")
    good = [o for i, o in enumerate(outcomes) if i != 5]
    assert all(o.verdict is not None and set(o.verdict.head_scores) == {"linear-probe", "poison"} for o in good)
    # halving 8 -> 4 -> 2 -> 1 around the culprit: three failed chunks were split
    assert metrics.inference_retries.total() == 3
