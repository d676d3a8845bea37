"""Generator attribution: which family an image resembles, on the same frozen embeddings as the detectors.

A multinomial logistic regression (one linear layer, softmax) over the
training set's generator families plus ``real``, trained with class-balanced
cross-entropy and AdamW, early-stopped on the validation loss, then
temperature-scaled on the validation split (Guo et al., 2017: one scalar that
makes the top probability mean what it says, without changing the argmax).

Open set: a family never seen in training must not be forced onto a known
one. The exported graph outputs P(class); the worker reports ``unknown`` when
the top probability is below ``unknown_threshold``. The validation split has
no unseen family to set that threshold against, so one is made for it by
**leaving each family out in turn** (:meth:`AttributionClassifier.leave_one_family_out`):
a head is fitted without family F (same hyperparameters, temperature on the
known validation classes), and its top probabilities on the validation images
of the known classes (which should stay attributed) and on F's validation
fakes (which should come out ``unknown``) are the two samples. The threshold
maximises, averaged over the folds, the share of known images kept plus the
share of unseen ones caught (Youden's J: no prevalence of new families is
assumed), among thresholds that still keep at least ``coverage`` (default 95%)
of the final head's validation images attributed (:func:`open_set_threshold`).
The coverage-only rule it replaces (:func:`unknown_threshold`, the 5th
percentile of validation top probabilities) knew nothing of unseen families:
on a head near saturation it put the threshold at 1 - 1e-7, where new scenes
of *known* families already fall below it as often as a left-out family does.
With fewer than three families there is no fold that keeps two, and the
coverage rule is used. How often a left-out family comes out ``unknown`` is
measured by ``python -m export eval --attribution`` (the open-set rate).

Not a detector: it is not in :mod:`export.heads`' registry and never enters
the fused score; it lives in the manifest's ``attribution`` section. It is
trained by ``python -m export bundle --data`` whenever the training set has at
least two generator families (``--no-attribution`` skips it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from export.heads.base import EmbeddingSet, FitReport

REAL_CLASS = "real"


class AttributionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 300
    patience: int = 15
    coverage: float = Field(0.95, gt=0, le=1, description="Share of validation images whose top probability must reach the unknown threshold (at least).")
    open_set: Literal["leave-one-family-out", "coverage"] = Field(
        "leave-one-family-out", description="How the unknown threshold is set: Youden's J over leave-one-family-out folds, or the coverage quantile alone."
    )


class _Softmax(nn.Module):
    """softmax(W x + b) / T as one graph: the input is the raw (un-normalised) embedding, like the linear probe's."""

    inv_temperature: torch.Tensor

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)
        self.register_buffer("inv_temperature", torch.ones(()))

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(embedding) * self.inv_temperature

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(embedding), dim=-1)


def class_names(data: EmbeddingSet) -> list[str]:
    """Sorted generator families that have fake images, then ``real``."""
    fams = sorted({g for g, y in zip(data.generators, data.labels.tolist(), strict=True) if y == 1})
    if REAL_CLASS in fams:
        raise SystemExit(f"a generator folder is named {REAL_CLASS!r}: that name is the attribution head's class for real images")
    return [*fams, REAL_CLASS]


def targets(data: EmbeddingSet, classes: list[str]) -> np.ndarray:
    """Class index per row (real images -> ``real``; fakes -> their generator); -1 for a family not in ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[REAL_CLASS] if y == 0 else index.get(g, -1) for g, y in zip(data.generators, data.labels.tolist(), strict=True)], dtype=np.int64)


def unknown_threshold(top_probability: np.ndarray, coverage: float) -> float:
    """Largest threshold that keeps at least ``coverage`` of these (validation) images attributed."""
    top = np.sort(np.asarray(top_probability, dtype=np.float64))
    if not len(top):
        raise ValueError("no validation images to calibrate the unknown threshold on")
    drop = int(np.floor((1.0 - coverage) * len(top)))  # images allowed below the threshold
    return float(np.clip(top[drop], 0.0, 1.0))


def open_set_threshold(folds: Sequence[tuple[np.ndarray, np.ndarray]], ceiling: float) -> tuple[float, float, float]:
    """(threshold, known kept, unseen caught): the threshold at most ``ceiling`` maximising the folds' mean Youden's J.

    Each fold is (top probabilities of known images, top probabilities of a left-out family's images); an image is
    attributed when its top probability is >= the threshold. J(t) = mean over folds of P(known >= t) + P(unseen < t);
    the candidates are the probabilities seen and the ceiling, ties go to the lowest threshold (more attributed). A
    signal that does not separate (J never above 1) yields the lowest candidate, i.e. nothing sent to unknown.
    """
    if not folds:
        raise ValueError("no folds to calibrate the open-set threshold on")
    known = [np.sort(np.asarray(k, dtype=np.float64)) for k, _ in folds]
    unseen = [np.sort(np.asarray(u, dtype=np.float64)) for _, u in folds]
    if any(not len(k) or not len(u) for k, u in zip(known, unseen, strict=True)):
        raise ValueError("every fold needs known and unseen images")
    cands = np.unique(np.concatenate([*known, *unseen, [ceiling]]))
    cands = cands[cands <= ceiling]
    kept = np.mean([1.0 - np.searchsorted(k, cands, side="left") / len(k) for k in known], axis=0)
    caught = np.mean([np.searchsorted(u, cands, side="left") / len(u) for u in unseen], axis=0)
    i = int(np.argmax(kept + caught))  # the first maximum: the lowest threshold
    return float(cands[i]), float(kept[i]), float(caught[i])


def confusion(true: np.ndarray, pred: np.ndarray, n_true: int, n_pred: int) -> np.ndarray:
    """Counts: rows = true class, columns = predicted class."""
    m = np.zeros((n_true, n_pred), dtype=np.int64)
    for t, p in zip(true.tolist(), pred.tolist(), strict=True):
        m[t, p] += 1
    return m


class AttributionClassifier:
    """Fit, calibrate and export the attribution head."""

    name = "attribution"
    paper = (
        "multinomial logistic regression on the frozen CLIP embedding, temperature-scaled; open set by a top-probability threshold "
        "calibrated on leave-one-family-out folds"
    )

    def __init__(self, config: AttributionConfig | None = None, **overrides: Any) -> None:
        self.config = AttributionConfig.model_validate({**(config.model_dump() if config else {}), **overrides})
        self.classes: list[str] = []
        self.model: _Softmax | None = None
        self.threshold: float | None = None
        self.open_set: dict[str, Any] = {}  # how the threshold was set (the manifest's attribution.training.open_set)

    def fit(self, train: EmbeddingSet, val: EmbeddingSet, progress: bool = False) -> FitReport:
        cfg = self.config
        self.classes = class_names(train)
        if len(self.classes) < 3:
            raise ValueError(f"attribution needs at least two generator families with fakes, got {self.classes[:-1]}")
        y = targets(train, self.classes)
        yv = targets(val, self.classes)
        keep_v = yv >= 0
        torch.manual_seed(cfg.seed)
        model = _Softmax(train.dim, len(self.classes))
        counts = np.bincount(y, minlength=len(self.classes)).astype(np.float64)
        weights = torch.tensor(len(y) / (len(self.classes) * np.maximum(counts, 1.0)), dtype=torch.float32)
        loss_fn = nn.CrossEntropyLoss(weight=weights)
        opt = torch.optim.AdamW(model.fc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        x, t = torch.from_numpy(train.embeddings), torch.from_numpy(y)
        vx, vt = torch.from_numpy(val.embeddings[keep_v]), torch.from_numpy(yv[keep_v])
        gen = torch.Generator().manual_seed(cfg.seed)
        best, best_state, bad, history, epoch = float("inf"), None, 0, [], 0
        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            perm = torch.randperm(len(x), generator=gen)
            total = 0.0
            for lo in range(0, len(x), cfg.batch_size):
                idx = perm[lo : lo + cfg.batch_size]
                loss = loss_fn(model.logits(x[idx]), t[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            with torch.no_grad():
                val_loss = float(loss_fn(model.logits(vx), vt)) if len(vx) else total / len(x)
            history.append({"epoch": epoch, "train_loss": total / len(x), "val_loss": val_loss})
            if val_loss < best - 1e-6:
                best, bad = val_loss, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        notes = []
        if len(vx):
            temperature = self._fit_temperature(model, vx, vt)
            model.inv_temperature.fill_(1.0 / temperature)
            notes.append(f"temperature {temperature:.3f} fitted on {len(vx)} validation images")
        self.model = model.eval()
        return FitReport(epochs=epoch, final_loss=best, history=history, notes=notes)

    @staticmethod
    def _fit_temperature(model: _Softmax, vx: torch.Tensor, vt: torch.Tensor) -> float:
        """T minimising the validation NLL (unweighted), on a log grid then refined: one scalar, no risk of overfitting."""
        with torch.no_grad():
            logits = model.fc(vx)

            def nll(temp: float) -> float:
                return float(nn.functional.cross_entropy(logits / temp, vt))

            grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
            best = min(grid, key=nll)
            fine = np.exp(np.linspace(np.log(best) - 0.1, np.log(best) + 0.1, 21))
            return float(min(fine, key=nll))

    def predict_proba(self, data: EmbeddingSet) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("attribution head is not fitted")
        with torch.no_grad():
            return self.model(torch.from_numpy(data.embeddings)).numpy().astype(np.float64)

    def inference_module(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("attribution head is not fitted")
        return self.model.eval()

    def leave_one_family_out(self, train: EmbeddingSet, val: EmbeddingSet) -> list[dict[str, Any]]:
        """Per family F: a head fitted without F's fakes; its top probabilities on the known validation classes and on F's validation fakes."""
        folds = []
        for family in self.classes[:-1]:
            unseen_train = np.array([y == 1 and g == family for g, y in zip(train.generators, train.labels.tolist(), strict=True)])
            unseen_val = np.array([y == 1 and g == family for g, y in zip(val.generators, val.labels.tolist(), strict=True)])
            if not unseen_val.any():
                continue
            head = AttributionClassifier(self.config)
            head.fit(train.subset(np.nonzero(~unseen_train)[0]), val)
            top = head.predict_proba(val).max(axis=1)
            known = targets(val, head.classes) >= 0
            folds.append({"family": family, "known": top[known], "unseen": top[unseen_val]})
        return folds

    def calibrate(self, probabilities: np.ndarray, train: EmbeddingSet | None = None, val: EmbeddingSet | None = None) -> float:
        """Set (and return) the unknown threshold from validation probabilities (as the exported graph computes them).

        With the training and validation embeddings, three or more families and ``open_set`` leave-one-family-out:
        :func:`open_set_threshold` over the folds, capped by the coverage threshold; otherwise the coverage threshold.
        """
        cfg = self.config
        ceiling = unknown_threshold(np.max(probabilities, axis=1), cfg.coverage)
        # A fold leaves one family out and still needs two to fit: three families (four classes with real) at least.
        folds: list[dict[str, Any]] = []
        if cfg.open_set == "leave-one-family-out" and train is not None and val is not None and len(self.classes) >= 4:
            folds = self.leave_one_family_out(train, val)
        if len(folds) < 2:
            self.threshold = ceiling
            self.open_set = {"method": "coverage", "coverage": cfg.coverage, "threshold": ceiling}
            return ceiling
        threshold, kept, caught = open_set_threshold([(f["known"], f["unseen"]) for f in folds], ceiling)
        self.threshold = threshold
        self.open_set = {
            "method": "leave-one-family-out",
            "threshold": threshold,
            "coverage_ceiling": ceiling,
            "coverage": cfg.coverage,
            "known_kept": kept,
            "unseen_unknown": caught,
            "folds": [
                {
                    "family": f["family"],
                    "known_images": len(f["known"]),
                    "unseen_images": len(f["unseen"]),
                    "known_kept": float((f["known"] >= threshold).mean()),
                    "unseen_unknown": float((f["unseen"] < threshold).mean()),
                    "known_kept_at_ceiling": float((f["known"] >= ceiling).mean()),
                    "unseen_unknown_at_ceiling": float((f["unseen"] < ceiling).mean()),
                }
                for f in folds
            ],
        }
        return threshold

    def validation_report(self, probabilities: np.ndarray, val: EmbeddingSet) -> dict[str, Any]:
        """Accuracy, per-class accuracy, attributed share and confusion matrix (with an 'unknown' column) on validation."""
        assert self.threshold is not None
        y = targets(val, self.classes)
        keep = y >= 0
        probs, y = probabilities[keep], y[keep]
        top = probs.argmax(axis=1)
        attributed = probs.max(axis=1) >= self.threshold
        pred = np.where(attributed, top, len(self.classes))  # last column: unknown
        cm = confusion(y, pred, len(self.classes), len(self.classes) + 1)
        per_class = {c: (float((top[y == i] == i).mean()) if (y == i).any() else None) for i, c in enumerate(self.classes)}
        return {
            "images": len(y),
            "accuracy": float((top == y).mean()) if len(y) else None,
            "accuracy_attributed": float((top[attributed] == y[attributed]).mean()) if attributed.any() else None,
            "attributed_share": float(attributed.mean()) if len(y) else None,
            "per_class_accuracy": per_class,
            "confusion": {"rows": self.classes, "columns": [*self.classes, "unknown"], "counts": cm.tolist()},
        }

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "paper": self.paper, "hyperparameters": self.config.model_dump()}


__all__ = ["REAL_CLASS", "AttributionClassifier", "AttributionConfig", "class_names", "confusion", "open_set_threshold", "targets", "unknown_threshold"]
