"""Broker restart: the worker notices (not ready), reconnects by itself and resumes from its committed offsets.

The broker here keeps its log and the group's committed offsets across the
restart (Tansu on S3 storage, served by moto: ``durable_servers``), as a
production Kafka does. Three sets of uploads:

* ``before``: processed and committed before the broker goes down. Resuming
  from the committed offsets means none of them is scored again: a worker that
  fell back to ``auto.offset.reset=earliest`` (lost offsets) would emit each a
  second time.
* ``mid``: published just before the outage while the model is slowed down,
  so some are in flight when the broker dies. Each still gets a verdict
  (at-least-once: a duplicate is allowed here, a gap is not).
* ``after``: published once the broker is back; all get verdicts.

The same worker process lives through it all; /readyz reports the outage and
the recovery while /healthz stays up. That worker keeps its fetch positions in
memory, so a last step restarts the broker once more with the worker stopped
and starts a fresh worker: it can only know where to start from the offsets
the broker kept, and it must score the ``last`` set and nothing before it.
"""

from __future__ import annotations

from pathlib import Path

from devkit.harness import OutputReader, Topics, committed_offsets, http_get, log_events, publish, raw_records, start_worker, stop, wait_until, worker_env
from devkit.images import unique_jpegs
from devkit.servers import free_port


def test_worker_reconnects_after_a_broker_restart_and_resumes_from_committed_offsets(durable_servers, tiny_bundle: Path, tmp_path: Path) -> None:
    servers = durable_servers
    topics = Topics.fresh(servers.bootstrap_servers, partitions=2)
    port = free_port()
    env = worker_env(servers, topics, tiny_bundle, AIGIS_METRICS_PORT=str(port), AIGIS_MAX_BATCH="4", AIGIS_TEST_INFER_DELAY_MS="150")
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    images = unique_jpegs(50, seed=7)
    sets = {"before": images[:15], "mid": images[15:30], "after": images[30:45], "last": images[45:]}
    records = {name: raw_records(name, imgs) for name, imgs in sets.items()}
    before, mid, after, last = records.values()
    ids = {name: {k.decode() for k, _, _ in recs} for name, recs in records.items()}
    try:
        reader = OutputReader(servers.bootstrap_servers, topics)
        ends = publish(servers.bootstrap_servers, topics.uploads, before)
        assert reader.wait_for_ids(ids["before"], 90, proc) == set()
        wait_until(lambda: committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads) == ends, 30, "the before-set committed")
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 30, "ready before the outage")

        publish(servers.bootstrap_servers, topics.uploads, mid)
        wait_until(lambda: (reader.poll(100), bool(reader.ids() & ids["mid"]))[1], 60, "the first mid-set verdict")
        reader.close()
        servers.stop_broker()
        wait_until(lambda: http_get(port, "/readyz")[0] == 503, 60, "/readyz to report the broker outage")
        assert http_get(port, "/healthz")[0] == 200, "a broker outage is not a reason to restart the worker"

        servers.start_broker_again()  # same port, same storage: topics, records and offsets are still there
        ends = publish(servers.bootstrap_servers, topics.uploads, after)
        reader = OutputReader(servers.bootstrap_servers, topics)
        missing = reader.wait_for_ids(ids["mid"] | ids["after"], 120, proc)
        assert missing == set(), f"{len(missing)} uploads without verdict after the restart\n" + log.read_text()[-4000:]
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 60, "ready again after the restart")
        wait_until(lambda: committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads) == ends, 30, "every upload committed")
        assert proc.poll() is None, "the worker must survive the outage, not crash and rely on a restart"
        reader.close()
        assert stop(proc) == 0

        servers.stop_broker()
        servers.start_broker_again()
        ends = publish(servers.bootstrap_servers, topics.uploads, last)
        proc = start_worker(env, tmp_path / "worker-2.log")
        reader = OutputReader(servers.bootstrap_servers, topics)
        assert reader.wait_for_ids(ids["last"], 90, proc) == set()
        wait_until(lambda: committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads) == ends, 30, "the last set committed")
        reader.poll(1000)
        reader.close()
    finally:
        stop(proc)

    seen = [d["upload_id"] for d in reader.verdicts]
    counts = {name: [seen.count(i) for i in group] for name, group in ids.items()}
    rejoins = sum(1 for e in log_events(log) if e.get("event") == "partitions_assigned" and e["partitions"])
    print(f"\nbroker restart: {len(seen)} verdicts for {len(images)} uploads; mid-set duplicates {sum(counts['mid']) - 15}; assignments seen {rejoins}")
    assert not reader.dead
    assert counts["before"] == [1] * 15, "uploads committed before the outage were scored again: the worker did not resume from committed offsets"
    assert counts["after"] == [1] * 15, "the fresh worker after the second broker restart did not start from the committed offsets"
    assert counts["last"] == [1] * 5
    assert min(counts["mid"]) >= 1
