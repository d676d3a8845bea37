"""At bundle time: the drift reference and the attribution head, written beside the detector heads.

Called by the bundle writer (:func:`export.bundle.write_bundle`'s ``finalize``
hook, set up by :func:`export.train.train_bundle`) once the detector heads
are exported and before the manifest is written, so the manifest stays the
last file written and a bundle is never served half-finished.

1. **Novelty graph** (``monitor.onnx``): the tied-covariance Mahalanobis
   distance (Lee et al., 2018, "A simple unified framework for detecting
   out-of-distribution samples") of an embedding to the nearest class mean,
   classes being ``real`` and every training generator family; the pooled
   within-class covariance is shrunk towards a scaled identity with the
   Ledoit-Wolf intensity (a 768-d covariance from a few thousand images is
   singular without it). It is computed in the ONNX graph, not in the
   worker's Python: the worker only ever sees head outputs, the graph's
   output rides in the verdict's anomaly map (``monitor.novelty``) and is
   therefore cached with the score, so a cache hit neither recomputes nor
   recounts it. The graph is one (D x D) matrix product and a min over K
   means: ~1.2 MFLOP per image for ViT-L/14, against 162 GFLOP for the
   backbone.
2. **Attribution head** (``attribution.onnx``): :mod:`export.heads.attribution`,
   with its ``unknown`` threshold calibrated on validation, against each
   family left out in turn (recorded in ``attribution.training.open_set``).
3. **Reference distributions**: the validation split is scored by the
   worker's own :class:`~worker.model.bundle.LoadedBundle` on the exported
   graphs (a staging copy of the bundle made of hard links), so the reference
   is exactly what the worker will compute: the fused score, every head's
   score and every anomaly output, binned at the pooled validation deciles,
   per class; the uncertain-band rate per class; the novelty distance's 99th
   percentile and the share of each class beyond it (both on
   out-of-fold distances of the training and validation images: see
   :func:`out_of_fold_distances`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.heads.attribution import REAL_CLASS, AttributionClassifier, class_names, targets
from export.heads.base import EmbeddingSet
from export.onnx_io import export_module, parity
from schemas import BundleManifest
from schemas.monitoring import AttributionHead, BinnedDistribution, DriftReference, NoveltyModel, SignalReference, UncertainReference
from worker.model.bundle import MANIFEST, BundleError, LoadedBundle, file_sha256
from worker.model.policy import decide
from worker.ops.drift import binned

NOVELTY_FILE = "monitor.onnx"
ATTRIBUTION_FILE = "attribution.onnx"
#: Largest PyTorch-vs-ORT difference accepted for the monitor graphs (relative for distances).
PARITY_TOLERANCE = 1e-3
_PLACEHOLDER = BinnedDistribution(edges=[0.5], real=[1, 0], fake=[0, 1], n_real=1, n_fake=1)


# -- Ledoit-Wolf shrunk, class-pooled covariance and the novelty graph -----------------------------------------


#: Rows per chunk when accumulating covariances and distances (bounded memory on ViT-L sets of 10^5..10^6 images).
CHUNK = 65536


def _shrunk(emp: np.ndarray, sum_norm4: float, n: int) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf from sufficient statistics: the empirical covariance and sum_n ||x_n||^4 of the centred rows.

    beta uses sum_ij (X^2^T X^2)_ij = sum_n (sum_i x_ni^2)^2, so no second d x d product is needed.
    """
    d = emp.shape[0]
    mu = float(np.trace(emp)) / d
    delta = float(np.sum((emp - mu * np.eye(d)) ** 2)) / d
    beta = (sum_norm4 / n - float(np.sum(emp**2))) / (d * n)
    shrinkage = 0.0 if delta <= 0 else min(max(beta, 0.0), delta) / delta
    return (1.0 - shrinkage) * emp + shrinkage * mu * np.eye(d), shrinkage


def ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit & Wolf (2004) shrinkage of the covariance of already-centred rows towards mu * I.

    Returns the shrunk covariance and the shrinkage intensity in [0, 1]
    (the same estimator as scikit-learn's ``ledoit_wolf``, written out here
    so the export side needs no scikit-learn).
    """
    x = np.asarray(centred, dtype=np.float64)
    return _shrunk(x.T @ x / len(x), float(np.sum(np.sum(x**2, axis=1) ** 2)), len(x))


@dataclass
class NoveltyFit:
    """Class means and the whitening matrix ``w`` (precision = w w^T) of the tied covariance."""

    components: list[str]
    means: np.ndarray
    whitening: np.ndarray
    shrinkage: float
    fit_images: int

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """min_k ||(x - mu_k) w||: the numpy reference of what the graph computes (in chunks)."""
        m = self.means @ self.whitening
        m2 = (m**2).sum(1)[None, :]
        out = []
        for lo in range(0, len(embeddings), CHUNK):
            z = np.asarray(embeddings[lo : lo + CHUNK], dtype=np.float64) @ self.whitening
            d2 = (z**2).sum(1, keepdims=True) - 2 * z @ m.T + m2
            out.append(np.sqrt(np.maximum(d2.min(axis=1), 0.0)))
        return np.concatenate(out) if out else np.zeros(0)


def fit_novelty(train: EmbeddingSet, classes: list[str] | None = None) -> NoveltyFit:
    """Per-class means and the Ledoit-Wolf shrunk pooled within-class covariance of the training embeddings.

    Accumulated in chunks (float64), so memory is a few d x d matrices whatever the number of images.
    """
    classes = classes or class_names(train)
    y = targets(train, classes)
    present = [i for i in range(len(classes)) if (y == i).any()]
    d = train.dim
    means = np.zeros((len(present), d))
    for j, i in enumerate(present):
        rows = np.nonzero(y == i)[0]
        for lo in range(0, len(rows), CHUNK):
            means[j] += np.asarray(train.embeddings[rows[lo : lo + CHUNK]], dtype=np.float64).sum(axis=0)
        means[j] /= len(rows)
    scatter = np.zeros((d, d))
    norm4, n = 0.0, 0
    for j, i in enumerate(present):
        rows = np.nonzero(y == i)[0]
        for lo in range(0, len(rows), CHUNK):
            c = np.asarray(train.embeddings[rows[lo : lo + CHUNK]], dtype=np.float64) - means[j]
            scatter += c.T @ c
            norm4 += float(np.sum(np.sum(c**2, axis=1) ** 2))
            n += len(c)
    cov, shrinkage = _shrunk(scatter / n, norm4, n)
    precision = np.linalg.inv(cov)
    whitening = np.linalg.cholesky((precision + precision.T) / 2)  # precision = w w^T, so ||(x - mu) w||^2 = Mahalanobis^2
    return NoveltyFit([classes[i] for i in present], means, whitening, shrinkage, n)


def out_of_fold_distances(train: EmbeddingSet, val: EmbeddingSet, classes: list[str], folds: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Novelty distance of every training and validation image from a model fitted without it (k-fold, stratified by class).

    The reference 99th percentile is a rare-event quantile: on a validation
    split of a few hundred images it rests on two or three images. The
    novelty model needs no labels beyond the class, so it can be cross-fitted:
    with ``folds`` = 5 over train + validation each fold's model is fitted on
    80% of them, i.e. on as many images as the served model (fitted on the
    training split, 80% of the data): the out-of-fold distances follow the
    distribution a new image's distance has, on 5x (or more) the images.
    Returns (distances, labels 0 real / 1 fake).
    """
    x = np.concatenate([train.embeddings, val.embeddings])
    data = EmbeddingSet(x, np.concatenate([train.labels, val.labels]), [*train.generators, *val.generators])
    cls = targets(data, classes)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(data), dtype=np.int64)
    for c in np.unique(cls):
        rows = np.nonzero(cls == c)[0]
        fold[rng.permutation(rows)] = np.arange(len(rows)) % folds
    dist = np.zeros(len(data))
    for k in range(folds):
        held = fold == k
        fit = fit_novelty(data.subset(np.nonzero(~held)[0]), classes)
        dist[held] = fit.distances(x[held])
    return dist, data.labels


class _NoveltyGraph(nn.Module):
    """sqrt(min_k ||x w - mu_k w||^2) in float32: the distance-expansion form, one matmul against the whitened means."""

    w: torch.Tensor
    m: torch.Tensor
    m2: torch.Tensor

    def __init__(self, fit: NoveltyFit) -> None:
        super().__init__()
        w = torch.from_numpy(fit.whitening.astype(np.float32))
        m = torch.from_numpy((fit.means @ fit.whitening).astype(np.float32))
        self.register_buffer("w", w)
        self.register_buffer("m", m)
        self.register_buffer("m2", (m.double() ** 2).sum(1).float())

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        z = embedding @ self.w
        d2 = (z * z).sum(1, keepdim=True) - 2.0 * (z @ self.m.T) + self.m2.unsqueeze(0)
        return torch.sqrt(torch.clamp(d2.min(dim=1).values, min=0.0))


# -- reference distributions -----------------------------------------------------------------------------------


def _stage(out: Path, manifest: BundleManifest) -> Path:
    """A throwaway bundle directory of hard links to ``out``'s files plus ``manifest``: the worker's loader on the real graphs."""
    stage = out / f".stage-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    for name in manifest.files:
        try:
            os.link(out / name, stage / name)
        except OSError:
            shutil.copy2(out / name, stage / name)
    (stage / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return stage


def score_validation(out: Path, manifest: BundleManifest, val: EmbeddingSet):  # -> ScoreBatch
    """The validation split through :meth:`LoadedBundle.score_embeddings` on the exported graphs."""
    stage = _stage(out, manifest)
    try:
        bundle = LoadedBundle(stage)
        return bundle.score_embeddings(np.ascontiguousarray(val.embeddings, dtype=np.float32), val.native)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def drift_reference(scores: Any, manifest: BundleManifest, val: EmbeddingSet, novelty: NoveltyModel | None) -> DriftReference:
    """Per-class binned distributions of every signal, uncertain-band rates and the novelty exceedance, from ORT scores."""
    y = val.labels
    signals: list[SignalReference] = []
    notes: list[str] = []
    candidates: list[tuple[str, str, str | None, np.ndarray]] = [("score", "score", None, scores.probability)]
    if len(scores.head_scores) > 1:
        candidates += [(name, "head_scores", name, v) for name, v in scores.head_scores.items()]
    candidates += [(key, "anomaly", key, v) for key, v in scores.anomaly.items() if novelty is None or key != novelty.anomaly_key]
    for signal, source, key, values in candidates:
        dist = binned(values, y)
        if dist is None:
            notes.append(f"signal {signal!r} left out: its validation values do not spread over two or more bins")
            continue
        signals.append(SignalReference(signal=signal, source=source, key=key, distribution=dist))
    cal = manifest.calibration
    uncertain = np.array([decide(float(s), cal).value == "uncertain" for s in scores.probability])
    if cal.uncertain_low == cal.uncertain_high:
        notes.append("the bundle has no uncertain band: the uncertain-band rate is always 0")
    if not signals:
        raise BundleError("no signal of this bundle spreads over two bins on validation: cannot build a drift reference")
    return DriftReference(
        computed_on=f"validation split ({int((y == 0).sum())} real, {int((y == 1).sum())} fake) scored by ONNX Runtime through the worker's LoadedBundle",
        signals=signals,
        uncertain=UncertainReference(
            real=float(uncertain[y == 0].mean()), fake=float(uncertain[y == 1].mean()), n_real=int((y == 0).sum()), n_fake=int((y == 1).sum())
        ),
        novelty=novelty,
        notes=notes,
    )


# -- the finalize hook ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitoringOptions:
    drift_reference: bool = True
    attribution: bool = True
    attribution_coverage: float = 0.95
    novelty_quantile: float = 0.99
    seed: int = 0
    progress: bool = False


def _export_checked(module: nn.Module, example: torch.Tensor, check: torch.Tensor, output: str, path: Path, relative: bool) -> float:
    export_module(module, [example], ["embedding"], [output], path)
    diff = parity(module, path, [check], ["embedding"], [output])
    if relative:
        with torch.no_grad():
            scale = float(module(check).abs().max()) or 1.0
        diff /= scale
    if diff > PARITY_TOLERANCE:
        raise BundleError(f"ONNX parity failed for {path.name}: {diff:.2e} > {PARITY_TOLERANCE:.0e}")
    return diff


def finalize_hook(train: EmbeddingSet, val: EmbeddingSet, options: MonitoringOptions) -> Callable[[Path, BundleManifest], BundleManifest]:
    """The ``finalize`` callable for :func:`export.bundle.write_bundle`: adds the monitor graphs and sections."""

    def finalize(out: Path, manifest: BundleManifest) -> BundleManifest:
        return add_monitoring(out, manifest, train, val, options)

    return finalize


def add_monitoring(out: Path, manifest: BundleManifest, train: EmbeddingSet, val: EmbeddingSet, options: MonitoringOptions) -> BundleManifest:
    """Export the novelty and attribution graphs into ``out`` and return the manifest with both sections (not written)."""
    classes = class_names(train)
    families = classes[:-1]
    check = torch.from_numpy(np.ascontiguousarray(val.embeddings[:64], dtype=np.float32))
    example = check[:2]
    files = dict(manifest.files)
    doc = manifest.model_dump()
    parity_notes: dict[str, float] = {}

    attribution: AttributionClassifier | None = None
    if options.attribution and len(families) >= 2:
        attribution = AttributionClassifier(seed=options.seed, coverage=options.attribution_coverage)
        if options.progress:
            print(f"[bundle] fitting the attribution head over {len(classes)} classes ({', '.join(classes)})")
        report = attribution.fit(train, val, progress=options.progress)
        parity_notes[ATTRIBUTION_FILE] = _export_checked(attribution.inference_module(), example, check, "probabilities", out / ATTRIBUTION_FILE, False)
        files[ATTRIBUTION_FILE] = file_sha256(out / ATTRIBUTION_FILE)
        doc["attribution"] = AttributionHead(
            file=ATTRIBUTION_FILE,
            classes=classes,
            unknown_threshold=0.0,  # set below from the exported graph's validation probabilities
            coverage=options.attribution_coverage,
            hyperparameters=attribution.config.model_dump(),
            training={
                "paper": attribution.paper,
                "fit": {"epochs": report.epochs, "final_loss": report.final_loss, "notes": report.notes, "history_tail": report.history[-5:]},
                "train_counts": {c: int((targets(train, classes) == i).sum()) for i, c in enumerate(classes)},
            },
        ).model_dump()
    elif options.attribution and options.progress:
        print(f"[bundle] no attribution head: it needs at least two generator families with fakes, the data has {families}")

    novelty: NoveltyModel | None = None
    if options.drift_reference:
        fit = fit_novelty(train, classes)
        parity_notes[NOVELTY_FILE] = _export_checked(_NoveltyGraph(fit), example, check, "novelty", out / NOVELTY_FILE, True)
        files[NOVELTY_FILE] = file_sha256(out / NOVELTY_FILE)
        placeholder = NoveltyModel(
            file=NOVELTY_FILE,
            components=fit.components,
            shrinkage=fit.shrinkage,
            fit_images=fit.fit_images,
            quantile=options.novelty_quantile,
            threshold=0.0,
            exceed_real=0.0,
            exceed_fake=0.0,
            n_real=1,
            n_fake=1,
        )
        doc["drift"] = DriftReference(
            computed_on="(staging)",
            signals=[SignalReference(signal="score", source="score", distribution=_PLACEHOLDER)],
            uncertain=UncertainReference(real=0, fake=0, n_real=1, n_fake=1),
            novelty=placeholder,
        ).model_dump()

    if doc.get("attribution") is None and doc.get("drift") is None:
        return manifest
    doc["files"] = files
    staged = BundleManifest.model_validate(doc)
    scores = score_validation(out, staged, val)

    if attribution is not None:
        probs = np.stack([scores.attribution[c] for c in classes], axis=1)
        if options.progress and len(families) >= 3:
            print(f"[bundle] calibrating the attribution head's unknown threshold: {len(families)} heads, each without one family")
        threshold = attribution.calibrate(probs, train, val)
        doc["attribution"]["unknown_threshold"] = threshold
        doc["attribution"]["training"]["open_set"] = attribution.open_set
        doc["attribution"]["validation"] = attribution.validation_report(probs, val)
    if options.drift_reference:
        dist, y = out_of_fold_distances(train, val, classes, seed=options.seed)
        thr = float(np.quantile(dist, options.novelty_quantile))
        novelty = placeholder.model_copy(
            update={
                "threshold": thr,
                "exceed_real": float((dist[y == 0] > thr).mean()),
                "exceed_fake": float((dist[y == 1] > thr).mean()),
                "n_real": int((y == 0).sum()),
                "n_fake": int((y == 1).sum()),
            }
        )
        doc["drift"] = drift_reference(scores, staged, val, novelty).model_dump()
    notes = list(doc.get("notes") or [])
    notes.append(
        "monitor graphs beside the heads (never fused into the score): "
        + ", ".join(f"{name} (parity {diff:.1e})" for name, diff in parity_notes.items())
        + f"; {REAL_CLASS!r} is the attribution class of real images"
    )
    doc["notes"] = notes
    return BundleManifest.model_validate(doc)


__all__ = [
    "ATTRIBUTION_FILE",
    "NOVELTY_FILE",
    "MonitoringOptions",
    "NoveltyFit",
    "add_monitoring",
    "binned",
    "drift_reference",
    "finalize_hook",
    "fit_novelty",
    "ledoit_wolf",
    "out_of_fold_distances",
    "score_validation",
]
