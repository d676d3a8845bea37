"""Drift through a real worker: images unlike anything the bundle was trained on raise a DriftReport on the drift topic.

The bundle (``monitored_bundle``) carries a drift reference and a novelty graph; the worker runs with a
window larger than what is sent (room for 200, 60 sent) and judgement from 30 images on, so that a few dozen
images decide and the window's size tells how many verdicts entered it. Hard-edged stripes and checkerboards are far from the synthetic
photographs the bundle saw, so the embedding novelty rate goes from the reference's ~1% to nearly all: one alarm report,
a gauge at 1. The same images again are cache hits and must not enter the window a second time: the window would
grow to 120 if they did (then 130 with ten fresh images sent after them), so its gauge must read 70, not 130.
"""

from __future__ import annotations

from pathlib import Path

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
        **SMALL_DRIFT_WINDOW,
    )
    proc = start_worker(env, tmp_path / "worker.log")
    reader = OutputReader(servers.bootstrap_servers, topics)
    images = pattern_images(70, seed=41)  # 60 to send twice, then 10 fresh ones
    try:
        first = raw_records("pattern", images[:60])
        publish(servers.bootstrap_servers, topics.uploads, first)
        assert reader.wait_for_ids({k.decode() for k, _, _ in first}, 120, proc) == set()
        assert all(v["cache"] == "miss" and "monitor.novelty" in v["anomaly"] for v in reader.verdicts)
        wait_until(lambda: any(r.statistic == "novelty_rate" and r.status == "alarm" for r in _reports(servers.bootstrap_servers, drift_topic)), 60, "a report")
        report = next(r for r in _reports(servers.bootstrap_servers, drift_topic) if r.statistic == "novelty_rate")
        assert report.bundle.sha256 == reader.verdicts[0]["bundle"]["sha256"] and report.value > report.threshold
        wait_until(lambda: metric_sum(http_get(port, "/metrics")[1], "aigis_drift_window_images") >= 60, 30, "the window's gauge")
        _, body = http_get(port, "/metrics")
        assert metric_sum(body, "aigis_drift_alarm") >= 1
        assert metric_sum(body, "aigis_drift_window_images") == 60  # every fresh verdict, and room for 140 more
        published = _reports(servers.bootstrap_servers, drift_topic)
        assert metric_sum(body, "aigis_drift_reports_total") == len(published) >= 1
        assert max(r.window.images for r in published) <= 60

        again = raw_records("again", images[:60])  # same bytes: cache hits, counted when they were first scored
        publish(servers.bootstrap_servers, topics.uploads, again)
        assert reader.wait_for_ids({k.decode() for k, _, _ in again}, 120, proc) == set()
        assert {v["cache"] for v in reader.verdicts if v["upload_id"].startswith("again-")} == {"hit"}
        # The deliver stage feeds the monitors after producing the verdicts; 10 fresh images after the hits tell when
        # the hits' batches have been through it (same thread, in order): the window is then 70, or 130 had they counted.
        tail = raw_records("tail", images[60:])
        publish(servers.bootstrap_servers, topics.uploads, tail)
        assert reader.wait_for_ids({k.decode() for k, _, _ in tail}, 120, proc) == set()
        assert {v["cache"] for v in reader.verdicts if v["upload_id"].startswith("tail-")} == {"miss"}
        wait_until(lambda: metric_sum(http_get(port, "/metrics")[1], "aigis_drift_window_images") >= 70, 30, "the tail in the window")
        _, body = http_get(port, "/metrics")
        assert metric_sum(body, "aigis_drift_window_images") == 70
        # no judgement ran on a hit: every report since came from a window of fresh verdicts only (65 or 70 of them)
        published = _reports(servers.bootstrap_servers, drift_topic)
        assert metric_sum(body, "aigis_drift_reports_total") == len(published)
        assert max(r.window.images for r in published) <= 70
    finally:
        stop(proc)
        reader.close()
