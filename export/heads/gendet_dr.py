"""GenDet-DR: GenDet on autoencoder-reduced features (seed 000, "Reduced-Dimensional Anomaly-Aware Generalization").

The embedding (768-d for ViT-L/14) is standardised and compressed to 150
dimensions by a lightweight autoencoder; then the whole GenDet framework
(:mod:`export.heads.gendet`) runs on the 150-d codes. The exported graph is
standardise -> encoder -> standardise(codes) -> GenDet, so the worker feeds it
the raw embedding like every other head.

The autoencoder's loss is reconstruction (MSE, real and fake) plus the paper's
anomaly-aware term, which "enforces tight clustering of real images in the
latent space" (its contribution 2: a "compact, anomaly-aware latent space where
real images form a tight cluster"), :func:`real_compactness`::

    L_ae = MSE(x, dec(enc(x))) + anomaly_weight * L_anom,
    L_anom = mean_{r real} ||z_r - mean_real(z)||^2 / mean_{i all} ||z_i - mean_all(z)||^2

over the codes z of a batch. The paper prints no formula; ours is the spread
of the real codes *relative to* the spread of all codes, because the absolute
spread (Deep SVDD's ``||z - c||^2``) can be shrunk by scaling every code down
(the decoder scales back up, and the codes are standardised before GenDet
anyway), which pulls nothing together; the ratio can only fall by real codes
clustering apart from the fakes. A batch with fewer than two real rows adds 0.

Not in the paper, chosen here and configurable: the term's form (above) and
weight (``anomaly_weight`` 0.1; 0 turns it off), the autoencoder's shape (one
hidden layer of 384 with GELU on each side: "lightweight"), its optimiser
(AdamW, lr 1e-3, weight decay 0.01, 100 epochs, the epoch of best validation
loss L_ae kept), and standardising the codes before GenDet (the code scale is
arbitrary). GenDet's own choices are listed in :mod:`export.heads.gendet`.
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
    anomaly_weight: float = 0.1


class AutoEncoder(nn.Module):
    def __init__(self, dim: int, hidden: int, code: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, code))
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def real_compactness(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The anomaly-aware term: spread of the real codes around their mean over the spread of all codes (0 without 2 reals)."""
    real = z[labels == 0]
    if len(real) < 2:
        return z.sum() * 0.0
    spread_real = ((real - real.mean(dim=0)) ** 2).sum(dim=1).mean()
    spread_all = ((z - z.mean(dim=0)) ** 2).sum(dim=1).mean()
    return spread_real / (spread_all + 1e-12)


def train_autoencoder(
    x: torch.Tensor,
    y: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: GenDetDRConfig,
    history: list[dict[str, Any]],
) -> tuple[AutoEncoder, float]:
    """Reconstruction + ``anomaly_weight`` x :func:`real_compactness`; keeps the epoch of the best validation loss."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    ae = AutoEncoder(x.shape[1], cfg.ae_hidden, cfg.code_dim)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.ae_lr, weight_decay=cfg.weight_decay)
    best, best_state = float("inf"), None

    def losses(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = ae.encoder(xb)
        return ((ae.decoder(z) - xb) ** 2).mean(), real_compactness(z, yb)

    for epoch in range(1, cfg.ae_epochs + 1):
        ae.train()
        sums = np.zeros(2)
        for idx in minibatches(len(x), cfg.batch_size, gen):
            recon, anom = losses(x[idx], y[idx])
            loss = recon + cfg.anomaly_weight * anom
            opt.zero_grad()
            loss.backward()
            opt.step()
            sums += np.array([recon.item(), anom.item()]) * len(idx)
        ae.eval()
        sums /= len(x)
        recon_mean, anom_mean = float(sums[0]), float(sums[1])
        row: dict[str, Any] = {
            "stage": "autoencoder",
            "epoch": epoch,
            "train_loss": recon_mean + cfg.anomaly_weight * anom_mean,
            "recon": recon_mean,
            "anomaly": anom_mean,
        }
        with torch.no_grad():
            if val is not None and len(val[0]):
                v_recon, v_anom = losses(*val)
                score = float(v_recon + cfg.anomaly_weight * v_anom)
                row["val_recon"], row["val_anomaly"] = float(v_recon), float(v_anom)
            else:
                score = row["train_loss"]
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
            y = torch.from_numpy(train.labels)
            v = (std(torch.from_numpy(val.embeddings)), torch.from_numpy(val.labels)) if val is not None and len(val) else None
        history: list[dict[str, Any]] = []
        ae, _ = train_autoencoder(x, y, v, cfg, history)
        with torch.no_grad():
            codes = ae.encoder(x)
            compact = float(real_compactness(codes, y))
        code_std = Standardize(cfg.code_dim).fit(codes.numpy()).eval()
        prefix = nn.Sequential(std, ae.encoder, code_std).eval()
        kept = min(history, key=lambda h: h["val_loss"])
        note = (
            f"autoencoder {train.dim}->{cfg.code_dim}: reconstruction MSE {kept.get('val_recon', kept['recon']):.4f} (standardised units), "
            f"real/all code spread {compact:.3f} on training codes (anomaly_weight {cfg.anomaly_weight:g})"
        )
        return prefix, history, [note]
