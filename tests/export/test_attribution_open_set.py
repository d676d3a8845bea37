"""The open-set threshold of the attribution head (export/heads/attribution.py): Youden's J over leave-one-family-out folds."""

from __future__ import annotations

import numpy as np
import pytest

from export.heads.attribution import open_set_threshold, unknown_threshold


def test_separable_folds_get_a_threshold_between_known_and_unseen() -> None:
    known, unseen = np.linspace(0.9, 1.0, 50), np.linspace(0.5, 0.8, 20)
    t, kept, caught = open_set_threshold([(known, unseen)], ceiling=1.0)
    assert 0.8 < t <= 0.9 and kept == 1.0 and caught == 1.0


def test_the_threshold_is_the_best_trade_averaged_over_folds_not_the_coverage_quantile() -> None:
    rng = np.random.default_rng(0)
    # a saturated head: known images at 1 - 1e-7 and above, a left-out family at 0.9-0.999, one fold harder than the other
    k1, k2 = 1 - rng.uniform(0, 1e-7, 400), 1 - rng.uniform(0, 1e-6, 400)
    u1, u2 = rng.uniform(0.9, 0.999, 60), np.concatenate([rng.uniform(0.9, 0.999, 30), 1 - rng.uniform(0, 1e-7, 30)])
    coverage = unknown_threshold(np.concatenate([k1, k2]), 0.95)
    t, kept, caught = open_set_threshold([(k1, u1), (k2, u2)], ceiling=coverage)
    assert t < coverage  # the coverage rule alone would drop 5% of the known images for nothing
    assert kept == pytest.approx(1.0) and caught == pytest.approx(0.75)
    grid = np.linspace(0.5, coverage, 2001)
    j = [np.mean([(k >= g).mean() + (u < g).mean() for k, u in ((k1, u1), (k2, u2))]) for g in grid]
    assert kept + caught >= max(j) - 1e-12  # no threshold under the ceiling does better


def test_the_coverage_ceiling_caps_the_threshold_and_no_separation_sends_nothing_to_unknown() -> None:
    known, unseen = np.linspace(0.5, 0.6, 50), np.linspace(0.9, 1.0, 50)  # unseen images are *more* confident
    t, kept, caught = open_set_threshold([(known, unseen)], ceiling=0.55)
    assert t == 0.5 and kept == 1.0 and caught == 0.0
    t, _, _ = open_set_threshold([(np.linspace(0.9, 1.0, 50), np.linspace(0.5, 0.8, 20))], ceiling=0.7)
    assert t <= 0.7
    with pytest.raises(ValueError):
        open_set_threshold([(known, np.array([]))], ceiling=1.0)
