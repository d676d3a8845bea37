"""Cosine k-nearest-neighbour over a bank of real/fake embeddings (UniversalFakeDetect, Ojha et al. 2023; seed 002).

"Training" builds the bank: up to ``bank_size`` training embeddings, sampled
without replacement with the real/fake proportions of the training set kept,
L2-normalised. The exported graph holds the bank as a constant: L2-normalise
the query, one MatMul with the bank (cosine similarities), TopK(k), Gather of
the neighbours' labels.

Probability: the paper classifies by the nearest neighbours' labels. A hard
vote (fraction of fake neighbours) gives only k+1 distinct scores, which makes
AP, ROC and threshold calibration coarse; we use the similarity-weighted
fraction ``sum_j softmax(sim_j / tau)[j] * fake_j`` over the k neighbours,
which is the vote when the neighbours are equally similar and leans to the
nearest ones otherwise. ``tau`` (0.05) and ``k`` (9) are not fixed by the
paper's digest; both are parameters, as is the bank size (10,000: 31 MB of
float32 at 768-d inside the ONNX file).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.heads.base import EmbeddingSet, FitReport, HeadConfig, HeadMethod
from export.heads.blocks import require_both_classes


class KNNConfig(HeadConfig):
    k: int = 9
    bank_size: int = 10_000
    tau: float = 0.05


class KNNGraph(nn.Module):
    def __init__(self, bank: np.ndarray, bank_labels: np.ndarray, k: int, tau: float) -> None:
        super().__init__()
        self.register_buffer("bank_t", torch.from_numpy(np.ascontiguousarray(bank.T, dtype=np.float32)))
        self.register_buffer("labels", torch.from_numpy(bank_labels.astype(np.float32)))
        self.k, self.tau = k, tau

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        q = F.normalize(embedding, dim=1)
        sim = q @ self.bank_t
        top, idx = torch.topk(sim, self.k, dim=1)
        weights = torch.softmax(top / self.tau, dim=1)
        return (weights * self.labels[idx]).sum(dim=1).clamp(0.0, 1.0)  # softmax sums can exceed 1 by an ulp


def sample_bank(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Row indices of the bank: all rows if they fit, else a stratified sample keeping the class proportions."""
    n = len(labels)
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in (0, 1):
        rows = np.flatnonzero(labels == cls)
        take = max(1, round(size * len(rows) / n))
        chosen.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    return np.sort(np.concatenate(chosen))[:size]


class KNN(HeadMethod):
    name = "knn"
    paper = "Ojha et al., Towards Universal Fake Image Detectors (CVPR 2023), nearest neighbour, seed 002"
    Config = KNNConfig
    config: KNNConfig

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
        self.graph = KNNGraph(bank, train.labels[rows], cfg.k, cfg.tau).eval()
        note = f"bank of {len(rows)} embeddings ({int((train.labels[rows] == 0).sum())} real, {int((train.labels[rows] == 1).sum())} fake)"
        return FitReport(epochs=0, final_loss=float("nan"), notes=[note])

    def inference_module(self) -> nn.Module:
        if self.graph is None:
            raise RuntimeError("knn is not fitted")
        return self.graph.eval()
