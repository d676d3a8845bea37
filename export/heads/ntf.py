"""NTF: natural-trace forensics with a soft contrastive loss (Liang et al. 2024; seed 003).

Stage 1, natural-trace representation learning, on *real* images only: two
augmented views per real image (``python -m export embed --views``) go through
two projection heads (two-layer MLPs, output 128): f_het trained with the
self-supervised contrastive loss L_het (eq. 1), f_hom with L_hom (eq. 2), and
soft orthogonality L_orth between them (eq. 3):
L_tra = L_hom + L_het + lambda L_orth, lambda = 0.1. (Readings of eq. 2 and 3
are in :mod:`export.heads.losses`: eq. 2's argmax is taken as the max, eq. 3's
cos as |cos|.)

Stage 2, transfer learning, on real and fake images with f_hom frozen: an
auxiliary projection head g for the soft contrastive loss (eq. 5, with the
homogeneous features of the batch's real images as extra positives for real
anchors and negatives for fake anchors, eta = 0.5) and a classification head
with BCE (eq. 6): L_d = L_scl + gamma L_ce, gamma = 0.5.

Deviations, and why:

* The paper's encoder is a ResNet-50 trained in stage 1 and frozen in stage 2.
  Here the encoder is the frozen CLIP model in both stages (the design's rule:
  heads train on frozen embeddings), so both projection heads learn on the
  embedding. For the soft contrastive loss to shape what the classifier sees,
  g and the classifier share a trainable trunk (Linear + ReLU, 512) on the
  embedding; without it g and the classifier would be independent and SCL
  would do nothing for detection.
* Augmentations are the ones ``embed --views`` applies (random resized crop,
  flip, colour jitter on the decoded image), not the paper's 32-px crops.
* Temperature tau (0.1) and the projection heads' hidden width (512) are not
  given in the paper. Optimiser as the paper: SGD, momentum 0.9, lr 0.1,
  weight decay 1e-3; 200 epochs in stage 1, 10 in stage 2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from export.heads.base import EmbeddingSet, FitReport, HeadConfig, HeadMethod
from export.heads.blocks import Standardize, minibatches, mlp, require_both_classes
from export.heads.losses import het_loss, hom_loss, orth_loss, soft_contrastive_loss


class NTFConfig(HeadConfig):
    proj_dim: int = 128
    hidden: int = 512
    tau: float = 0.1
    lam: float = 0.1
    eta: float = 0.5
    gamma: float = 0.5
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-3
    stage1_epochs: int = 200
    stage2_epochs: int = 10
    batch_size: int = 128


class NTFGraph(nn.Module):
    def __init__(self, std: Standardize, trunk: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.std, self.trunk, self.classifier = std, trunk, classifier

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(self.trunk(self.std(embedding)))).squeeze(-1)


def _sgd(params: Any, cfg: NTFConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class NTF(HeadMethod):
    name = "ntf"
    paper = "Liang et al., Transfer Learning of Real Image Features with Soft Contrastive Loss for Fake Image Detection (2024), seed 003"
    Config = NTFConfig
    config: NTFConfig

    def __init__(self, config: NTFConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.graph: NTFGraph | None = None
        self.f_hom: nn.Module | None = None

    def fit(self, train: EmbeddingSet, val: EmbeddingSet | None = None, progress: bool = False) -> FitReport:
        from tqdm import tqdm

        cfg = self.config
        require_both_classes(train.labels, self.name)
        if train.views is None:
            raise ValueError("ntf needs two augmented views per real image: embed the dataset with `python -m export embed --views`")
        has_views = (train.labels == 0) & ~np.isnan(train.views).any(axis=(1, 2))
        if has_views.sum() < 2:
            raise ValueError(f"ntf needs views of at least 2 real images, found {int(has_views.sum())}; embed with --views")
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        std = Standardize(train.dim).fit(train.embeddings).eval()
        history: list[dict[str, Any]] = []

        # Stage 1: homogeneous / heterogeneous projection heads on real images' two views.
        with torch.no_grad():
            v = torch.from_numpy(train.views[has_views])
            v1, v2 = std(v[:, 0]), std(v[:, 1])
        f_hom = mlp(train.dim, cfg.hidden, cfg.proj_dim)
        f_het = mlp(train.dim, cfg.hidden, cfg.proj_dim)
        opt = _sgd([*f_hom.parameters(), *f_het.parameters()], cfg)
        for epoch in tqdm(range(1, cfg.stage1_epochs + 1), desc="ntf stage 1", disable=not progress):
            sums = np.zeros(4)
            batches = 0
            for idx in minibatches(len(v1), cfg.batch_size, gen):
                if len(idx) < 2:
                    continue
                h1, h2 = f_hom(v1[idx]), f_hom(v2[idx])
                e1, e2 = f_het(v1[idx]), f_het(v2[idx])
                l_het = het_loss(e1, e2, cfg.tau)
                l_hom = hom_loss(h1, h2)
                l_orth = orth_loss(torch.cat([h1, h2]), torch.cat([e1, e2]))
                loss = l_hom + l_het + cfg.lam * l_orth
                opt.zero_grad()
                loss.backward()
                opt.step()
                sums += [loss.item(), l_het.item(), l_hom.item(), l_orth.item()]
                batches += 1
            sums /= max(1, batches)
            history.append({"stage": "natural-trace", "epoch": epoch, "loss": sums[0], "het": sums[1], "hom": sums[2], "orth": sums[3]})
        f_hom.eval()
        for p in f_hom.parameters():
            p.requires_grad_(False)

        # Stage 2: soft contrastive transfer + BCE classifier, f_hom frozen.
        x = std(torch.from_numpy(train.embeddings)).detach()
        y = torch.from_numpy(train.labels)
        trunk = nn.Sequential(nn.Linear(train.dim, cfg.hidden), nn.ReLU())
        proj = mlp(cfg.hidden, cfg.hidden, cfg.proj_dim)
        classifier = nn.Linear(cfg.hidden, 1)
        opt = _sgd([*trunk.parameters(), *proj.parameters(), *classifier.parameters()], cfg)
        bce = nn.BCEWithLogitsLoss()
        for epoch in tqdm(range(1, cfg.stage2_epochs + 1), desc="ntf stage 2", disable=not progress):
            sums = np.zeros(3)
            batches = 0
            for idx in minibatches(len(x), cfg.batch_size, gen):
                if len(idx) < 2:
                    continue
                xb, yb = x[idx], y[idx]
                feats = trunk(xb)
                real = yb == 0
                hom = f_hom(xb[real]) if bool(real.any()) else None
                l_scl = soft_contrastive_loss(proj(feats), yb, hom, cfg.eta, cfg.tau)
                l_ce = bce(classifier(feats).squeeze(-1), yb.float())
                loss = l_scl + cfg.gamma * l_ce
                opt.zero_grad()
                loss.backward()
                opt.step()
                sums += [loss.item(), l_scl.item(), l_ce.item()]
                batches += 1
            sums /= max(1, batches)
            history.append({"stage": "transfer", "epoch": epoch, "loss": sums[0], "scl": sums[1], "ce": sums[2]})
        self.f_hom = f_hom
        self.graph = NTFGraph(std, trunk.eval(), classifier.eval()).eval()
        notes = [f"stage 1 on {int(has_views.sum())} real images x 2 views"]
        return FitReport(epochs=cfg.stage1_epochs + cfg.stage2_epochs, final_loss=float(history[-1]["loss"]), history=history, notes=notes)

    def inference_module(self) -> nn.Module:
        if self.graph is None:
            raise RuntimeError("ntf is not fitted")
        return self.graph.eval()
