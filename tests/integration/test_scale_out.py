"""Scale-out: three workers in one group on a six-partition topic, one SIGKILLed mid-stream.

Every upload id still gets a verdict (the dead worker's partitions move to the
survivors, which resume from its last commit); the duplicates that replay costs
are counted and printed. Each worker exports its consumer lag, and the test
reads it from /metrics while the backlog is being worked off.
"""

from __future__ import annotations

import signal
from pathlib import Path

from devkit.harness import (
    OutputReader,
    Topics,
    committed_offsets,
    http_get,
    log_events,
    metric,
    publish,
    raw_records,
    start_worker,
    stop,
    wait_until,
    worker_env,
)
from devkit.images import unique_jpegs
from devkit.servers import free_port

N = 240


def test_three_workers_one_killed_every_upload_gets_a_verdict(servers, tiny_bundle: Path, tmp_path: Path) -> None:
    topics = Topics.fresh(servers.bootstrap_servers, partitions=6)
    ports = [free_port() for _ in range(3)]
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    base = worker_env(servers, topics, tiny_bundle, AIGIS_MAX_BATCH="4", AIGIS_MAX_WAIT_MS="5", AIGIS_REDIS_URL="", AIGIS_TEST_INFER_DELAY_MS="150")
    procs = [start_worker({**base, "AIGIS_METRICS_PORT": str(port)}, log) for port, log in zip(ports, logs, strict=True)]
    reader = OutputReader(servers.bootstrap_servers, topics)
    try:

        def owned(log: Path) -> int:
            latest = [e for e in log_events(log) if e.get("event") in ("partitions_assigned", "partitions_revoked")]
            return len(latest[-1]["partitions"]) if latest and latest[-1]["event"] == "partitions_assigned" else 0

        wait_until(lambda: [owned(log) for log in logs] == [2, 2, 2], 90, "the group to settle with two partitions per worker")
        records = raw_records("scale", unique_jpegs(N, seed=10))
        ends = publish(servers.bootstrap_servers, topics.uploads, records)
        expected = {k.decode() for k, _, _ in records}

        lag_seen = 0.0

        def sample_lag(live: list[int]) -> None:
            # Lag is exported once a second: sampled until the stream is done, not only its first quarter (which can
            # pass inside one export interval).
            nonlocal lag_seen
            lag_seen = max(lag_seen, *(metric(http_get(p, "/metrics")[1], "aigis_consumer_lag_sum") or 0 for p in live))

        def progress() -> bool:
            sample_lag(ports)
            reader.poll(100)
            return len(reader.ids()) >= N // 4

        wait_until(progress, 90, "a quarter of the stream")
        victim = procs[1]
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
        at_kill = len(reader.ids())

        def rest() -> bool:
            sample_lag([ports[0], ports[2]])
            reader.poll(100)
            return expected <= set(reader.ids())

        wait_until(rest, 120, "an outcome for every upload")
        missing = reader.wait_for_ids(expected, 1)
        assert missing == set(), f"{len(missing)} uploads lost, e.g. {sorted(missing)[:5]}"
        for p in (procs[0], procs[2]):
            p.send_signal(signal.SIGTERM)
            assert p.wait(40) == 0
        reader.poll(1000)
    finally:
        for p in procs:
            stop(p)
        reader.close()

    seen = [d["upload_id"] for d in reader.verdicts]
    duplicates = len(seen) - len(set(seen))
    per_worker = [sum(1 for e in log_events(log) if e.get("event") == "partitions_assigned" and e["partitions"]) for log in logs]
    print(
        f"\nscale-out: {N} uploads, 3 workers x 6 partitions, worker 1 SIGKILLed after {at_kill} outcomes; "
        f"{len(seen)} verdicts, {duplicates} duplicates; assignments per worker {per_worker}; peak lag seen {lag_seen:.0f}"
    )
    assert set(seen) == expected and not reader.dead
    assert lag_seen > 0, "consumer lag was never exported while a backlog existed"
    assert committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads) == ends
