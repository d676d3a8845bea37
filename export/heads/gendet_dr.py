"""GenDet-DR: GenDet on autoencoder-reduced features (seed 000, "Reduced-Dimensional Anomaly-Aware Generalization").

The embedding (768-d for ViT-L/14) is standardised and compressed to 150
dimensions by a lightweight autoencoder trained on reconstruction (MSE) of the
training embeddings, real and fake; then the whole GenDet framework
(:mod:`export.heads.gendet`) runs on the 150-d codes. The exported graph is
standardise -> encoder -> standardise(codes) -> GenDet, so the worker feeds it
the raw embedding like every other head.

Not in the paper, chosen here and configurable: the autoencoder's shape (one
hidden layer of 384 with GELU on each side: "lightweight"), its optimiser
(AdamW, lr 1e-3, 100 epochs, best validation reconstruction kept), and
standardising the codes before GenDet (the code scale is arbitrary).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from export.heads.base import EmbeddingSet
from export.heads.blocks import Standardize, minibatches
from export.heads.gendet import GenDet, GenDetConfig


class GenDetDRConfig(GenDetConfig):
    code_dim: int = 150
    ae_hidden: int = 384
    ae_lr: float = 1e-3
    ae_epochs: int = 100


class AutoEncoder(nn.Module):
    def __init__(self, dim: int, hidden: int, code: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, code))
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def train_autoencoder(x: torch.Tensor, xv: torch.Tensor | None, cfg: GenDetDRConfig, history: list[dict[str, Any]]) -> tuple[AutoEncoder, float]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    ae = AutoEncoder(x.shape[1], cfg.ae_hidden, cfg.code_dim)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.ae_lr, weight_decay=cfg.weight_decay)
    best, best_state = float("inf"), None
    for epoch in range(1, cfg.ae_epochs + 1):
        ae.train()
        total = 0.0
        for idx in minibatches(len(x), cfg.batch_size, gen):
            loss = ((ae(x[idx]) - x[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        ae.eval()
        row = {"stage": "autoencoder", "epoch": epoch, "train_loss": total / len(x)}
        with torch.no_grad():
            score = float(((ae(xv) - xv) ** 2).mean()) if xv is not None and len(xv) else row["train_loss"]
        row["val_loss"] = score
        history.append(row)
        if score < best:
            best, best_state = score, copy.deepcopy(ae.state_dict())
    if best_state is not None:
        ae.load_state_dict(best_state)
    return ae.eval(), best


class GenDetDR(GenDet):
    name = "gendet-dr"
    paper = "Reduced-Dimensional Anomaly-Aware Generalization for Deepfake Image Detection (autoencoder -> 150-d, then GenDet), seed 000"
    Config = GenDetDRConfig
    config: GenDetDRConfig

    def _prefix(self, train: EmbeddingSet, val: EmbeddingSet | None, progress: bool) -> tuple[nn.Module, list[dict[str, Any]], list[str]]:
        cfg = self.config
        std = Standardize(train.dim).fit(train.embeddings).eval()
        with torch.no_grad():
            x = std(torch.from_numpy(train.embeddings))
            xv = std(torch.from_numpy(val.embeddings)) if val is not None and len(val) else None
        history: list[dict[str, Any]] = []
        ae, recon = train_autoencoder(x, xv, cfg, history)
        with torch.no_grad():
            codes = ae.encoder(x).numpy()
        code_std = Standardize(cfg.code_dim).fit(np.asarray(codes)).eval()
        prefix = nn.Sequential(std, ae.encoder, code_std).eval()
        return prefix, history, [f"autoencoder {train.dim}->{cfg.code_dim}: reconstruction MSE {recon:.4f} (standardised units)"]
