"""Redis down, Redis slow, Redis back: inference goes on without the cache, and the cache returns by itself.

Runs against this test's own redis-server (killed, frozen with SIGSTOP,
restarted on the same port) and its own broker, so the shared fixtures are not
disturbed.
"""

from __future__ import annotations

import signal
from pathlib import Path

from devkit.harness import OutputReader, Topics, http_get, metric, metric_sum, publish, raw_records, start_worker, stop, wait_until, worker_env
from devkit.images import unique_jpegs
from devkit.servers import free_port


def test_worker_scores_through_redis_outages_and_the_cache_comes_back(own_servers, tiny_bundle: Path, tmp_path: Path) -> None:
    servers = own_servers
    topics = Topics.fresh(servers.bootstrap_servers, partitions=2)
    port = free_port()
    env = worker_env(
        servers,
        topics,
        tiny_bundle,
        AIGIS_METRICS_PORT=str(port),
        AIGIS_REDIS_TIMEOUT_S="0.3",
        AIGIS_CACHE_BREAKER_FAILURES="2",
        AIGIS_CACHE_BREAKER_RESET_S="1",
        AIGIS_MAX_BATCH="4",
    )
    log = tmp_path / "worker.log"
    reader = OutputReader(servers.bootstrap_servers, topics)
    proc = start_worker(env, log)
    by_id: dict[str, dict] = {}

    def run(records: list) -> None:
        publish(servers.bootstrap_servers, topics.uploads, records)
        missing = reader.wait_for_ids({k.decode() for k, _, _ in records}, 90, proc)
        assert missing == set(), log.read_text()[-3000:]
        by_id.update({d["upload_id"]: d for d in reader.verdicts})

    def scrape() -> str:
        return http_get(port, "/metrics")[1]

    try:
        images = unique_jpegs(40, seed=6)
        run(raw_records("a", images[:10]))
        assert {by_id[f"a-{i}"]["cache"] for i in range(10)} == {"miss"}

        # Redis dies: verdicts keep coming (duplicates of batch a are re-scored, not lost), the breaker opens.
        servers.kill_redis()
        run(raw_records("b", images[10:20]) + [(f"a-again-{i}".encode(), images[i], []) for i in range(5)])
        assert {by_id[f"a-again-{i}"]["cache"] for i in range(5)} == {"miss"}
        assert all(by_id[f"a-again-{i}"]["score"] == by_id[f"a-{i}"]["score"] for i in range(5))
        body = scrape()
        assert metric_sum(body, "aigis_cache_errors_total") >= 2
        assert metric(body, "aigis_cache_lookups_total", result="unavailable") >= 1
        assert metric(body, "aigis_cache_circuit_state") in (1, 2)  # open, or half-open waiting for its probe

        # Redis comes back (empty: no persistence): after a probe the cache works again with no restart.
        servers.start_redis_again()
        probes = iter(unique_jpegs(20, seed=60))

        def closed_after_traffic() -> bool:  # the breaker only probes when there is work to do
            run([(b"probe", next(probes), [])])
            return metric(scrape(), "aigis_cache_circuit_state") == 0

        wait_until(closed_after_traffic, 30, "the breaker to close", interval_s=1.0)
        run(raw_records("c", images[20:30]))
        run([(f"c-dup-{i}".encode(), images[20 + i], []) for i in range(10)])
        assert sum(by_id[f"c-dup-{i}"]["cache"] == "hit" for i in range(10)) == 10

        # Redis hangs (SIGSTOP: connections accepted, nothing answered): every call times out, verdicts still flow.
        redis_proc = next(p for p in servers.processes if p.name == "redis").proc
        assert redis_proc is not None
        errors_before = metric_sum(scrape(), "aigis_cache_errors_total")
        redis_proc.send_signal(signal.SIGSTOP)
        try:
            run(raw_records("d", images[30:40]))
            assert metric_sum(scrape(), "aigis_cache_errors_total") > errors_before
        finally:
            redis_proc.send_signal(signal.SIGCONT)
        assert proc.poll() is None
    finally:
        stop(proc)
        reader.close()
    assert not reader.dead
