"""Linear probe on CLIP embeddings (UniversalFakeDetect, Ojha et al. 2023; seed 002).

One linear layer on the frozen embedding, trained with binary cross-entropy and
AdamW (lr 1e-4, betas 0.9/0.999, no weight decay), with UFD's stopping rule
(its ``train.py``, inherited from CNNDetection), :class:`UFDStopping`:

* after every epoch the probe's **accuracy** on the validation split (at 0.5)
  is measured; an epoch improves when it beats the best so far by at least
  ``min_delta`` (UFD's ``EarlyStopping(delta=-0.001)``);
* after ``patience`` (5) epochs without improvement the learning rate is
  divided by 10 and the count starts afresh (its best too, now with
  ``min_delta_after_drop`` = 0.002, as UFD re-creates its ``EarlyStopping``);
* training stops when dividing would take the rate below ``min_lr`` (1e-6):
  from 1e-4 the rates are 1e-4, 1e-5, 1e-6, then stop.

Not in UFD, and why:

* The weights kept are those of the best validation accuracy over the whole
  run; UFD's ``model_epoch_best.pth`` is the best since the last drop (its
  re-created ``EarlyStopping`` forgets the earlier best). At the end of the
  schedule the rate is 1e-6 and the two barely differ; the overall best never
  scores worse on validation.
* ``max_epochs`` (200) caps a run whose validation accuracy keeps creeping up;
  on the sets we tried the rule ended training first (51 epochs on the
  synthetic benchmark's training split, ``--profile small-data``, lr 1e-2).
* Without a validation split the rule reads the training accuracy.
* Validation images are the split's own, not degraded as UFD does when its
  blur/JPEG probabilities are 1 (see :mod:`export.augment`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from export.heads.base import EmbeddingSet, FitReport, HeadConfig, HeadMethod


class LinearProbeConfig(HeadConfig):
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 5
    min_delta: float = 0.001
    min_delta_after_drop: float = 0.002
    lr_factor: float = 0.1
    min_lr: float = 1e-6


@dataclass
class UFDStopping:
    """UFD's early stopping on validation accuracy with learning-rate drops (see the module docstring)."""

    lr: float
    patience: int = 5
    min_delta: float = 0.001
    min_delta_after_drop: float = 0.002
    factor: float = 0.1
    min_lr: float = 1e-6
    best: float | None = None
    bad: int = 0
    drops: int = 0

    def step(self, accuracy: float) -> Literal["improved", "continue", "drop", "stop"]:
        """Feed one epoch's validation accuracy; says what to do next (``self.lr`` is the rate to use)."""
        delta = self.min_delta if self.drops == 0 else self.min_delta_after_drop
        if self.best is None or accuracy >= self.best + delta:
            self.best, self.bad = accuracy, 0
            return "improved"
        self.bad += 1
        if self.bad < self.patience:
            return "continue"
        new_lr = self.lr * self.factor
        if new_lr < self.min_lr * (1 - 1e-9):  # float drift: 1e-4 / 10 / 10 is 1.0000000000000002e-06
            return "stop"
        self.lr, self.best, self.bad, self.drops = new_lr, None, 0, self.drops + 1
        return "drop"


class _Probe(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(embedding)).squeeze(-1)


class LinearProbe(HeadMethod):
    name = "linear-probe"
    paper = "Ojha et al., Towards Universal Fake Image Detectors (CVPR 2023), seed 002"
    Config = LinearProbeConfig
    config: LinearProbeConfig

    def __init__(self, config: LinearProbeConfig | None = None, dim: int | None = None, **kw: object) -> None:
        super().__init__(config, **kw)
        self.probe: _Probe | None = None
        if dim is not None:
            torch.manual_seed(self.config.seed)
            self.probe = _Probe(dim)

    def fit(self, train: EmbeddingSet, val: EmbeddingSet | None = None, progress: bool = False) -> FitReport:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        probe = _Probe(train.dim)
        opt = torch.optim.AdamW(probe.fc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        x = torch.from_numpy(train.embeddings)
        y = torch.from_numpy(train.labels.astype(np.float32))
        has_val = val is not None and len(val) > 0
        vx = torch.from_numpy(val.embeddings) if has_val and val is not None else x
        vy = torch.from_numpy(val.labels.astype(np.float32)) if has_val and val is not None else y
        loss_fn = nn.BCEWithLogitsLoss()
        rule = UFDStopping(cfg.lr, cfg.patience, cfg.min_delta, cfg.min_delta_after_drop, cfg.lr_factor, cfg.min_lr)
        best_acc, best_state, best_epoch, history = -1.0, copy.deepcopy(probe.state_dict()), 0, []
        gen = torch.Generator().manual_seed(cfg.seed)
        epoch, action = 0, "continue"
        for epoch in range(1, cfg.max_epochs + 1):
            lr = rule.lr
            for group in opt.param_groups:
                group["lr"] = lr
            probe.train()
            perm = torch.randperm(len(x), generator=gen)
            total = 0.0
            for lo in range(0, len(x), cfg.batch_size):
                idx = perm[lo : lo + cfg.batch_size]
                loss = loss_fn(probe.fc(x[idx]).squeeze(-1), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            with torch.no_grad():
                logits = probe.fc(vx).squeeze(-1)
                val_loss = float(loss_fn(logits, vy))
                val_acc = float(((logits > 0).float() == vy).float().mean())
            if val_acc > best_acc:
                best_acc, best_epoch, best_state = val_acc, epoch, copy.deepcopy(probe.state_dict())
            action = rule.step(val_acc)
            history.append({"epoch": epoch, "lr": lr, "train_loss": total / len(x), "val_loss": val_loss, "val_acc": val_acc, "action": action})
            if action == "stop":
                break
        probe.load_state_dict(best_state)
        self.probe = probe.eval()
        split = "validation" if has_val else "training (no validation split)"
        notes = [
            f"stopped after {epoch} epochs ({'UFD rule: lr would fall below ' + f'{cfg.min_lr:g}' if action == 'stop' else 'max_epochs reached'}); "
            f"kept epoch {best_epoch}, {split} accuracy {best_acc:.4f}"
        ]
        final = next(h["val_loss"] for h in history if h["epoch"] == best_epoch) if best_epoch else float("nan")
        return FitReport(epochs=epoch, final_loss=float(final), history=history, notes=notes)

    def inference_module(self) -> nn.Module:
        if self.probe is None:
            raise RuntimeError("linear probe is not fitted")
        return self.probe.eval()
