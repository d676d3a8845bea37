"""Threshold policy: a score and the bundle's calibration decide the label."""

from __future__ import annotations

from schemas import Calibration, Label, Thresholds


def decide(score: float, cal: Calibration) -> Label:
    """>= uncertain_high: AI-generated; < uncertain_low: real; in between: uncertain.

    With no band (low == high == threshold) this is the plain ``score >= threshold``.
    """
    if score >= cal.uncertain_high:
        return Label.ai_generated
    if score < cal.uncertain_low:
        return Label.real
    return Label.uncertain


def thresholds(cal: Calibration) -> Thresholds:
    return Thresholds(
        threshold=cal.threshold,
        uncertain_low=cal.uncertain_low,
        uncertain_high=cal.uncertain_high,
        target_fpr=cal.target_fpr,
        calibrated=cal.calibrated,
    )
