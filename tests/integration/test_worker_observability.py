"""/metrics, /healthz, /readyz, JSON logs, and backpressure, on a real worker process.

The second half wedges the inference stage (the documented test hook
``AIGIS_TEST_STALL_KEY``, standing in for a hung ONNX Runtime call) and shows
what an operator would see: the pipeline fills up to ``--max-in-flight`` and
stops there, every partition is paused, lag grows, the poll loop keeps the
consumer in its group well past ``max.poll.interval.ms`` (no rebalance, still
ready), and /healthz turns unhealthy so the orchestrator restarts the pod.
SIGTERM then gives up on the wedged batch after the grace period (exit 1).
"""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path

from PIL import Image

from devkit.harness import OutputReader, Topics, http_get, log_events, metric, metric_sum, publish, raw_records, start_worker, stop, wait_until, worker_env
from devkit.images import unique_jpegs
from devkit.servers import free_port
from worker.model.bundle import read_manifest


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, "PNG")
    return buf.getvalue()


def test_metrics_health_readiness_logs_and_backpressure(servers, tiny_bundle: Path, tmp_path: Path) -> None:
    topics = Topics.fresh(servers.bootstrap_servers, partitions=3)
    port = free_port()
    max_in_flight = 8
    env = worker_env(
        servers,
        topics,
        tiny_bundle,
        AIGIS_METRICS_PORT=str(port),
        AIGIS_MAX_BATCH="4",
        AIGIS_MAX_IN_FLIGHT=str(max_in_flight),
        AIGIS_LIVENESS_TIMEOUT_S="3",
        AIGIS_MAX_POLL_INTERVAL_MS="3000",
        AIGIS_TEST_STALL_KEY="stall-me",
        AIGIS_SHUTDOWN_GRACE_S="2",
    )
    log = tmp_path / "worker.log"
    reader = OutputReader(servers.bootstrap_servers, topics)
    proc = start_worker(env, log)
    try:
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 60, "/readyz to turn ready")
        assert http_get(port, "/healthz")[0] == 200

        good = raw_records("obs", unique_jpegs(30, seed=4))
        bad = [(b"broken-1", b"\xff\xd8\xff\xe0 not really a jpeg", []), (b"broken-2", b"GIF89a truncated", [])]
        dup = [(b"obs-dup", good[0][1], [])]
        publish(servers.bootstrap_servers, topics.uploads, good + bad)
        assert reader.wait_for_ids({k.decode() for k, _, _ in good + bad}, 90, proc) == set()
        publish(servers.bootstrap_servers, topics.uploads, dup)
        assert reader.wait_for_ids({"obs-dup"}, 60, proc) == set()

        def settled() -> bool:
            body = http_get(port, "/metrics")[1]
            lags = {metric(body, "aigis_consumer_lag", topic=topics.uploads, partition=str(p)) for p in range(3)}
            return metric_sum(body, "aigis_verdicts_total") == 31 and lags == {0}

        wait_until(settled, 30, "metrics to count every outcome and lag to reach 0")
        status, body = http_get(port, "/metrics")
        assert status == 200
        sha = read_manifest(tiny_bundle)[1]
        assert metric(body, "aigis_messages_in_total", topic=topics.uploads) == 33
        assert metric_sum(body, "aigis_verdicts_total") == 31
        assert (
            metric(body, "aigis_verdicts_total", label="uncertain", cache="hit")
            or metric(body, "aigis_verdicts_total", label="real", cache="hit")
            or (metric(body, "aigis_verdicts_total", label="ai_generated", cache="hit"))
        )
        assert metric(body, "aigis_dead_letters_total", code="undecodable") == 2
        assert metric(body, "aigis_batch_size_count") >= 9  # 33 records, at most 4 per batch
        for stage in ("prepare", "decode", "inference", "cache_read", "cache_write", "deliver", "commit"):
            assert metric(body, "aigis_stage_seconds_count", stage=stage), stage
        assert metric(body, "aigis_cache_lookups_total", result="hit") == 1
        assert 0 < metric(body, "aigis_cache_hit_ratio") < 0.1
        assert metric(body, "aigis_bundle_info", role="primary", name="test-tiny", version="0.1.0", sha256=sha, weights="random") == 1
        assert {metric(body, "aigis_consumer_lag", topic=topics.uploads, partition=str(p)) for p in range(3)} == {0}
        assert metric(body, "aigis_partitions_assigned") == 3
        assert "# TYPE aigis_stage_seconds histogram" in body and 'aigis_batch_size_bucket{le="+Inf"}' in body

        # JSON logs carry the upload id, partition and offset of what they talk about.
        dl = [e for e in log_events(log) if e.get("event") == "dead_letter"]
        assert {e["upload_id"] for e in dl} == {"broken-1", "broken-2"}
        assert all(isinstance(e["partition"], int) and isinstance(e["offset"], int) for e in dl)

        # --- wedge the inference stage, then keep feeding ---
        revoked_before = metric(body, "aigis_rebalances_total", event="revoked") or 0
        stall = [(b"stall-me", _png((200, 10, 10)), [])]
        publish(servers.bootstrap_servers, topics.uploads, stall + raw_records("after", unique_jpegs(40, seed=5)))
        peak = 0.0

        def backed_up() -> bool:
            nonlocal peak
            b = http_get(port, "/metrics")[1]
            peak = max(peak, metric(b, "aigis_in_flight_records") or 0)
            return metric(b, "aigis_partitions_paused") == 3 and (metric(b, "aigis_consumer_lag_sum") or 0) > 0

        wait_until(backed_up, 30, "every partition paused with lag building up")
        wait_until(lambda: http_get(port, "/healthz")[0] == 503, 20, "/healthz to report the wedged stage")
        problems = json.loads(http_get(port, "/healthz")[1])["problems"]
        assert any("stage infer" in p for p in problems), problems
        # Stuck for longer than max.poll.interval.ms, yet the poll loop kept the consumer in its group.
        time.sleep(3.5)
        status, body = http_get(port, "/metrics")
        peak = max(peak, metric(body, "aigis_in_flight_records") or 0)
        assert peak <= max_in_flight, f"{peak} records in flight, limit {max_in_flight}"
        assert (metric(body, "aigis_rebalances_total", event="revoked") or 0) == revoked_before
        assert http_get(port, "/readyz")[0] == 200
        assert metric(body, "aigis_loop_progress_age_seconds") < 3

        # SIGTERM cannot drain a wedged stage: the worker gives up after the grace period, commits what
        # was done, leaves the group, and says so with exit code 1.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 1
        assert any(e.get("event") == "grace_expired" for e in log_events(log))
    finally:
        stop(proc)
        reader.close()
