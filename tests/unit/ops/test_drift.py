"""Drift statistics on synthetic streams: a stable stream (at any fake share) stays quiet, a shifted one alarms.

The reference is built the way the bundle writer builds it (:func:`worker.ops.drift.binned`
on a "validation split" drawn from known distributions); the streams are fresh
draws from the same distributions (stable) or from shifted ones. Real scores
~ Beta(2, 8), fake ~ Beta(8, 2); novelty distances ~ chi(64) (the Mahalanobis
distance of a Gaussian in 64-d), the novel family's shifted outwards.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import numpy as np
import pytest

from schemas import BundleRef, CacheStatus, DriftStatistic, DriftStatus, Thresholds, Timings, VerdictEvent
from schemas.monitoring import DriftReference, NoveltyModel, SignalReference, UncertainReference
from worker.ops.drift import DriftMonitor, DriftSettings, Observation, binned, chi2_quantile, fit_fake_share, psi, smoothed
from worker.ops.metrics import WorkerMetrics

REF = BundleRef(name="b", version="1", sha256="a" * 64)
BAND = (0.5, 0.7)
N_VAL = 500
DIM = 64


def draw(rng: np.random.Generator, n: int, fake_share: float, novel_share: float = 0.0, middle_share: float = 0.0) -> list[Observation]:
    """n images: real, known fakes, 'middle' fakes (an unseen family scored ~0.5), 'novel' images (far embeddings, real-like scores)."""
    kinds = rng.choice(4, size=n, p=[1 - fake_share - novel_share - middle_share, fake_share, middle_share, novel_share])
    rows = []
    for k in kinds:
        if k == 0:
            s, d = rng.beta(2, 8), np.sqrt(rng.chisquare(DIM))
        elif k == 1:
            s, d = rng.beta(8, 2), np.sqrt(rng.chisquare(DIM))
        elif k == 2:
            s, d = rng.beta(12, 12), np.sqrt(rng.chisquare(DIM))
        else:
            s, d = rng.beta(2, 8), np.sqrt(rng.chisquare(DIM)) * 1.6
        rows.append(Observation(float(s), {}, {"gendet.discrepancy": float(s * 3 + rng.normal(0, 0.3)), "monitor.novelty": float(d)}))
    return rows


def reference(seed: int = 1) -> DriftReference:
    rng = np.random.default_rng(seed)
    real = draw(rng, N_VAL, 0.0)
    fake = draw(rng, N_VAL, 1.0)
    rows = real + fake
    y = np.array([0] * N_VAL + [1] * N_VAL)
    score = np.array([r.score for r in rows])
    disc = np.array([r.anomaly["gendet.discrepancy"] for r in rows])
    dist = np.array([r.anomaly["monitor.novelty"] for r in rows])
    thr = float(np.quantile(dist, 0.99))
    unc = (score >= BAND[0]) & (score < BAND[1])
    return DriftReference(
        computed_on="synthetic",
        signals=[
            SignalReference(signal="score", source="score", distribution=binned(score, y)),
            SignalReference(signal="gendet.discrepancy", source="anomaly", key="gendet.discrepancy", distribution=binned(disc, y)),
        ],
        uncertain=UncertainReference(real=float(unc[y == 0].mean()), fake=float(unc[y == 1].mean()), n_real=N_VAL, n_fake=N_VAL),
        novelty=NoveltyModel(
            file="monitor.onnx",
            components=["real", "fake"],
            shrinkage=0.1,
            fit_images=4000,
            threshold=thr,
            exceed_real=float((dist[y == 0] > thr).mean()),
            exceed_fake=float((dist[y == 1] > thr).mean()),
            n_real=N_VAL,
            n_fake=N_VAL,
        ),
    )


def monitor(metrics: WorkerMetrics | None = None, **kw: float) -> DriftMonitor:
    settings = DriftSettings(**{"window_images": 1000, "min_images": 300, "eval_every": 50, **kw})  # type: ignore[arg-type]
    return DriftMonitor(reference(), REF, BAND, settings, metrics)


def stream(m: DriftMonitor, rows: list[Observation], batch: int = 32) -> list:
    reports = []
    for lo in range(0, len(rows), batch):
        reports += m.observe_scores(rows[lo : lo + batch], now=1000.0)
    return reports


# -- the statistics on their own ----------------------------------------------------------------------------


def test_chi2_quantile_matches_tables() -> None:
    # chi-square table values (upper 0.1% and 0.01% points)
    assert chi2_quantile(0.999, 10) == pytest.approx(29.588, rel=0.01)
    assert chi2_quantile(0.999, 5) == pytest.approx(20.515, rel=0.02)
    assert chi2_quantile(0.9999, 9) == pytest.approx(33.72, rel=0.02)


def test_psi_is_zero_for_identical_histograms_and_grows_with_the_shift() -> None:
    ref = smoothed(np.full(10, 0.1), 10_000)
    assert psi(np.full(10, 1000), ref) == pytest.approx(0.0, abs=1e-9)
    mild = np.array([150, 150, 100, 100, 100, 100, 100, 100, 50, 50])
    strong = np.array([400, 200, 100, 100, 50, 50, 50, 20, 20, 10])
    assert 0 < psi(mild, ref) < psi(strong, ref)


def test_fake_share_is_recovered_from_a_mixture() -> None:
    rng = np.random.default_rng(0)
    ref = reference()
    d = ref.signals[0].distribution
    real, fake = smoothed(d.real, d.n_real), smoothed(d.fake, d.n_fake)
    for share in (0.05, 0.3, 0.8):
        rows = draw(rng, 4000, share)
        counts = np.bincount(np.searchsorted(d.edges, [r.score for r in rows], side="right"), minlength=len(d.edges) + 1)
        assert fit_fake_share(counts, real, fake) == pytest.approx(share, abs=0.04)


def test_binned_reference_refuses_what_cannot_be_binned() -> None:
    assert binned(np.ones(20), np.array([0, 1] * 10)) is None
    assert binned(np.linspace(0, 1, 20), np.zeros(20)) is None
    d = binned(np.linspace(0, 1, 200), np.array([0, 1] * 100))
    assert d is not None and len(d.edges) == 9 and sum(d.real) == pytest.approx(1)


# -- the monitor ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fake_share", [0.5, 0.1, 0.9])
def test_stable_stream_raises_no_alarm_whatever_its_fake_share(fake_share: float) -> None:
    """20,000 images from the validation distributions, at the validation's fake share and far from it."""
    m = monitor()
    reports = stream(m, draw(np.random.default_rng(7), 20_000, fake_share))
    assert m.judgements > 300
    assert reports == [], [r.message for r in reports]
    snap = m.snapshot()
    assert snap["fake_share"] == pytest.approx(fake_share, abs=0.06)
    assert {r.statistic for r in snap["readings"]} == set(DriftStatistic)


def test_an_unseen_family_scored_in_the_middle_raises_score_shift_and_uncertain_rate() -> None:
    m = monitor()
    rng = np.random.default_rng(3)
    assert stream(m, draw(rng, 2000, 0.2)) == []
    reports = stream(m, draw(rng, 2000, 0.1, middle_share=0.15))
    fired = {(r.statistic, r.signal) for r in reports if r.status is DriftStatus.alarm}
    assert (DriftStatistic.uncertain_rate, "score") in fired
    assert (DriftStatistic.score_shift, "score") in fired
    first = next(r for r in reports if r.statistic is DriftStatistic.uncertain_rate)
    assert first.value > first.threshold > (first.expected or 0)
    assert first.window.images == 1000 and first.bundle == REF and "uncertain band" in first.message
    assert {x.statistic for x in first.readings} == set(DriftStatistic)


def test_images_far_from_the_training_embeddings_raise_the_novelty_rate_even_when_their_scores_look_real() -> None:
    m = monitor()
    rng = np.random.default_rng(4)
    assert stream(m, draw(rng, 2000, 0.2)) == []
    reports = stream(m, draw(rng, 1500, 0.2, novel_share=0.1))
    alarms = [r for r in reports if r.status is DriftStatus.alarm]
    assert [r.statistic for r in alarms] == [DriftStatistic.novelty_rate], [r.message for r in alarms]
    first = alarms[0]
    assert first.signal == "embedding" and first.value > first.threshold >= (first.expected or 0) + 0.02


def test_one_report_per_crossing_then_recovered_when_the_stream_is_stable_again() -> None:
    m = monitor()
    rng = np.random.default_rng(5)
    shifted = stream(m, draw(rng, 3000, 0.1, novel_share=0.2))
    alarms = [r for r in shifted if r.statistic is DriftStatistic.novelty_rate]
    assert [r.status for r in alarms] == [DriftStatus.alarm]  # stays in alarm for 2,000+ images without repeating itself
    back = stream(m, draw(rng, 2000, 0.1))
    assert [r.status for r in back if r.statistic is DriftStatistic.novelty_rate] == [DriftStatus.recovered]
    assert m.snapshot()["alarms"] == []


def test_cache_hits_and_other_bundles_verdicts_are_not_counted() -> None:
    m = monitor()

    def verdict(cache: CacheStatus, bundle: BundleRef = REF) -> VerdictEvent:
        return VerdictEvent(
            upload_id="u",
            content_sha256="c" * 64,
            label="real",
            score=0.1,
            thresholds=Thresholds(threshold=0.7, uncertain_low=0.5, uncertain_high=0.7, calibrated=True),
            anomaly={"monitor.novelty": 8.0},
            bundle=bundle,
            cache=cache,
            timings=Timings(queue_ms=0, decode_ms=0, inference_ms=0, total_ms=0),
            produced_at=datetime(2026, 1, 1, tzinfo=UTC),
        )

    other = BundleRef(name="b", version="2", sha256="b" * 64)
    m.observe([verdict(CacheStatus.hit), verdict(CacheStatus.near_duplicate), verdict(CacheStatus.miss, other)], now=1.767e9)
    assert m.snapshot()["images"] == 0
    m.observe([verdict(CacheStatus.miss)] * 3, now=1.767e9)
    assert m.snapshot()["images"] == 3


def test_the_window_is_bounded_by_count_and_by_age() -> None:
    m = monitor(window_images=500, window_s=60.0, min_images=100)
    rows = draw(np.random.default_rng(6), 800, 0.3)
    m.observe_scores([Observation(r.score, r.heads, r.anomaly, at=100.0) for r in rows], now=100.0)
    assert m.snapshot()["images"] == 500
    m.observe_scores([], now=150.0)
    assert m.snapshot()["images"] == 500
    m.observe_scores([], now=161.0)
    assert m.snapshot()["images"] == 0


def test_observe_is_thread_safe() -> None:
    m = monitor(window_images=100_000, min_images=100_000)
    rows = draw(np.random.default_rng(8), 4000, 0.3)
    threads = [threading.Thread(target=stream, args=(m, rows[i::4])) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.snapshot()["images"] == 4000


def test_gauges_follow_the_statistics_and_leave_with_the_bundle() -> None:
    metrics = WorkerMetrics()
    m = monitor(metrics)
    stream(m, draw(np.random.default_rng(9), 1500, 0.1, novel_share=0.2))
    body = metrics.render()
    novelty = 'aigis_drift_value{name="b",role="primary",signal="embedding",statistic="novelty_rate",version="1"}'
    alarm = 'aigis_drift_alarm{name="b",role="primary",signal="embedding",statistic="novelty_rate",version="1"} 1.0'
    assert novelty in body and alarm in body
    assert 'aigis_drift_fake_share{name="b",role="primary",version="1"}' in body
    assert 'aigis_drift_reports_total{name="b",role="primary",statistic="novelty_rate",status="alarm",version="1"} 1.0' in body
    m.close()
    assert novelty not in metrics.render()


def test_a_bundle_without_a_drift_reference_gets_no_monitor() -> None:
    from schemas import BundleManifest

    doc = {
        "name": "b",
        "version": "1",
        "created_at": "2026-01-01T00:00:00Z",
        "backbone": {"architecture": "t", "file": "b.onnx", "embed_dim": 4, "preprocess": {"image_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}},
        "heads": [{"name": "h", "method": "linear-probe", "file": "h.onnx", "inputs": [{"name": "embedding", "source": "embedding"}]}],
        "calibration": {"threshold": 0.5, "uncertain_low": 0.5, "uncertain_high": 0.5, "calibrated": False},
        "files": {"b.onnx": "0" * 64, "h.onnx": "0" * 64},
    }
    manifest = BundleManifest.model_validate(doc)
    assert DriftMonitor.for_bundle(manifest, REF) is None
    doc["drift"] = reference().model_dump()
    with pytest.raises(ValueError, match=r"monitor\.onnx"):
        BundleManifest.model_validate(doc)  # the novelty graph must be pinned in files
    doc["files"]["monitor.onnx"] = "0" * 64
    assert DriftMonitor.for_bundle(BundleManifest.model_validate(doc), REF) is not None
    from worker.app import drift_settings
    from worker.config import WorkerConfig

    with_ref = BundleManifest.model_validate(doc)
    m = DriftMonitor.for_bundle(with_ref, REF, drift_settings(WorkerConfig(drift_window_images=500, drift_min_images=100)), role="shadow")
    assert m is not None and m.settings.window_images == 500 and m.settings.min_images == 100 and m.role == "shadow"
    assert drift_settings(WorkerConfig(drift_window_images=60, drift_min_images=100)) == DriftSettings(window_images=60, min_images=60)
    assert drift_settings(WorkerConfig(drift_monitor=False)) is None
