"""Detection metrics in the papers' terms, in numpy, with sample-count checks instead of silent fallbacks.

Convention everywhere: label 1 = fake (AI-generated, the positive class),
label 0 = real; a score is P(fake); an image is flagged when score >= threshold.
Each metric that cannot be computed from the samples given returns ``None``
and :func:`why_not` says why, so reports print a reason instead of a number
that means nothing.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def _split(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    return s[y == 1], s[y == 0]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); None without both classes."""
    fake, real = _split(scores, labels)
    if len(fake) == 0 or len(real) == 0:
        return None
    ranks = rankdata(np.concatenate([fake, real]))
    u = ranks[: len(fake)].sum() - len(fake) * (len(fake) + 1) / 2
    return float(u / (len(fake) * len(real)))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds (scikit-learn's definition); None without fakes."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    n_pos = int((y == 1).sum())
    if n_pos == 0 or len(s) == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y == 1)[last_of_tie]
    fp = np.cumsum(y == 0)[last_of_tie]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], dtype=int)
    tp = np.cumsum(y == 1)[last_of_tie]
    fp = np.cumsum(y == 0)[last_of_tie]
    n_pos, n_neg = max(1, int((y == 1).sum())), max(1, int((y == 0).sum()))
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def threshold_for_fpr(real_scores: np.ndarray, target_fpr: float) -> float:
    """Lowest threshold whose false-positive rate on ``real_scores`` is <= target (flag when score >= t).

    With n real scores at most floor(target * n) may reach the threshold; the
    threshold is set just above the next one (ties stay below it).
    """
    real = np.sort(np.asarray(real_scores, dtype=np.float64).reshape(-1))[::-1]
    if len(real) == 0:
        raise ValueError("cannot calibrate a false-positive rate without real samples")
    allowed = math.floor(target_fpr * len(real) + 1e-9)
    if allowed >= len(real):
        return 0.0
    return float(min(1.0, np.nextafter(real[allowed], np.inf)))


def rates_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
    """accuracy, real-acc, fake-acc, FPR, FNR at ``threshold`` (None where a class is absent)."""
    fake, real = _split(scores, labels)
    tpr = float((fake >= threshold).mean()) if len(fake) else None
    fpr = float((real >= threshold).mean()) if len(real) else None
    n = len(fake) + len(real)
    correct = int((fake >= threshold).sum()) + int((real < threshold).sum())
    return {
        "acc": correct / n if n else None,
        "real_acc": None if fpr is None else 1.0 - fpr,
        "fake_acc": tpr,
        "fpr": fpr,
        "fnr": None if tpr is None else 1.0 - tpr,
    }


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, target_fpr: float = 0.01) -> float | None:
    """TPR at the threshold that keeps FPR <= target; None unless there are >= 1/target real samples."""
    fake, real = _split(scores, labels)
    if len(fake) == 0 or len(real) < math.ceil(1.0 / target_fpr - 1e-9):
        return None
    return float((fake >= threshold_for_fpr(real, target_fpr)).mean())


def oracle_accuracy(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Best accuracy over all thresholds chosen *on the test data itself*: an upper bound, not attainable."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if len(s) == 0:
        return None
    candidates = np.r_[np.unique(s), np.inf]
    return float(max(((s >= t) == (y == 1)).mean() for t in candidates))


def why_not(metric: str, n_real: int, n_fake: int, target_fpr: float = 0.01) -> str:
    """The reason a metric is missing, for report cells."""
    if metric == "tpr_at_fpr" and n_real < math.ceil(1.0 / target_fpr - 1e-9):
        return f"n/a (needs >= {math.ceil(1.0 / target_fpr - 1e-9)} real, has {n_real})"
    if n_fake == 0 or n_real == 0:
        return f"n/a ({n_real} real, {n_fake} fake)"
    return "n/a"
