"""Delivery semantics beyond the crash case: graceful drain on SIGTERM, and rebalances mid-stream.

Both are judged by duplicates. At-least-once allows them after a crash, but a
worker that drains properly (SIGTERM) or hands partitions over properly
(rebalance: commit what is done, drop what is in flight, never emit a stale
record) produces none: every outcome it emitted is committed, and nothing it
committed lacks an outcome.
"""

from __future__ import annotations

import signal
from pathlib import Path

from devkit.harness import MAX_IMAGE_BYTES, OutputReader, Topics, committed_offsets, log_events, raw_records, start_worker, stop, wait_until, worker_env
from devkit.images import unique_jpegs
from worker.runtime.clients import make_producer


def publish_located(bootstrap: str, topic: str, records: list) -> dict[str, tuple[int, int]]:
    """Produce and return upload id -> (partition, offset) from the acknowledgements."""
    producer = make_producer(bootstrap, MAX_IMAGE_BYTES, client_id="test-producer")
    futures = [(k.decode(), producer.send(topic, key=k, value=v, headers=h)) for k, v, h in records]
    producer.flush()
    out = {}
    for uid, f in futures:
        meta = f.get(timeout=30)
        out[uid] = (meta.partition, meta.offset)
    producer.close()
    return out


def read_everything(reader: OutputReader) -> None:
    """Poll the output topics until two polls in a row bring nothing new."""
    quiet = 0
    while quiet < 2:
        before = len(reader.verdicts) + len(reader.dead)
        reader.poll(500)
        quiet = quiet + 1 if len(reader.verdicts) + len(reader.dead) == before else 0


def test_sigterm_drains_in_flight_work_commits_it_and_exits(servers, tiny_bundle: Path, tmp_path: Path) -> None:
    topics = Topics.fresh(servers.bootstrap_servers, partitions=3)
    records = raw_records("drain", unique_jpegs(150, seed=2))
    where = publish_located(servers.bootstrap_servers, topics.uploads, records)
    env = worker_env(
        servers,
        topics,
        tiny_bundle,
        AIGIS_MAX_BATCH="4",
        AIGIS_MAX_WAIT_MS="5",
        AIGIS_REDIS_URL="",
        AIGIS_SHUTDOWN_GRACE_S="20",
        AIGIS_TEST_INFER_DELAY_MS="30",
    )
    log = tmp_path / "worker.log"
    reader = OutputReader(servers.bootstrap_servers, topics)
    proc = start_worker(env, log)
    try:

        def flowing() -> bool:
            reader.poll(200)
            return len(reader.ids()) >= 16

        wait_until(flowing, 90, "verdicts to flow")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0, log.read_text()[-3000:]
        read_everything(reader)
        emitted = reader.ids()
        assert len(emitted) < len(records), "the stream finished before SIGTERM; nothing was in flight"

        committed = committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads)
        covered = {uid for uid, (p, off) in where.items() if off < committed.get(p, 0)}
        # Everything emitted was committed (no duplicates on restart) and everything committed was emitted (no gaps).
        assert emitted == covered, f"emitted-not-committed {sorted(emitted - covered)[:5]}, committed-not-emitted {sorted(covered - emitted)[:5]}"

        second = start_worker({**env, "AIGIS_EXIT_WHEN_IDLE_S": "3"}, log)
        assert reader.wait_for_ids(set(where), 120, second) == set(), log.read_text()[-3000:]
        assert second.wait(60) == 0
        reader.poll(1000)
    finally:
        stop(proc)
        reader.close()
    seen = [d["upload_id"] for d in reader.verdicts]
    print(f"\nsigterm drain: {len(emitted)} outcomes before the drain, {len(seen) - len(set(seen))} duplicates after the restart")
    assert sorted(seen) == sorted(where)


def test_workers_joining_and_leaving_mid_stream_emit_no_stale_records(servers, tiny_bundle: Path, tmp_path: Path) -> None:
    """Rebalances mid-stream (B joins, C joins, A leaves): every upload exactly once, no duplicates."""
    topics = Topics.fresh(servers.bootstrap_servers, partitions=6)
    records = raw_records("rebal", unique_jpegs(300, seed=3))
    where = publish_located(servers.bootstrap_servers, topics.uploads, records)
    # A slower model (60 ms more per batch) keeps every worker's pipeline full when the rebalances hit.
    env = worker_env(servers, topics, tiny_bundle, AIGIS_MAX_BATCH="4", AIGIS_MAX_WAIT_MS="5", AIGIS_REDIS_URL="", AIGIS_TEST_INFER_DELAY_MS="60")
    reader = OutputReader(servers.bootstrap_servers, topics)
    logs = [tmp_path / f"worker-{n}.log" for n in "abc"]
    procs = [start_worker(env, logs[0])]

    def outcomes_at_least(n: int):  # type: ignore[no-untyped-def]
        def check() -> bool:
            reader.poll(200)
            return len(reader.ids()) >= n

        return check

    def assigned(log: Path):  # type: ignore[no-untyped-def]
        return lambda: any(e.get("event") == "partitions_assigned" and e["partitions"] for e in log_events(log)) or reader.ids() >= set(where)

    try:
        wait_until(outcomes_at_least(20), 90, "the first verdicts")
        procs.append(start_worker(env, logs[1]))
        wait_until(assigned(logs[1]), 60, "B to get partitions")
        procs.append(start_worker(env, logs[2]))
        wait_until(assigned(logs[2]), 60, "C to get partitions")
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(40) == 0
        missing = reader.wait_for_ids(set(where), 60)
        assert not missing, (
            f"missing {sorted((where[m], m) for m in missing)[:20]}; committed {committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads)}"
        )
        for p in procs[1:]:
            p.send_signal(signal.SIGTERM)
            assert p.wait(40) == 0
        reader.poll(1000)
    finally:
        for p in procs:
            stop(p)
        reader.close()

    seen = [d["upload_id"] for d in reader.verdicts]
    dups = len(seen) - len(set(seen))
    events = [e for log in logs for e in log_events(log) if e.get("event") == "partitions_revoked"]
    dropped = sum(e["in_flight_dropped"] for e in events)
    print(f"\nrebalances: {len(events)} revocations, {dropped} in-flight records dropped, {len(seen)} verdicts for {len(where)} uploads, {dups} duplicates")
    assert dropped > 0, "no revocation found work in flight; the test proved nothing"
    assert set(seen) == set(where)
    assert dups == 0, "a revoked partition's in-flight record was emitted after the revoke, or done work was not committed on revoke"
    assert committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads) == {
        p: max(off for q, off in where.values() if q == p) + 1 for p in {q for q, _ in where.values()}
    }


def test_a_crashing_stage_stops_the_worker_with_exit_2_and_loses_nothing(servers, tiny_bundle: Path, tmp_path: Path) -> None:
    """A bug in a pipeline stage (injected: AIGIS_TEST_CRASH_KEY) is not swallowed: exit code 2, nothing past it committed.

    The orchestrator restarts the worker; the replacement scores everything that
    was not committed, the crashing record included, so every upload still gets
    a verdict.
    """
    topics = Topics.fresh(servers.bootstrap_servers, partitions=2)
    records = raw_records("crash", unique_jpegs(40, seed=5))
    where = publish_located(servers.bootstrap_servers, topics.uploads, records)
    env = worker_env(servers, topics, tiny_bundle, AIGIS_MAX_BATCH="4", AIGIS_MAX_WAIT_MS="5", AIGIS_REDIS_URL="")
    first = start_worker({**env, "AIGIS_TEST_CRASH_KEY": "crash-25"}, tmp_path / "worker-1.log")
    second = None
    reader = OutputReader(servers.bootstrap_servers, topics)
    try:
        assert first.wait(90) == 2, "a crashed stage must end the process with exit code 2"
        events = log_events(tmp_path / "worker-1.log")
        assert any(e.get("event") == "stage_crashed" and e.get("stage") == "infer" for e in events), [e.get("event") for e in events][-10:]
        assert next(e for e in events if e.get("event") == "worker_stopped")["exit_code"] == 2
        crash_partition, crash_offset = where["crash-25"]
        committed = committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads)
        assert committed.get(crash_partition, 0) <= crash_offset, "the record whose batch crashed was committed without an outcome"

        second = start_worker(env, tmp_path / "worker-2.log")
        missing = reader.wait_for_ids(set(where), 90, second)
        assert missing == set(), f"{len(missing)} uploads lost across the crash, e.g. {sorted(missing)[:5]}"
        assert stop(second) == 0
        read_everything(reader)
    finally:
        for p in (first, second):
            if p is not None:
                stop(p)
        reader.close()
    seen = [d["upload_id"] for d in reader.verdicts]
    print(f"\nstage crash: exit 2, committed before the crash {committed}; {len(seen)} verdicts for {len(where)} uploads after the restart")
    assert set(seen) == set(where) and not reader.dead
