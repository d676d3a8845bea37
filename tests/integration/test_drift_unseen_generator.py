"""A generator that ships after the model: a live worker's drift alarm fires on its images (real broker, Redis, worker process).

The bundle is trained with one synthetic family left out (``--exclude-generator tconv``, what
``python -m export drift-benchmark`` does per family); its manifest carries the drift reference and novelty
graph of the families it knows. The worker first sees fresh crops of the training photographs through the
known families and real images (the distribution it was trained on: no report), then the left-out family's
fakes: a DriftReport with ``status`` alarm is published on the drift topic, for this bundle, and the gauges
say so. Stream images come from :func:`export.drift_benchmark.make_pool` (new crops, never training images);
everything is lossless PNG like the training split, so storage is not a shift of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from devkit.harness import (
    SMALL_DRIFT_WINDOW,
    OutputReader,
    Topics,
    create_topics,
    http_get,
    metric_sum,
    publish,
    raw_records,
    start_worker,
    stop,
    wait_until,
    worker_env,
)
from devkit.servers import free_port
from schemas import DriftReport, DriftStatus

UNSEEN = "tconv"
KNOWN = ["autoencoder", "diffusion", "upsample-texture"]


@pytest.fixture(scope="module")
def left_out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from devkit.bundles import train_small_bundle
    from export.drift_benchmark import make_pool

    root = tmp_path_factory.mktemp("unseen")
    bundle = train_small_bundle(root, seed=5, test_per_class=4, exclude_generators=[UNSEEN], encoding="png")
    return {
        "bundle": bundle,
        "known": make_pool(root / "known", "train", 10, 5, families=KNOWN, progress=False),
        "unseen": make_pool(root / "new", "train", 40, 5, families=[UNSEEN], progress=False),
    }


def _reports(bootstrap: str, topic: str) -> list[DriftReport]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False, consumer_timeout_ms=2000)
    try:
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})])
        consumer.seek_to_beginning()
        return [DriftReport.model_validate_json(r.value) for r in consumer]
    finally:
        consumer.close()


def test_a_family_left_out_of_training_raises_a_drift_alarm_in_a_live_worker(servers, left_out: dict[str, Path], tmp_path: Path) -> None:
    from worker.model.bundle import read_manifest

    manifest, sha = read_manifest(left_out["bundle"])
    assert manifest.drift is not None and manifest.drift.novelty is not None and UNSEEN not in manifest.drift.novelty.components
    known = sorted(left_out["known"].glob("*/*/*.png"))
    unseen = sorted((left_out["unseen"] / UNSEEN / "1_fake").glob("*.png"))
    assert len(known) == 60 and len(unseen) == 40

    topics = Topics.fresh(servers.bootstrap_servers, partitions=1)
    drift_topic = f"drift-{topics.group}"
    create_topics(servers.bootstrap_servers, [drift_topic], 1)
    port = free_port()
    env = worker_env(
        servers,
        topics,
        left_out["bundle"],
        AIGIS_METRICS_PORT=str(port),
        AIGIS_DRIFT_TOPIC=drift_topic,
        **SMALL_DRIFT_WINDOW,
    )
    proc = start_worker(env, tmp_path / "worker.log")
    reader = OutputReader(servers.bootstrap_servers, topics)
    try:
        # 1. what the bundle was trained on: judged 7 times (30..60 images), no report
        before = raw_records("known", [p.read_bytes() for p in known])
        publish(servers.bootstrap_servers, topics.uploads, before)
        assert reader.wait_for_ids({k.decode() for k, _, _ in before}, 120, proc) == set()
        assert {v["cache"] for v in reader.verdicts} == {"miss"} and {v["bundle"]["sha256"] for v in reader.verdicts} == {sha}
        wait_until(lambda: metric_sum(http_get(port, "/metrics")[1], "aigis_drift_window_images") >= 60, 30, "the known images judged")
        assert _reports(servers.bootstrap_servers, drift_topic) == []
        _, body = http_get(port, "/metrics")
        assert metric_sum(body, "aigis_drift_alarm") == 0 and metric_sum(body, "aigis_drift_reports_total") == 0

        # 2. the new generator's fakes
        after = raw_records("unseen", [p.read_bytes() for p in unseen])
        publish(servers.bootstrap_servers, topics.uploads, after)
        assert reader.wait_for_ids({k.decode() for k, _, _ in after}, 120, proc) == set()
        wait_until(lambda: any(r.status is DriftStatus.alarm for r in _reports(servers.bootstrap_servers, drift_topic)), 60, "a drift alarm")
        alarms = [r for r in _reports(servers.bootstrap_servers, drift_topic) if r.status is DriftStatus.alarm]
        first = alarms[0]
        print("first alarm:", first.statistic.value, first.signal, f"{first.value:.3f} > {first.threshold:.3f}", "window", first.window.images)
        assert first.bundle.sha256 == sha and first.role == "primary" and first.value > first.threshold
        assert 60 < first.window.images <= 100  # raised by the new family's images, after the known ones
        _, body = http_get(port, "/metrics")
        published = _reports(servers.bootstrap_servers, drift_topic)
        assert metric_sum(body, "aigis_drift_alarm") >= 1 and metric_sum(body, "aigis_drift_reports_total") == len(published)
    finally:
        stop(proc)
        reader.close()
