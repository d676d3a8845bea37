"""The linear probe stops as UniversalFakeDetect's train.py does: validation accuracy, patience 5, lr / 10 down to 1e-6."""

from __future__ import annotations

import numpy as np
import pytest

from export.heads.base import EmbeddingSet
from export.heads.linear_probe import LinearProbe, UFDStopping


def test_rule_drops_the_rate_after_five_epochs_without_improvement_and_stops_below_min_lr() -> None:
    rule = UFDStopping(lr=1e-4)
    assert rule.step(0.5) == "improved"
    assert rule.step(0.6) == "improved"
    assert [rule.step(0.6005) for _ in range(4)] == ["continue"] * 4  # +0.0005 < delta 0.001: no improvement
    assert rule.step(0.6) == "drop" and rule.lr == pytest.approx(1e-5)
    assert rule.step(0.55) == "improved"  # a fresh count after the drop: its first epoch is the new best
    assert rule.step(0.5515) == "continue"  # after a drop the delta is 0.002
    assert rule.step(0.553) == "improved"
    assert [rule.step(0.553) for _ in range(4)] == ["continue"] * 4
    assert rule.step(0.553) == "drop" and rule.lr == pytest.approx(1e-6)
    assert rule.step(0.9) == "improved"
    assert [rule.step(0.9) for _ in range(5)] == ["continue"] * 4 + ["stop"]
    assert rule.lr == pytest.approx(1e-6)  # 1e-7 would be below min_lr: stop instead of a third drop


def separable(n: int, dim: int, seed: int) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    emb = rng.normal(size=(n, dim)).astype(np.float32) + 4.0 * labels[:, None]
    return EmbeddingSet(emb, labels, ["g"] * n)


def test_fit_follows_the_rule_on_validation_accuracy_and_keeps_the_best_epoch() -> None:
    train, val = separable(64, 8, 0), separable(32, 8, 1)
    probe = LinearProbe(lr=1e-2, max_epochs=200)
    report = probe.fit(train, val)
    hist = report.history
    lrs = [h["lr"] for h in hist]
    steps = sorted(set(lrs), reverse=True)
    assert steps == pytest.approx([1e-2, 1e-3, 1e-4, 1e-5, 1e-6])  # divided by 10 each time, down to 1e-6
    assert lrs == sorted(lrs, reverse=True)  # never goes back up
    assert hist[-1]["action"] == "stop" and report.epochs == len(hist) < 200
    # each rate runs until 5 consecutive epochs fail to improve on that phase's best (by 0.001, after a drop 0.002)
    for k, lr in enumerate(steps):
        phase = [h for h in hist if h["lr"] == lr]
        assert [h["action"] for h in phase[-5:]] == ["continue"] * 4 + ["drop" if k < 4 else "stop"]
        delta = 0.001 if k == 0 else 0.002
        best = max(h["val_acc"] for h in phase[:-5])
        assert all(h["val_acc"] < best + delta for h in phase[-5:])
    kept = max(h["val_acc"] for h in hist)
    acc = float(((probe.predict_proba(val) > 0.5) == val.labels).mean())
    assert acc == pytest.approx(kept)
