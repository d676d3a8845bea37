"""Drift through a real worker: images unlike anything the bundle was trained on raise a DriftReport on the drift topic.

The bundle (``monitored_bundle``) carries a drift reference and a novelty graph; the worker runs with a
small window so that a few dozen images decide. Hard-edged stripes and checkerboards are far from the synthetic
photographs the bundle saw, so the embedding novelty rate goes from the reference's ~1% to nearly all: one alarm report,
a gauge at 1. The same images again are cache hits and must not enter the window a second time.
"""

from __future__ import annotations

from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from devkit.harness import OutputReader, Topics, create_topics, http_get, metric_sum, publish, raw_records, start_worker, stop, wait_until, worker_env
from devkit.images import pattern_images
from devkit.servers import free_port
from schemas import DriftReport


def _reports(bootstrap: str, topic: str) -> list[DriftReport]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False, consumer_timeout_ms=2000)
    try:
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})])
        consumer.seek_to_beginning()
        return [DriftReport.model_validate_json(r.value) for r in consumer]
    finally:
        consumer.close()


def test_unfamiliar_images_raise_a_novelty_drift_report_and_cache_hits_do_not_count_twice(servers, monitored_bundle: Path, tmp_path: Path) -> None:
    topics = Topics.fresh(servers.bootstrap_servers, partitions=1)
    drift_topic = f"drift-{topics.group}"
    create_topics(servers.bootstrap_servers, [drift_topic], 1)
    port = free_port()
    env = worker_env(
        servers,
        topics,
        monitored_bundle,
        AIGIS_METRICS_PORT=str(port),
        AIGIS_DRIFT_TOPIC=drift_topic,
        AIGIS_DRIFT_WINDOW_IMAGES="60",
        AIGIS_DRIFT_MIN_IMAGES="30",
        AIGIS_DRIFT_EVAL_EVERY="5",
        AIGIS_MAX_BATCH="8",
    )
    proc = start_worker(env, tmp_path / "worker.log")
    reader = OutputReader(servers.bootstrap_servers, topics)
    images = pattern_images(60, seed=41)
    try:
        first = raw_records("pattern", images)
        publish(servers.bootstrap_servers, topics.uploads, first)
        assert reader.wait_for_ids({k.decode() for k, _, _ in first}, 120, proc) == set()
        assert all(v["cache"] == "miss" and "monitor.novelty" in v["anomaly"] for v in reader.verdicts)
        wait_until(lambda: any(r.statistic == "novelty_rate" and r.status == "alarm" for r in _reports(servers.bootstrap_servers, drift_topic)), 60, "a report")
        report = next(r for r in _reports(servers.bootstrap_servers, drift_topic) if r.statistic == "novelty_rate")
        assert report.bundle.sha256 == reader.verdicts[0]["bundle"]["sha256"] and report.value > report.threshold
        _, body = http_get(port, "/metrics")
        assert metric_sum(body, "aigis_drift_alarm") >= 1
        window = metric_sum(body, "aigis_drift_window_images")
        assert window == 60

        again = raw_records("again", images)  # same bytes: cache hits, counted when they were first scored
        publish(servers.bootstrap_servers, topics.uploads, again)
        assert reader.wait_for_ids({k.decode() for k, _, _ in again}, 120, proc) == set()
        assert {v["cache"] for v in reader.verdicts if v["upload_id"].startswith("again-")} == {"hit"}
        _, body = http_get(port, "/metrics")
        assert metric_sum(body, "aigis_drift_window_images") == window
    finally:
        stop(proc)
        reader.close()
