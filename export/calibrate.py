"""Operating point from a validation split: threshold for a target FPR and an uncertain band below it.

* ``threshold`` = the lowest score threshold whose false-positive rate on the
  validation *real* images is <= ``target_fpr`` (default 1%).
* the uncertain band is ``[threshold at band_fpr, threshold)`` with
  ``band_fpr = band_factor * target_fpr`` (default 5 x 1% = 5%). The worker
  labels ``ai_generated`` at or above the threshold (FPR <= 1% on validation),
  ``real`` below the band, and ``uncertain`` in between: images that a
  looser operating point (5% FPR) would have flagged, i.e. the ones worth a
  human look. ``uncertain_high`` is the threshold itself.

Small validation sets cannot resolve small FPRs: with n real images the
smallest non-zero FPR is 1/n. The calibration then still holds (FPR <= target
on validation; with n < 1/target it means zero validation false positives) and
the result says so in ``notes`` rather than pretending to a precision it lacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export.metrics import average_precision, rates_at, roc_auc, threshold_for_fpr
from schemas import Calibration


def calibrate(
    scores: np.ndarray,
    labels: np.ndarray,
    target_fpr: float = 0.01,
    band_factor: float = 5.0,
) -> tuple[Calibration, list[str]]:
    """Calibration (with validation metrics) and human-readable notes about its precision."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    real = scores[labels == 0]
    n_real, n_fake = int((labels == 0).sum()), int((labels == 1).sum())
    if n_real == 0 or n_fake == 0:
        raise ValueError(f"calibration needs real and fake validation images, got {n_real} real and {n_fake} fake")
    band_fpr = min(0.5, band_factor * target_fpr)
    threshold = threshold_for_fpr(real, target_fpr)
    low = min(threshold, threshold_for_fpr(real, band_fpr))
    at = rates_at(scores, labels, threshold)
    uncertain = float(((scores >= low) & (scores < threshold)).mean())
    validation: dict[str, Any] = {
        "n_real": n_real,
        "n_fake": n_fake,
        "roc_auc": roc_auc(scores, labels),
        "average_precision": average_precision(scores, labels),
        "acc_at_threshold": at["acc"],
        "fpr_at_threshold": at["fpr"],
        "tpr_at_threshold": at["fake_acc"],
        "acc_at_0.5": rates_at(scores, labels, 0.5)["acc"],
        "uncertain_fraction": uncertain,
        "band_fpr": band_fpr,
    }
    notes = []
    if n_real * target_fpr < 1:
        notes.append(
            f"validation has {n_real} real images: an FPR of {target_fpr:.2%} cannot be resolved (1 image = {1 / n_real:.2%}); "
            "the threshold sits just above the highest validation real score"
        )
    cal = Calibration(
        threshold=threshold,
        uncertain_low=low,
        uncertain_high=threshold,
        target_fpr=target_fpr,
        calibrated=True,
        threshold_source="validation",
        validation=validation,
    )
    return cal, notes


def stratified_split(generators: list[str], labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation row indices: ``val_fraction`` of every (generator, label) group, at least one each where possible.

    The UniversalFakeDetect layout carries no grouping beyond generator and
    label, so rows are split at random inside each group (seeded).
    """
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (g, y) in enumerate(zip(generators, labels.tolist(), strict=True)):
        groups.setdefault((g, int(y)), []).append(i)
    train, val = [], []
    for key in sorted(groups):
        rows = np.array(groups[key])
        rng.shuffle(rows)
        n_val = round(len(rows) * val_fraction)
        if val_fraction > 0 and len(rows) >= 2:
            n_val = max(1, n_val)
        val.extend(rows[:n_val].tolist())
        train.extend(rows[n_val:].tolist())
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))
