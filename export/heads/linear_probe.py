"""Linear probe on CLIP embeddings (UniversalFakeDetect, Ojha et al. 2023; seed 002).

One linear layer on the frozen embedding, trained with binary cross-entropy and
AdamW (lr 1e-4), early-stopped on validation loss, as in the paper's recipe.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from export.heads.base import EmbeddingSet, FitReport, HeadConfig, HeadMethod


class LinearProbeConfig(HeadConfig):
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10


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
        loss_fn = nn.BCEWithLogitsLoss()
        best, best_state, bad, history = float("inf"), None, 0, []
        gen = torch.Generator().manual_seed(cfg.seed)
        epoch = 0
        for epoch in range(1, cfg.max_epochs + 1):
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
            train_loss = total / len(x)
            val_loss = train_loss
            if val is not None and len(val):
                with torch.no_grad():
                    vx, vy = torch.from_numpy(val.embeddings), torch.from_numpy(val.labels.astype(np.float32))
                    val_loss = float(loss_fn(probe.fc(vx).squeeze(-1), vy))
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
            if val_loss < best - 1e-6:
                best, bad = val_loss, 0
                best_state = {k: v.clone() for k, v in probe.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if best_state is not None:
            probe.load_state_dict(best_state)
        self.probe = probe.eval()
        return FitReport(epochs=epoch, final_loss=best, history=history)

    def inference_module(self) -> nn.Module:
        if self.probe is None:
            raise RuntimeError("linear probe is not fitted")
        return self.probe.eval()
