"""The verdict's ``attribution``: the attribution head's answer, or ``unknown`` below the manifest's threshold.

No mock: the tiny bundle gets a real attribution graph (embedding -> MatMul -> Add -> Softmax, run by
ONNX Runtime like the one ``bundle --data`` exports). Its weights are zero, so its probabilities are the
softmax of its bias whatever the image: one bias makes a confident head, another a uniform one, and the
test knows which answer each must give without hard-coding the probabilities it reads back.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from devkit.bundles import copy_bundle
from devkit.images import unique_jpegs
from schemas import UNKNOWN_FAMILY, CacheStatus, Timings, VerdictEvent
from worker.config import WorkerConfig
from worker.ingest.wire import InputRecord, Upload
from worker.model.bundle import LoadedBundle
from worker.model.rollout import Models
from worker.model.scores import Score
from worker.pipeline.batch import BatchProcessor
from worker.pipeline.items import PipelineSettings
from worker.pipeline.outcomes import OutcomeLimits, verdict_outcome
from worker.pipeline.verdict_details import attribution_for

CLASSES = ["diffusion", "tconv", "real"]
THRESHOLD = 0.5
LIMITS = OutcomeLimits(max_record_bytes=1_000_000, payload_copy_max_bytes=4096)


def attribution_graph(path: Path, dim: int, bias: list[float]) -> None:
    """P(class) = softmax(embedding @ 0 + bias): the same for every image, set by the bias."""
    x = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(bias)])
    nodes = [
        helper.make_node("MatMul", ["embedding", "w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT, [dim, len(bias)], [0.0] * (dim * len(bias))),
        helper.make_tensor("b", TensorProto.FLOAT, [len(bias)], bias),
    ]
    model = helper.make_model(helper.make_graph(nodes, "attribution", [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def with_attribution(tiny_bundle: Path, out: Path, bias: list[float]) -> Path:
    bundle = copy_bundle(tiny_bundle, out)
    doc = json.loads((bundle / "manifest.json").read_text())
    attribution_graph(bundle / "attribution.onnx", doc["backbone"]["embed_dim"], bias)
    doc["attribution"] = {"file": "attribution.onnx", "classes": CLASSES, "unknown_threshold": THRESHOLD, "coverage": 0.95}
    doc["files"]["attribution.onnx"] = hashlib.sha256((bundle / "attribution.onnx").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(doc))
    return bundle


@pytest.fixture(scope="module")
def confident(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_attribution(tiny_bundle, tmp_path_factory.mktemp("att") / "confident", [0.0, 4.0, 0.0])


@pytest.fixture(scope="module")
def undecided(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_attribution(tiny_bundle, tmp_path_factory.mktemp("att") / "undecided", [0.0, 0.0, 0.0])


def process(bundle_dir: Path, n: int = 3) -> list[VerdictEvent]:
    bundle = LoadedBundle(bundle_dir, ["CPUExecutionProvider"])
    records = [InputRecord("t", 0, i, None, f"u-{i}".encode(), data) for i, data in enumerate(unique_jpegs(n, seed=5))]
    cfg = WorkerConfig(bundle=bundle_dir, redis_url="")
    with ThreadPoolExecutor(2) as pool:
        outcomes = BatchProcessor(PipelineSettings.from_config(cfg), Models(bundle), None, pool).process(records)
    verdicts = [o.verdict for o in outcomes]
    assert all(v is not None for v in verdicts)
    return [v for v in verdicts if v is not None]


def test_scored_verdicts_carry_the_top_family_with_every_class_probability(confident: Path) -> None:
    for v in process(confident):
        a = v.attribution
        assert a is not None and set(a.probabilities) == set(CLASSES)
        assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert a.family == "tconv" == max(a.probabilities, key=a.probabilities.__getitem__)
        assert a.probability == a.probabilities["tconv"] > THRESHOLD and a.threshold == THRESHOLD
        assert VerdictEvent.model_validate_json(v.model_dump_json()) == v  # survives the wire


def test_below_the_threshold_the_family_is_unknown_and_the_label_is_untouched(undecided: Path, tiny_bundle: Path) -> None:
    with_head, without = process(undecided), process(tiny_bundle)
    for v in with_head:
        a = v.attribution
        assert a is not None and a.family == UNKNOWN_FAMILY and a.probability < THRESHOLD
        assert a.probability == pytest.approx(1 / len(CLASSES), abs=1e-5)
    # the head never moves the score or the label: same backbone and detector head, same images
    assert [(v.score, v.label) for v in with_head] == [(v.score, v.label) for v in without]
    assert all(v.attribution is None for v in without)  # a bundle without the head: no attribution


def test_cached_scores_keep_their_attribution_and_entries_without_it_give_none(confident: Path) -> None:
    bundle = LoadedBundle(confident, ["CPUExecutionProvider"])
    upload = Upload(upload_id="c-1", tenant=None, content_type=None, data=b"x", uri=None)
    timings = Timings(queue_ms=0, decode_ms=0, inference_ms=0, total_ms=0)
    record = InputRecord("t", 0, 0, None, b"c-1", b"x")
    probs = {"diffusion": 0.2, "tconv": 0.1, "real": 0.7}
    hit = verdict_outcome(record, upload, "0" * 64, Score(0.3, {}, {}, probs), bundle, CacheStatus.hit, timings, None, LIMITS).verdict
    assert hit is not None and hit.attribution is not None
    assert (hit.attribution.family, hit.attribution.probabilities) == ("real", probs)
    old_entry = Score(0.3)  # written before cache entries kept the head's output
    assert attribution_for(old_entry, bundle) is None
    near_tie = attribution_for(Score(0.3, {}, {}, {"diffusion": 0.45, "tconv": 0.1, "real": 0.45}), bundle)
    assert near_tie is not None and near_tie.family == UNKNOWN_FAMILY and near_tie.probability == 0.45
