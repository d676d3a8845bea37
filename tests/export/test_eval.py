"""Metrics, calibration and degradations used by `export eval` and `bundle --data`, pinned on hand-made cases."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from export.calibrate import calibrate, stratified_split
from export.evaluate import ACCURACY_KEYS, METRICS, group_metrics, mean_row, perturb
from export.metrics import average_precision, oracle_accuracy, rates_at, roc_auc, threshold_for_fpr, tpr_at_fpr


def test_auc_and_ap_on_hand_computed_cases() -> None:
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1])
    assert roc_auc(s, y) == pytest.approx(0.75)  # pairs: (0.9>0.8, 0.9>0.1, 0.7<0.8, 0.7>0.1)
    assert average_precision(s, y) == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)  # ties count half
    assert roc_auc(s, np.ones(4)) is None and average_precision(s, np.zeros(4)) is None


def test_threshold_for_fpr_never_exceeds_the_target_on_the_data_it_saw() -> None:
    real = np.linspace(0, 1, 200)
    t = threshold_for_fpr(real, 0.01)
    assert (real >= t).mean() <= 0.01 and (real >= t).sum() == 2
    assert threshold_for_fpr(np.array([0.3, 0.7]), 0.01) > 0.7  # too few reals to allow any false positive
    assert threshold_for_fpr(np.array([0.2, 0.2, 0.2]), 0.5) > 0.2  # ties stay below the threshold


def test_rates_tpr_and_oracle() -> None:
    y = np.array([0] * 100 + [1] * 10)
    s = np.r_[np.linspace(0, 0.5, 100), np.linspace(0.3, 1.0, 10)]
    r = rates_at(s, y, 0.5)
    assert r["fpr"] == pytest.approx(0.01) and r["real_acc"] == pytest.approx(0.99)
    assert tpr_at_fpr(s, y, 0.01) is not None
    assert tpr_at_fpr(s[y == 1], np.ones(10)) is None  # no real images at all
    assert tpr_at_fpr(np.r_[s[:99], s[100:]], np.r_[y[:99], y[100:]], 0.01) is None  # 99 reals cannot resolve 1%
    assert oracle_accuracy(s, y) >= r["acc"]


def test_calibration_band_sits_below_the_threshold_and_notes_small_sets() -> None:
    rng = np.random.default_rng(0)
    s = np.r_[rng.uniform(0, 0.6, 400), rng.uniform(0.4, 1, 400)]
    y = np.r_[np.zeros(400), np.ones(400)]
    cal, notes = calibrate(s, y, target_fpr=0.01, band_factor=5)
    real = s[y == 0]
    assert (real >= cal.threshold).mean() <= 0.01 and (real >= cal.uncertain_low).mean() <= 0.05
    assert cal.uncertain_low < cal.threshold == cal.uncertain_high and not notes
    _, notes = calibrate(s[::20], y[::20])
    assert notes and "cannot be resolved" in notes[0]


def test_stratified_split_keeps_every_group_on_both_sides() -> None:
    gens = ["a"] * 10 + ["b"] * 10
    labels = np.array([0, 1] * 10)
    tr, va = stratified_split(gens, labels, 0.2, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == 20
    assert {(gens[i], int(labels[i])) for i in va} == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}


def test_mean_row_refuses_to_average_over_fewer_generators() -> None:
    ok = group_metrics(np.array([0.1, 0.9]), np.array([0, 1]), ["real", "ai_generated"], 0.5)
    only_real = group_metrics(np.array([0.1]), np.array([0]), ["real"], 0.5)
    assert only_real["roc_auc"] is None and "0 fake" in only_real["why"]["roc_auc"]
    mean = mean_row({"g1": ok, "g2": only_real})
    assert mean["roc_auc"] is None and "missing for 1 of 2" in mean["why"]["roc_auc"]
    assert mean["real_acc_cal"] == pytest.approx(1.0) and mean["real_acc_0.5"] == pytest.approx(1.0)


def test_real_and_fake_accuracy_at_half_sit_beside_the_calibrated_ones() -> None:
    """The papers' threshold 0.5 and the bundle's calibrated threshold give different rates; both are reported, labelled."""
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.7, 0.55, 0.65, 0.8, 0.9])
    m = group_metrics(s, y, ["real"] * 8, threshold=0.75)
    assert m["real_acc_0.5"] == pytest.approx(0.5) and m["fake_acc_0.5"] == pytest.approx(1.0) and m["acc_0.5"] == pytest.approx(0.75)
    assert m["real_acc_cal"] == pytest.approx(1.0) and m["fake_acc_cal"] == pytest.approx(0.5) and m["acc_cal"] == pytest.approx(0.75)
    assert m["fpr"] == pytest.approx(1 - m["real_acc_cal"]) and m["fnr"] == pytest.approx(1 - m["fake_acc_cal"])
    labels = {METRICS[k] for k in ACCURACY_KEYS}
    assert labels == {"acc@0.5", "real-acc@0.5", "fake-acc@0.5", "acc@cal", "real-acc@cal", "fake-acc@cal"}


@pytest.mark.parametrize(("condition", "size", "fmt"), [("resize-64", (64, 96), "PNG"), ("jpeg-30", (128, 192), "JPEG"), ("blur-5", (128, 192), "PNG")])
def test_degradations(condition: str, size: tuple[int, int], fmt: str) -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (192, 128, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = Image.open(io.BytesIO(perturb(buf.getvalue(), condition)))
    assert out.size == size and out.format == fmt
    if condition.startswith("blur"):
        assert np.asarray(out, dtype=float).std() < 0.2 * np.asarray(img, dtype=float).std()
