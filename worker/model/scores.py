"""What a bundle says about an image: one frozen :class:`Score`, and the batch form the sessions return.

One type on every path: inference rows, cache entries and near-duplicate
matches are all a :class:`Score`, so nothing converts between shapes.
Several heads fuse in log-odds (a weighted mean of logits), which is what the
bundle writer calibrates against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-7


@dataclass(frozen=True)
class Score:
    """Fused P(AI-generated), each head's probability, and the raw anomaly signals some heads expose.

    ``attribution`` holds P(family) per class of the bundle's attribution head
    (empty without one); it never enters the fused probability.
    """

    probability: float
    heads: Mapping[str, float] = field(default_factory=dict)
    anomaly: Mapping[str, float] = field(default_factory=dict)
    attribution: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreBatch:
    """Scores for a batch, as arrays: fused probability plus per-head probabilities and anomaly signals."""

    probability: np.ndarray
    head_scores: Mapping[str, np.ndarray] = field(default_factory=dict)
    anomaly: Mapping[str, np.ndarray] = field(default_factory=dict)
    attribution: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.probability)

    def row(self, i: int) -> Score:
        return Score(
            float(self.probability[i]),
            {k: float(v[i]) for k, v in self.head_scores.items()},
            {k: float(v[i]) for k, v in self.anomaly.items()},
            {k: float(v[i]) for k, v in self.attribution.items()},
        )


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def fuse_log_odds(probabilities: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean of the heads' log-odds, mapped back to a probability."""
    total = float(sum(weights))
    acc = np.sum([w * logit(p) for p, w in zip(probabilities, weights, strict=True)], axis=0)
    return sigmoid(acc / total)
