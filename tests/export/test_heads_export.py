"""Every registered head: fits on a small separable set, and its exported ONNX graph matches PyTorch.

Parity is measured with the worker's own ONNX Runtime wrapper (export.onnx_io.parity),
on inputs the head was not trained on.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from export import heads
from export.heads.base import EmbeddingSet
from export.heads.gendet import GenDetGraph
from export.onnx_io import export_module, parity
from worker.model.sessions import OnnxModel

#: Settings small enough for seconds on two cores; the structure is the paper's.
FAST: dict[str, dict] = {
    "linear-probe": {"lr": 1e-2, "max_epochs": 50},
    "knn": {"k": 5, "bank_size": 40},
    "gendet": {
        "tokens": 2,
        "width": 32,
        "rotations": 3,
        "teacher_epochs": 15,
        "classifier_epochs": 15,
        "batch_size": 16,
        **{f"lr_{k}": 3e-3 for k in ("teacher", "student", "augmenter", "classifier")},
    },
    "gendet-dr": {
        "tokens": 2,
        "width": 32,
        "rotations": 3,
        "teacher_epochs": 15,
        "classifier_epochs": 15,
        "batch_size": 16,
        "code_dim": 8,
        "ae_epochs": 10,
        "ae_hidden": 16,
        **{f"lr_{k}": 3e-3 for k in ("teacher", "student", "augmenter", "classifier")},
    },
    "ntf": {"hidden": 32, "proj_dim": 16, "stage1_epochs": 5, "stage2_epochs": 5, "lr": 0.05},
    "freq": {"crop_size": 32, "epochs": 15, "feature": 16, "proj_dim": 16, "lr": 3e-3, "batch_size": 16},
}


def toy_set(n: int = 64, dim: int = 16, crop: int = 32, seed: int = 0) -> EmbeddingSet:
    """Fakes are shifted in embedding space and carry a checkerboard in their crops."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    emb = rng.normal(size=(n, dim)).astype(np.float32) + labels[:, None] * 1.5
    views = np.full((n, 2, dim), np.nan, dtype=np.float32)
    views[labels == 0] = emb[labels == 0][:, None, :] + 0.1 * rng.normal(size=(int((labels == 0).sum()), 2, dim))
    native = rng.random((n, 3, crop, crop)).astype(np.float32) * 0.5
    checker = (np.indices((crop, crop)).sum(0) % 2).astype(np.float32)
    native[labels == 1] += 0.3 * checker
    gens = ["a" if i % 4 < 2 else "b" for i in range(n)]
    return EmbeddingSet(emb, labels, gens, [f"x{i}.png" for i in range(n)], views, np.clip(native, 0, 1))


def test_registry_lists_every_paper_method() -> None:
    assert set(heads.names()) == {"linear-probe", "knn", "gendet", "gendet-dr", "ntf", "freq"}


@pytest.mark.parametrize("name", sorted(FAST))
def test_head_fits_and_onnx_matches_pytorch(name: str, tmp_path: Path) -> None:
    data = toy_set()
    method = heads.get(name)(**FAST[name])
    method.fit(data.subset(range(48)), data.subset(range(48, 64)))
    probs = method.predict_proba(data)
    assert probs.shape == (64,) and np.all((probs >= 0) & (probs <= 1))
    auc_like = (probs[data.labels == 1][:, None] > probs[data.labels == 0][None, :]).mean()
    assert auc_like > 0.75, f"{name} did not learn a separable toy set (pairwise AUC {auc_like:.2f})"

    names = ["embedding" if s == "embedding" else "native_crop" for s in method.inputs]
    outputs = ["probability", *method.anomaly_outputs]
    module = method.inference_module()
    path = export_module(module, method.example_inputs(data.dim, batch=2), names, outputs, tmp_path / f"{name}.onnx")
    fresh = toy_set(n=10, seed=1)
    feeds = [torch.from_numpy(fresh.embeddings if s == "embedding" else fresh.native) for s in method.inputs]
    assert parity(module, path, feeds, names, outputs) < 1e-4
    got = OnnxModel(path, ["CPUExecutionProvider"]).run({n: f.numpy() for n, f in zip(names, feeds, strict=True)}, outputs)
    assert got["probability"].shape == (10,)


def test_gendet_exports_the_raw_discrepancy_and_it_is_zero_when_student_is_teacher() -> None:
    data = toy_set()
    method = heads.get("gendet")(**FAST["gendet"])
    method.fit(data)
    graph = method.inference_module()
    _, disc = graph(torch.from_numpy(data.embeddings))
    assert disc.shape == (64,) and bool((disc > 0).all())
    twin = GenDetGraph(graph.prefix, graph.teacher, copy.deepcopy(graph.teacher), graph.classifier)
    _, zero = twin(torch.from_numpy(data.embeddings))
    assert float(zero.abs().max()) == 0.0


def test_knn_graph_holds_the_bank_and_votes_by_neighbours() -> None:
    data = toy_set()
    method = heads.get("knn")(k=1, bank_size=64, vote="label")
    method.fit(data)
    probs = method.predict_proba(data)  # each point's nearest neighbour is itself
    assert np.array_equal(probs, data.labels.astype(np.float32))


def test_ntf_refuses_data_without_views() -> None:
    data = toy_set()
    data.views = None
    with pytest.raises(ValueError, match="--views"):
        heads.get("ntf")(**FAST["ntf"]).fit(data)


def test_freq_dct_is_an_orthonormal_basis_inside_the_graph() -> None:
    from export.heads.freq import LogDCT, dct_matrix

    c = dct_matrix(16)
    assert np.allclose(c @ c.T, np.eye(16), atol=1e-5)
    flat = torch.full((1, 3, 16, 16), 0.5)
    spec = LogDCT(16, 1e-4).spectrum(flat)[0, 0]
    assert float(spec[0, 0]) == pytest.approx(np.log(0.5 * 16), rel=1e-4)  # all energy in DC: mean * n for orthonormal DCT
    assert float(spec.flatten()[1:].max()) < np.log(1e-3)
