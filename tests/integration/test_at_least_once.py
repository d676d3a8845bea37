"""At-least-once: a worker killed with SIGKILL mid-stream and restarted loses nothing.

The kill lands while batches are in flight (verdicts already flowing, most of
the stream not yet done). The restarted worker resumes from the committed
offsets; every upload id ends with an outcome, and the only price is
duplicates for work that was done but not yet committed.
"""

from __future__ import annotations

import signal
from pathlib import Path

from devkit.harness import OutputReader, Topics, committed_offsets, publish, raw_records, start_worker, stop, wait_until, worker_env
from devkit.images import unique_jpegs

N = 120


def test_sigkill_mid_stream_then_restart_gives_every_upload_a_verdict(servers, tiny_bundle: Path, tmp_path: Path) -> None:
    topics = Topics.fresh(servers.bootstrap_servers, partitions=3)
    records = raw_records("alo", unique_jpegs(N, seed=1))
    expected = {k.decode() for k, _, _ in records}
    ends = publish(servers.bootstrap_servers, topics.uploads, records)
    # Small batches so the kill finds work in every stage; Redis off so the replay really re-scores.
    # Each batch spends 80 ms more in inference (30 batches: ~2.4 s for the stream), so the kill
    # lands mid-stream however fast the tiny model runs: without it the whole stream could be done
    # before the reader saw its first dozen verdicts.
    env = worker_env(servers, topics, tiny_bundle, AIGIS_MAX_BATCH="4", AIGIS_MAX_WAIT_MS="5", AIGIS_REDIS_URL="", AIGIS_TEST_INFER_DELAY_MS="80")
    log = tmp_path / "worker.log"
    reader = OutputReader(servers.bootstrap_servers, topics)
    first = start_worker(env, log)
    try:

        def some_outcomes() -> bool:
            reader.poll(200)
            return len(reader.ids()) >= 12

        wait_until(some_outcomes, 90, "the first verdicts")
        first.send_signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
        reader.poll(500)
        before_restart = reader.ids()
        assert len(before_restart) < N, "the kill came too late to test anything"

        second = start_worker({**env, "AIGIS_EXIT_WHEN_IDLE_S": "3", "AIGIS_TEST_INFER_DELAY_MS": ""}, log)
        missing = reader.wait_for_ids(expected, 120, second)
        assert missing == set(), f"{len(missing)} uploads lost, e.g. {sorted(missing)[:5]}\n" + log.read_text()[-3000:]
        assert second.wait(60) == 0
        reader.poll(1000)
    finally:
        stop(first)
        reader.close()

    seen = [d["upload_id"] for d in reader.verdicts]
    duplicates = len(seen) - len(set(seen))
    print(f"\nat-least-once: {N} uploads, {len(before_restart)} had verdicts at the kill, {duplicates} duplicate verdicts after the replay")
    assert set(seen) == expected and not reader.dead
    assert committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads) == ends
