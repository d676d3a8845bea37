"""The runtime's drift monitors (worker/runtime/drift_reports.py): one per served bundle, following hot swaps.

Real manifests, verdicts, outcomes, monitors and metrics; the served bundles are
stand-ins carrying what :class:`DriftReports` reads of a loaded bundle (its
manifest, ref and sha256), behind a rollout whose ``current()`` the test swaps.
The streams are those of tests/unit/ops/test_drift.py (same reference and
distributions): stable, an unseen family scored in the middle, images far from the
training embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from structlog.testing import capture_logs

from schemas import BundleManifest, BundleRef, CacheStatus, DriftStatistic, DriftStatus, Label, ShadowScore, Thresholds, Timings, VerdictEvent
from tests.unit.ops.test_drift import BAND, draw, reference
from worker.ingest.wire import InputRecord
from worker.model.rollout import Models
from worker.ops.drift import DriftSettings, Observation
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.outcomes import Outcome
from worker.runtime.drift_reports import DriftReports

SETTINGS = DriftSettings(window_images=1000, min_images=300, eval_every=50)
T0 = datetime(2026, 12, 3, tzinfo=UTC)


def manifest(version: str) -> BundleManifest:
    return BundleManifest.model_validate(
        {
            "name": "b",
            "version": version,
            "created_at": "2026-01-01T00:00:00Z",
            "backbone": {"architecture": "t", "file": "b.onnx", "embed_dim": 4, "preprocess": {"image_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}},
            "heads": [{"name": "h", "method": "linear-probe", "file": "h.onnx", "inputs": [{"name": "embedding", "source": "embedding"}]}],
            "calibration": {"threshold": BAND[1], "uncertain_low": BAND[0], "uncertain_high": BAND[1], "calibrated": True},
            "drift": reference().model_dump(),
            "files": {"b.onnx": "0" * 64, "h.onnx": "0" * 64, "monitor.onnx": "0" * 64},
        }
    )


@dataclass(frozen=True)
class Served:
    """What DriftReports reads of a LoadedBundle."""

    manifest: BundleManifest
    ref: BundleRef

    @property
    def sha256(self) -> str:
        return self.ref.sha256


def served(version: str, sha: str) -> Served:
    return Served(manifest(version), BundleRef(name="b", version=version, sha256=sha * 64))


class SwappableRollout:
    def __init__(self, primary: Served, shadow: Served | None = None) -> None:
        self.models = Models(primary, shadow)  # type: ignore[arg-type]

    def current(self) -> Models:
        return self.models


def outcomes(
    rows: list[Observation], bundle: Served, shadow_rows: list[Observation] | None = None, shadow: Served | None = None, start: int = 0
) -> list[Outcome]:
    out = []
    for i, r in enumerate(rows):
        s = shadow_rows[i] if shadow_rows is not None else None
        v = VerdictEvent(
            upload_id=f"u{start + i}",
            content_sha256="c" * 64,
            label=Label.ai_generated if r.score >= BAND[1] else Label.real,
            score=r.score,
            thresholds=Thresholds(threshold=BAND[1], uncertain_low=BAND[0], uncertain_high=BAND[1], calibrated=True),
            anomaly=dict(r.anomaly),
            bundle=bundle.ref,
            cache=CacheStatus.miss,
            timings=Timings(queue_ms=0, decode_ms=0, inference_ms=0, total_ms=0),
            shadow=None if s is None or shadow is None else ShadowScore(bundle=shadow.ref, score=s.score, label=Label.real, head_scores=dict(s.heads)),
            produced_at=T0 + timedelta(milliseconds=start + i),
        )
        out.append(Outcome(InputRecord("uploads", 0, start + i, None, None, b""), v, None, b""))
    return out


def feed(drift: DriftReports, batches: list[list[Outcome]]) -> list:
    reports = []
    for b in batches:
        reports += drift.observe(b)
    return reports


def batched(items: list[Outcome], size: int = 32) -> list[list[Outcome]]:
    return [items[lo : lo + size] for lo in range(0, len(items), size)]


def test_novel_images_raise_one_alarm_report_and_a_drift_alarm_warning_then_recovered_at_info() -> None:
    a = served("1", "a")
    metrics = WorkerMetrics()
    drift = DriftReports(SETTINGS, SwappableRollout(a), metrics, worker="w-1")
    rng = np.random.default_rng(4)
    assert feed(drift, batched(outcomes(draw(rng, 2000, 0.2), a))) == []
    with capture_logs() as logs:
        reports = feed(drift, batched(outcomes(draw(rng, 1500, 0.2, novel_share=0.2), a, start=2000)))
        back = feed(drift, batched(outcomes(draw(rng, 2000, 0.2), a, start=3500)))
    alarm = [r for r in reports if r.status is DriftStatus.alarm]
    assert [(r.statistic, r.role, r.worker, r.bundle) for r in alarm] == [(DriftStatistic.novelty_rate, "primary", "w-1", a.ref)]
    warnings = [e for e in logs if e["event"] == "drift_alarm"]
    assert len(warnings) == 1
    w = warnings[0]
    assert w["log_level"] == "warning" and w["bundle"] == "b:1" and w["role"] == "primary" and w["statistic"] == "novelty_rate"
    assert w["signal"] == "embedding" and w["value"] > w["threshold"] and w["window_images"] == 1000 and "beyond the training distribution" in w["message"]
    assert [r.status for r in back if r.statistic is DriftStatistic.novelty_rate] == [DriftStatus.recovered]
    recovered = [e for e in logs if e["event"] == "drift_recovered"]
    assert [e["log_level"] for e in recovered] == ["info"]
    assert metrics.drift_reports.value("primary", "b", "1", "novelty_rate", "alarm") == 1


def test_the_shadow_bundle_is_watched_on_the_shadow_scores_riding_on_fresh_verdicts() -> None:
    a, s = served("1", "a"), served("2", "b")
    metrics = WorkerMetrics()
    drift = DriftReports(SETTINGS, SwappableRollout(a, s), metrics)
    rng = np.random.default_rng(3)
    primary, shadow = draw(rng, 4000, 0.2), draw(rng, 2000, 0.2) + draw(rng, 2000, 0.1, middle_share=0.15)
    fresh = outcomes(primary, a, shadow, s)
    # hits and a shadow score from a bundle no longer served ride along and must not count
    stale = [Outcome(o.record, o.event.model_copy(update={"cache": CacheStatus.hit}), None, b"") for o in fresh[:500]]  # type: ignore[union-attr]
    other = outcomes(primary[:500], a, shadow[:500], served("0", "c"))
    reports = feed(drift, batched(stale + other))
    assert reports == [] and metrics.drift_window.value("primary", "b", "1") == 500  # `other`'s primary scores, not the hits
    assert metrics.drift_window.value("shadow", "b", "2") is None  # 500 counted would have been judged and exported
    drift.close()

    drift = DriftReports(SETTINGS, SwappableRollout(a, s), metrics)
    reports = feed(drift, batched(fresh))
    fired = {(r.role, r.statistic, r.signal) for r in reports if r.status is DriftStatus.alarm}
    assert ("shadow", DriftStatistic.uncertain_rate, "score") in fired
    assert all(role == "shadow" for role, _, _ in fired), fired  # the primary's own scores were stable
    shadow_reports = [r for r in reports if r.role == "shadow"]
    assert {r.bundle for r in shadow_reports} == {s.ref}
    # the shadow has no novelty distance in the verdict: no novelty reading for it
    assert all(x.statistic is not DriftStatistic.novelty_rate for r in shadow_reports for x in r.readings)
    assert metrics.drift_window.value("shadow", "b", "2") == 1000


def test_a_hot_swap_starts_a_fresh_window_against_the_new_bundle_and_drops_the_old_gauges() -> None:
    a, b = served("1", "a"), served("2", "b")
    metrics = WorkerMetrics()
    rollout = SwappableRollout(a)
    drift = DriftReports(SETTINGS, rollout, metrics)
    rng = np.random.default_rng(9)
    reports = feed(drift, batched(outcomes(draw(rng, 1500, 0.1, novel_share=0.2), a)))
    assert [r.statistic for r in reports if r.status is DriftStatus.alarm] == [DriftStatistic.novelty_rate]
    old = 'aigis_drift_alarm{name="b",role="primary",signal="embedding",statistic="novelty_rate",version="1"} 1.0'
    assert old in metrics.render()

    rollout.models = Models(b)  # type: ignore[arg-type]
    late = outcomes(draw(rng, 100, 0.1, novel_share=0.2), a, start=1500)  # bundle 1's verdicts still in flight
    fresh = outcomes(draw(rng, 300, 0.1), b, start=1600)
    reports = feed(drift, batched(late + fresh))
    assert reports == []  # the new bundle's monitor has neither the old window nor the old alarm
    body = metrics.render()
    assert 'version="1"' not in body.split("aigis_drift_reports_total")[0]  # every gauge of bundle 1 is gone (the counter stays)
    assert metrics.drift_window.value("primary", "b", "2") == 300
    assert metrics.drift_alarm.value("primary", "b", "2", "novelty_rate", "embedding") == 0.0

    drift.close()
    assert metrics.drift_window.value("primary", "b", "2") is None


def test_without_settings_nothing_is_monitored() -> None:
    a = served("1", "a")
    metrics = WorkerMetrics()
    drift = DriftReports(None, SwappableRollout(a), metrics)
    assert feed(drift, batched(outcomes(draw(np.random.default_rng(4), 1500, 0.1, novel_share=0.5), a))) == []
    assert metrics.drift_window.value("primary", "b", "1") is None
