"""Broker restart: the worker notices (not ready), reconnects by itself and goes on processing.

What this proves: with the broker process gone and back on the same address,
the same worker process (no restart) rejoins its group, its consumer fetches
again, its producer delivers again, and uploads published after the restart
all get verdicts; /readyz reports the outage and the recovery.

What it does not prove: resumption from *committed offsets* across the
restart. The test broker (Tansu, in-memory storage) loses topics and offsets
when it stops, so the test recreates the topics and the worker starts the new
log from the beginning (``auto.offset.reset=earliest``). Resuming from commits
is what a durable broker adds; the commit side of it is covered by the
SIGKILL/SIGTERM tests, which restart the *worker* against a live broker.
"""

from __future__ import annotations

from pathlib import Path

from tests.runtime_support import free_port, http_get, own_servers, raw_records, unique_jpegs, wait_until
from tests.support import MAX_IMAGE_BYTES, OutputReader, Topics, publish, start_worker, stop, worker_env
from worker.devservers import start_broker
from worker.kafka_io import ensure_topics

__all__ = ["own_servers"]


def test_worker_reconnects_after_a_broker_restart_and_keeps_processing(own_servers, tiny_bundle: Path, tmp_path: Path) -> None:
    servers = own_servers
    topics = Topics.fresh(servers.bootstrap_servers, partitions=2)
    port = free_port()
    env = worker_env(servers, topics, tiny_bundle, AIGIS_METRICS_PORT=str(port), AIGIS_MAX_BATCH="4")
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    images = unique_jpegs(30, seed=7)
    try:
        reader = OutputReader(servers.bootstrap_servers, topics)
        before = raw_records("before", images[:15])
        publish(servers.bootstrap_servers, topics.uploads, before)
        assert reader.wait_for_ids({k.decode() for k, _, _ in before}, 90, proc) == set()
        reader.close()
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 30, "ready before the outage")

        broker = next(p for p in servers.processes if p.name == "broker")
        broker.stop()
        wait_until(lambda: http_get(port, "/readyz")[0] == 503, 60, "/readyz to report the broker outage")
        assert http_get(port, "/healthz")[0] == 200, "a broker outage is not a reason to restart the worker"

        broker_port = int(servers.bootstrap_servers.rsplit(":", 1)[1])
        new, _ = start_broker(servers.workdir, broker_port)
        servers.processes[servers.processes.index(broker)] = new
        ensure_topics(servers.bootstrap_servers, [topics.uploads, topics.verdicts, topics.dead], 2, MAX_IMAGE_BYTES)

        after = raw_records("after", images[15:])
        publish(servers.bootstrap_servers, topics.uploads, after)
        reader = OutputReader(servers.bootstrap_servers, topics)
        missing = reader.wait_for_ids({k.decode() for k, _, _ in after}, 120, proc)
        assert missing == set(), f"{len(missing)} uploads without verdict after the restart\n" + log.read_text()[-4000:]
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 60, "ready again after the restart")
        assert proc.poll() is None, "the worker must survive the outage, not crash and rely on a restart"
        reader.close()
    finally:
        stop(proc)
