"""kNN as UniversalFakeDetect: the whole training set is the bank and an image takes its nearest neighbour's label.

Checked against a brute-force numpy reference; the soft vote stays an option; a
bank stored as external data (and in float16) round-trips through ONNX Runtime
and through a served bundle, with the float16 fidelity in the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.bundle import HeadSpec, uncalibrated, write_bundle
from export.clip import TINY, load_encoder
from export.heads.base import EmbeddingSet
from export.heads.knn import KNN
from export.onnx_io import export_module, external_data_file, parity
from worker.model.bundle import LoadedBundle
from worker.model.sessions import OnnxModel


def data(n: int, dim: int, seed: int) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)  # unbalanced on purpose: the default bank keeps every row anyway
    labels[:2] = [0, 1]
    emb = rng.normal(size=(n, dim)).astype(np.float32) + 0.8 * labels[:, None]
    return EmbeddingSet(emb, labels, ["g"] * n)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_default_bank_is_every_training_embedding_and_the_decision_is_the_nearest_label() -> None:
    train, queries = data(300, 12, 0), data(80, 12, 1)
    knn = KNN()
    knn.fit(train)
    graph = knn.inference_module()
    bank = graph.bank_t.numpy().T
    assert bank.shape == (300, 12)
    assert np.allclose(bank, unit(train.embeddings), atol=1e-6)
    assert np.array_equal(graph.labels.numpy(), train.labels.astype(np.float32))
    sim = unit(queries.embeddings) @ unit(train.embeddings).T  # brute force, cosine
    nearest = np.argmax(sim, axis=1)
    probs = knn.predict_proba(queries)
    assert np.array_equal((probs > 0.5).astype(np.int64), train.labels[nearest])  # the paper's decision
    margin = np.where(train.labels == 1, sim, -3).max(axis=1) - np.where(train.labels == 0, sim, -3).max(axis=1)
    assert np.allclose(probs, 1 / (1 + np.exp(-margin / 0.05)), atol=1e-5)  # graded by how much nearer the nearest fake is
    assert len(np.unique(probs)) > 40


def test_label_vote_is_the_nearest_neighbours_label() -> None:
    train, queries = data(300, 12, 0), data(80, 12, 1)
    knn = KNN(vote="label")
    knn.fit(train)
    nearest = np.argmax(unit(queries.embeddings) @ unit(train.embeddings).T, axis=1)
    assert np.array_equal(knn.predict_proba(queries), train.labels[nearest].astype(np.float32))


def test_soft_vote_option_weights_the_k_nearest_by_softmax_of_similarity() -> None:
    train, queries = data(200, 8, 2), data(40, 8, 3)
    knn = KNN(k=9, vote="soft", tau=0.05)
    knn.fit(train)
    sim = unit(queries.embeddings) @ unit(train.embeddings).T
    top = np.argsort(-sim, axis=1)[:, :9]
    s = np.take_along_axis(sim, top, axis=1) / 0.05
    w = np.exp(s - s.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    expected = (w * train.labels[top]).sum(axis=1)
    got = knn.predict_proba(queries)
    assert np.allclose(got, expected, atol=1e-5)
    assert len(np.unique(np.round(got, 4))) > 10  # graded, unlike the nearest-neighbour label


def test_float16_external_data_bank_round_trips_through_onnx_runtime(tmp_path: Path) -> None:
    train, val, queries = data(400, 16, 4), data(60, 16, 5), data(50, 16, 6)
    knn = KNN(bank_dtype="float16", external_data=True)
    report = knn.fit(train, val)
    graph = knn.inference_module()
    assert graph.bank_t.dtype == torch.float16
    fid = graph.export_info["fp16_fidelity"]
    assert fid["queries"] == 60 and fid["split"] == "validation"
    assert 0.9 <= fid["same_nearest_neighbour"] <= 1.0 and 0.9 <= fid["same_decision_at_0.5"] <= 1.0
    assert graph.export_info["bank_bytes"] == 400 * 16 * 2
    assert any("float16 bank vs float32" in n for n in report.notes)

    path = export_module(graph, [torch.from_numpy(queries.embeddings[:2])], ["embedding"], ["probability"], tmp_path / "head-knn.onnx", external_data=True)
    side = external_data_file(path)
    assert side.is_file() and side.stat().st_size >= 400 * 16 * 2  # the bank lives beside the graph
    assert path.stat().st_size < 400 * 16 * 2
    got = OnnxModel(path, ["CPUExecutionProvider"]).run({"embedding": queries.embeddings}, ["probability"])["probability"]
    assert np.allclose(got, knn.predict_proba(queries), atol=1e-6)
    assert parity(graph, path, [torch.from_numpy(queries.embeddings)], ["embedding"], ["probability"]) < 1e-6


def test_served_bundle_with_an_external_data_bank_scores_like_pytorch(tmp_path: Path) -> None:
    encoder, pre, dim = load_encoder(TINY, None, seed=0, random_weights=True)
    train, val, queries = data(300, dim, 7), data(40, dim, 8), data(30, dim, 9)
    knn = KNN(bank_dtype="float16", external_data=True)
    knn.fit(train, val)
    out = tmp_path / "bundle"
    manifest = write_bundle(
        out, encoder=encoder, preprocess=pre, embed_dim=dim, architecture=TINY, pretrained=None, heads=[HeadSpec("knn", knn)], calibration=uncalibrated()
    )
    assert "head-knn.onnx.data" in manifest.files  # pinned by sha256 like every file
    export = manifest.heads[0].training["export"]
    assert export["external_data"] == "head-knn.onnx.data" and export["bank_dtype"] == "float16"
    assert export["fp16_fidelity"]["queries"] == 40 and 0.9 <= export["fp16_fidelity"]["same_decision_at_0.5"] <= 1.0
    served = LoadedBundle(out).score_embeddings(queries.embeddings).probability
    assert np.max(np.abs(served - knn.predict_proba(queries))) < 1e-6


def test_a_bank_over_the_size_threshold_goes_to_external_data_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from export import onnx_io

    train, queries = data(100, 8, 10), data(10, 8, 11)
    knn = KNN()
    knn.fit(train)
    graph = knn.inference_module()
    example = [torch.from_numpy(queries.embeddings[:2])]
    inline = export_module(graph, example, ["embedding"], ["probability"], tmp_path / "a.onnx")
    assert not external_data_file(inline).exists()  # 3 KB of bank: inside the protobuf
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 100 * 8 * 4 - 1)  # the bank alone is over it
    spilled = export_module(graph, example, ["embedding"], ["probability"], tmp_path / "b.onnx")
    assert external_data_file(spilled).is_file()
    got = OnnxModel(spilled, ["CPUExecutionProvider"]).run({"embedding": queries.embeddings}, ["probability"])["probability"]
    assert np.allclose(got, knn.predict_proba(queries), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "b.onnx.data"]  # no scratch files left behind
