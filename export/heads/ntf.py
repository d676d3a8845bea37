"""NTF: natural-trace forensics with a soft contrastive loss (Liang et al. 2024; seed 003).

Stage 1, natural-trace representation learning, on *real* images only: two
augmented views per real image (``python -m export embed --views``) go through
the feature encoder E and two projection heads (two-layer MLPs, output 128):
f_het trained with the self-supervised contrastive loss L_het (eq. 1), f_hom
with L_hom (eq. 2), and soft orthogonality L_orth between them (eq. 3):
L_tra = L_hom + L_het + lambda L_orth, lambda = 0.1; E, f_hom and f_het all
learn. (Readings of eq. 2 and 3 are in :mod:`export.heads.losses`: eq. 2's
argmax is taken as the max, eq. 3's cos as |cos|.)

Stage 2, transfer learning, on real and fake images with E (and f_hom) frozen,
as the paper's "the feature encoder is frozen during this stage": the stage-1
encoder is reused unchanged, an auxiliary projection head g for the soft
contrastive loss (eq. 5, with the homogeneous features f_hom(E(x)) of the
batch's real images as extra positives for real anchors and negatives for fake
anchors, eta = 0.5) and a classification head with BCE (eq. 6):
L_d = L_scl + gamma L_ce, gamma = 0.5.

Optimiser as the paper: SGD, momentum 0.9, weight decay ("attenuation") 1e-3,
200 epochs in stage 1, 10 in stage 2, "an initial learning rate of 0.1": an
initial rate implies a schedule the paper does not name; we decay it with
cosine annealing to 0 over each stage's epochs (stepped per epoch; the rate of
every epoch is in the fit history).

Deviations and readings, and why:

* The paper's encoder E is an ImageNet ResNet-50 trained in stage 1. Here the
  pixels go through the frozen CLIP model first (the design's rule: heads
  train on frozen embeddings) and E is a trainable layer on the standardised
  embedding (Linear + ReLU, width ``hidden`` 512): it plays the paper's E,
  trained by L_tra in stage 1 and frozen in stage 2.
* With E frozen, g and a classifier that both read E's output directly would
  be independent, and SCL would shape nothing the classifier sees. We read
  the classification head as sharing g's first layer: g = W2 ReLU(W1 e) feeds
  SCL, the classifier is a linear layer on ReLU(W1 e), so eq. 5 and eq. 6 train
  the same features, as the paper's "jointly optimized transfer training and
  binary classification" asks.
* Augmentations are the ones ``embed --views`` applies (random resized crop,
  flip, colour jitter on the decoded image), not the paper's 32-px crops.
* Temperature tau (0.1) and the projection heads' hidden width (512) are not
  given in the paper.
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
    """Inference: standardise -> E (stage 1, frozen) -> g's first layer -> classifier."""

    def __init__(self, std: Standardize, trunk: nn.Module, shared: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.std, self.trunk, self.shared, self.classifier = std, trunk, shared, classifier

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        h = self.trunk(self.std(embedding))
        if "shared" in self._modules:  # a checkpoint saved before the stage-1 encoder has no shared layer
            h = self.shared(h)
        return torch.sigmoid(self.classifier(h)).squeeze(-1)


def _sgd(params: Any, cfg: NTFConfig, epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The paper's SGD, with the initial rate cosine-annealed to 0 over ``epochs``."""
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))


def encoder(dim: int, hidden: int) -> nn.Sequential:
    """The feature encoder E on the standardised embedding: trained in stage 1, frozen in stage 2."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())


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

        # Stage 1: encoder E + homogeneous / heterogeneous projection heads on real images' two views.
        with torch.no_grad():
            v = torch.from_numpy(train.views[has_views])
            v1, v2 = std(v[:, 0]), std(v[:, 1])
        trunk = encoder(train.dim, cfg.hidden)
        f_hom = mlp(cfg.hidden, cfg.hidden, cfg.proj_dim)
        f_het = mlp(cfg.hidden, cfg.hidden, cfg.proj_dim)
        opt, sched = _sgd([*trunk.parameters(), *f_hom.parameters(), *f_het.parameters()], cfg, cfg.stage1_epochs)
        for epoch in tqdm(range(1, cfg.stage1_epochs + 1), desc="ntf stage 1", disable=not progress):
            sums = np.zeros(4)
            batches = 0
            lr = opt.param_groups[0]["lr"]
            for idx in minibatches(len(v1), cfg.batch_size, gen):
                if len(idx) < 2:
                    continue
                e1, e2 = trunk(v1[idx]), trunk(v2[idx])
                h1, h2 = f_hom(e1), f_hom(e2)
                t1, t2 = f_het(e1), f_het(e2)
                l_het = het_loss(t1, t2, cfg.tau)
                l_hom = hom_loss(h1, h2)
                l_orth = orth_loss(torch.cat([h1, h2]), torch.cat([t1, t2]))
                loss = l_hom + l_het + cfg.lam * l_orth
                opt.zero_grad()
                loss.backward()
                opt.step()
                sums += [loss.item(), l_het.item(), l_hom.item(), l_orth.item()]
                batches += 1
            sched.step()
            sums /= max(1, batches)
            history.append({"stage": "natural-trace", "epoch": epoch, "lr": lr, "loss": sums[0], "het": sums[1], "hom": sums[2], "orth": sums[3]})
        for module in (trunk, f_hom):  # stage 2 reuses E and f_hom as stage 1 left them
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

        # Stage 2: soft contrastive transfer + BCE classifier on the frozen encoder's features.
        x = std(torch.from_numpy(train.embeddings)).detach()
        y = torch.from_numpy(train.labels)
        shared = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU())  # g's first layer, read by the classifier too
        g_out = nn.Linear(cfg.hidden, cfg.proj_dim)
        classifier = nn.Linear(cfg.hidden, 1)
        opt, sched = _sgd([*shared.parameters(), *g_out.parameters(), *classifier.parameters()], cfg, cfg.stage2_epochs)
        bce = nn.BCEWithLogitsLoss()
        for epoch in tqdm(range(1, cfg.stage2_epochs + 1), desc="ntf stage 2", disable=not progress):
            sums = np.zeros(3)
            batches = 0
            lr = opt.param_groups[0]["lr"]
            for idx in minibatches(len(x), cfg.batch_size, gen):
                if len(idx) < 2:
                    continue
                xb, yb = x[idx], y[idx]
                with torch.no_grad():
                    e = trunk(xb)
                    real = yb == 0
                    hom = f_hom(e[real]) if bool(real.any()) else None
                feats = shared(e)
                l_scl = soft_contrastive_loss(g_out(feats), yb, hom, cfg.eta, cfg.tau)
                l_ce = bce(classifier(feats).squeeze(-1), yb.float())
                loss = l_scl + cfg.gamma * l_ce
                opt.zero_grad()
                loss.backward()
                opt.step()
                sums += [loss.item(), l_scl.item(), l_ce.item()]
                batches += 1
            sched.step()
            sums /= max(1, batches)
            history.append({"stage": "transfer", "epoch": epoch, "lr": lr, "loss": sums[0], "scl": sums[1], "ce": sums[2]})
        self.f_hom = f_hom
        self.graph = NTFGraph(std, trunk, shared.eval(), classifier.eval()).eval()
        notes = [f"stage 1 on {int(has_views.sum())} real images x 2 views; encoder frozen in stage 2; lr cosine-annealed from {cfg.lr:g} in each stage"]
        final = float(history[-1]["loss"]) if history else float("nan")
        return FitReport(epochs=cfg.stage1_epochs + cfg.stage2_epochs, final_loss=final, history=history, notes=notes)

    def inference_module(self) -> nn.Module:
        if self.graph is None:
            raise RuntimeError("ntf is not fitted")
        return self.graph.eval()
