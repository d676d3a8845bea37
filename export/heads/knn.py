"""Nearest neighbour over a bank of real/fake embeddings (UniversalFakeDetect, Ojha et al. 2023; seed 002).

As in the paper, "training" builds the bank from the embeddings of **all**
training images (L2-normalised; ``bank_size`` None), and an image is called
fake exactly when its **nearest** bank entry by cosine similarity is fake. The
exported graph holds the bank as a constant: L2-normalise the query, one
MatMul with the bank (cosine similarities), then the vote.

``vote="nearest"`` (default): probability = sigmoid((s_fake - s_real) / tau),
with s_fake / s_real the similarity of the nearest fake / nearest real bank
entry. It is above 0.5 exactly when the nearest neighbour is fake (the paper's
decision, checked against a brute-force reference in the tests) and graded
by how much nearer: the paper's output, the neighbour's label, is 0 or 1, and
with two score values a 1%-FPR threshold cannot be set (every real image
whose neighbour is fake scores 1.0, the highest possible threshold). tau
(0.05) only shapes the grading; it never changes the decision at 0.5.

Options, each for a reason:

* ``vote="label"``: the paper's literal output, the fraction of fake labels
  among the k nearest (k = 1: the nearest neighbour's label, 0 or 1).
* ``vote="soft"``: the similarity-weighted fraction
  ``sum_j softmax(sim_j / tau)[j] * fake_j`` over the k neighbours (this head's
  earlier default, with k = 9).
* ``bank_size``: a stratified sample (class proportions kept) instead of the
  whole set, for a smaller graph.
* ``bank_dtype="float16"``: the bank stored in half precision (half the
  bytes; the graph casts it back to float32 before the MatMul). Its fidelity,
  measured at fit time on the validation queries against the float32 bank
  (share of unchanged nearest neighbours and decisions, largest score
  change), goes into the manifest (``heads[].training.export``).
* A bank too big for one ONNX protobuf (2 GiB: UFD's 720K x 768 float32 is
  2.2 GB) is written as external data, ``head-knn.onnx.data`` beside the graph
  (:mod:`export.onnx_io`); ``external_data`` forces it either way.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.heads.base import EmbeddingSet, FitReport, HeadConfig, HeadMethod
from export.heads.blocks import require_both_classes


class KNNConfig(HeadConfig):
    k: int = 1
    bank_size: int | None = None
    vote: Literal["nearest", "label", "soft"] = "nearest"
    tau: float = 0.05
    bank_dtype: Literal["float32", "float16"] = "float32"
    external_data: bool | None = None


class KNNGraph(nn.Module):
    """Query -> cosine similarities with the bank -> top-k -> vote. ``export_info`` goes into the manifest."""

    # Class-level defaults: a checkpoint pickled before these attributes existed used the soft vote.
    vote: str = "soft"
    external_data: bool | None = None
    export_info: dict[str, Any] = {}  # noqa: RUF012 - read-only default, every instance assigns its own
    # Buffers (register_buffer), named for the type checker: nn.Module.__getattr__ is typed Tensor | Module.
    bank_t: torch.Tensor
    labels: torch.Tensor

    def __init__(self, bank: np.ndarray, bank_labels: np.ndarray, k: int, tau: float, vote: str = "nearest", dtype: str = "float32") -> None:
        super().__init__()
        self.register_buffer("bank_t", torch.from_numpy(np.ascontiguousarray(bank.T, dtype=np.float32)).to(getattr(torch, dtype)))
        self.register_buffer("labels", torch.from_numpy(bank_labels.astype(np.float32)))
        self.k, self.tau, self.vote = k, tau, vote
        self.external_data = None
        self.export_info = {}

    def similarities(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.normalize(embedding, dim=1) @ self.bank_t.float()

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        sim = self.similarities(embedding)
        if self.vote == "nearest":  # cosine similarities lie in [-1, 1]: -3 hides the other class from the max
            fake = self.labels > 0.5
            s_fake = torch.where(fake, sim, torch.full_like(sim, -3.0)).amax(dim=1)
            s_real = torch.where(fake, torch.full_like(sim, -3.0), sim).amax(dim=1)
            return torch.sigmoid((s_fake - s_real) / self.tau)
        top, idx = torch.topk(sim, self.k, dim=1)
        if self.vote == "soft":
            weights = torch.softmax(top / self.tau, dim=1)
            return (weights * self.labels[idx]).sum(dim=1).clamp(0.0, 1.0)  # softmax sums can exceed 1 by an ulp
        return self.labels[idx].mean(dim=1)


def sample_bank(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Row indices of the bank: all rows when ``size`` is None or they fit, else a stratified sample keeping the class proportions."""
    n = len(labels)
    if size is None or n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in (0, 1):
        rows = np.flatnonzero(labels == cls)
        take = max(1, round(size * len(rows) / n))
        chosen.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    return np.sort(np.concatenate(chosen))[:size]


@torch.no_grad()
def fp16_fidelity(graph16: KNNGraph, ref32: KNNGraph, queries: np.ndarray, batch: int = 1024) -> dict[str, Any]:
    """How the half-precision bank changes the answers on ``queries``, against the same bank in float32."""
    same_nn = same_decision = 0
    worst = 0.0
    for lo in range(0, len(queries), batch):
        q = torch.from_numpy(np.asarray(queries[lo : lo + batch], dtype=np.float32))
        same_nn += int((graph16.similarities(q).argmax(dim=1) == ref32.similarities(q).argmax(dim=1)).sum())
        p16, p32 = graph16(q), ref32(q)
        same_decision += int(((p16 > 0.5) == (p32 > 0.5)).sum())
        worst = max(worst, float((p16 - p32).abs().max()))
    n = len(queries)
    return {
        "queries": n,
        "same_nearest_neighbour": same_nn / n if n else None,
        "same_decision_at_0.5": same_decision / n if n else None,
        "probability_abs_diff_max": worst,
    }


class KNN(HeadMethod):
    name = "knn"
    paper = "Ojha et al., Towards Universal Fake Image Detectors (CVPR 2023), nearest neighbour, seed 002"
    Config = KNNConfig
    config: KNNConfig
    #: The paper's bank is the training images' embeddings; ``--augment`` copies would make it K+1 times larger (graph size,
    #: query cost) for a method that learns nothing from them.
    fits_augmented = False

    def __init__(self, config: KNNConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.graph: KNNGraph | None = None

    def fit(self, train: EmbeddingSet, val: EmbeddingSet | None = None, progress: bool = False) -> FitReport:
        require_both_classes(train.labels, self.name)
        cfg = self.config
        rows = sample_bank(train.labels, cfg.bank_size, cfg.seed)
        if len(rows) < cfg.k:
            raise ValueError(f"knn needs at least k={cfg.k} bank rows, the training split has {len(rows)}")
        bank = train.embeddings[rows]
        bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
        graph = KNNGraph(bank, train.labels[rows], cfg.k, cfg.tau, cfg.vote, cfg.bank_dtype).eval()
        graph.external_data = cfg.external_data
        real, fake = int((train.labels[rows] == 0).sum()), int((train.labels[rows] == 1).sum())
        info: dict[str, Any] = {
            "bank_rows": len(rows),
            "bank_of_training_rows": f"{len(rows)}/{len(train)}",
            "bank_dtype": cfg.bank_dtype,
            "bank_bytes": int(graph.bank_t.numel() * graph.bank_t.element_size()),
            "vote": cfg.vote,
            "k": cfg.k,
        }
        notes = [f"bank of {len(rows)} embeddings ({real} real, {fake} fake; {cfg.bank_dtype})"]
        if cfg.bank_dtype == "float16":
            has_val = val is not None and len(val) > 0
            queries = val.embeddings if has_val and val is not None else train.embeddings
            ref32 = KNNGraph(bank, train.labels[rows], cfg.k, cfg.tau, cfg.vote, "float32").eval()
            fid = fp16_fidelity(graph, ref32, queries)
            fid["split"] = "validation" if has_val else "training"
            info["fp16_fidelity"] = fid
            notes.append(
                f"float16 bank vs float32 on {fid['queries']} {fid['split']} queries: same nearest neighbour {fid['same_nearest_neighbour']:.4f}, "
                f"same decision {fid['same_decision_at_0.5']:.4f}, max |score change| {fid['probability_abs_diff_max']:.2e}"
            )
        graph.export_info = info
        self.graph = graph
        return FitReport(epochs=0, final_loss=float("nan"), notes=notes)

    def inference_module(self) -> nn.Module:
        if self.graph is None:
            raise RuntimeError("knn is not fitted")
        return self.graph.eval()
