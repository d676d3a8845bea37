"""No record can stop its partition: poison records through a real worker, and outcomes the producer refuses.

* A real worker process on a one-partition topic gets poison records (JSON ids that are lone UTF-16
  surrogates, a raw record with a 13 MB key) between good ones: each poison record ends as one dead letter,
  every good one as a verdict, the group's committed offset reaches the end and the worker stays up. Before
  this was fixed, the first of them made the deliver stage raise (exit 2, replayed forever) and the second
  made a dead letter too large to produce (retried forever, nothing committed).
* The deliver stage against the real broker, with a real producer whose request size is smaller than an
  outcome (the client refuses the record, as a broker with a smaller ``max.message.bytes`` would): the
  refused outcome is reduced to the minimal dead letter after a bounded number of tries and the batch's
  other outcomes are delivered exactly once; if even the minimal dead letter is refused, the record is
  counted, logged and committed past.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from kafka import KafkaProducer, TopicPartition

from devkit.harness import MAX_IMAGE_BYTES, OutputReader, Topics, committed_offsets, publish, raw_records, start_worker, stop, wait_until, worker_env
from devkit.images import unique_jpegs
from schemas import ErrorCode, UploadEvent
from worker.errors import InputError
from worker.ingest.wire import InputRecord
from worker.ops.health import Liveness
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.outcomes import OutcomeLimits, dead_letter_outcome
from worker.runtime.delivery import Deliverer
from worker.runtime.lifecycle import Lifecycle
from worker.runtime.offsets import OffsetTracker
from worker.runtime.work import Work


def _json(upload_id: str, tenant: str, image: bytes) -> bytes:
    event = UploadEvent.inline("placeholder", image).model_dump(mode="json")
    event.update(upload_id=upload_id, tenant=tenant)
    return json.dumps(event).encode()  # lone surrogates become \ud800 escapes, as a producer in another language may write


def test_poison_records_each_get_one_dead_letter_and_the_partition_moves_on(servers, tiny_bundle: Path, tmp_path: Path) -> None:
    topics = Topics.fresh(servers.bootstrap_servers, partitions=1)
    images = unique_jpegs(6, seed=21)
    good = raw_records("good", images[:3])
    poison = [
        (b"poison-id", _json("\ud800", "tenant-a", images[3]), [("content-type", b"application/json")]),
        (b"poison-tenant", _json("poison-tenant", "\udfff", images[4]), [("content-type", b"application/json")]),
        (b"\xfe" * 13_000_000, images[5], [("content-type", b"image/jpeg")]),  # not UTF-8 and larger than any key we reuse
    ]
    items = [good[0], poison[0], good[1], poison[1], poison[2], good[2]]
    ends = publish(servers.bootstrap_servers, topics.uploads, items)
    env = worker_env(servers, topics, tiny_bundle, AIGIS_MAX_BATCH="2", AIGIS_MAX_WAIT_MS="5")
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    reader = OutputReader(servers.bootstrap_servers, topics)
    try:
        wait_until(lambda: (reader.poll(), len(reader.verdicts) + len(reader.dead) >= len(items))[1], 90, "an outcome per record")
        wait_until(lambda: committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads).get(0) == ends[0], 60, "the commit to reach the end")
        assert proc.poll() is None, "a poison record must not stop the worker"
        assert {v["upload_id"] for v in reader.verdicts} == {"good-0", "good-1", "good-2"}
        assert len(reader.dead) == 3, reader.dead
        codes = sorted(d["error_code"] for d in reader.dead)
        assert codes == [ErrorCode.schema_invalid.value] * 3
        # the record key stands in for an id that is not valid text; a key that is not UTF-8 gives none (never a lossy id)
        assert sorted(str(d["upload_id"]) for d in reader.dead) == ["None", "poison-id", "poison-tenant"]
        assert all(d["tenant"] in (None, "tenant-a") for d in reader.dead)
        assert all(len(json.dumps(d)) < 64 * 1024 for d in reader.dead), "no dead letter carries the 13 MB key"
    finally:
        stop(proc)
        reader.close()


def _deliverer(bootstrap: str, topics: Topics, tracker: OffsetTracker, metrics: WorkerMetrics, max_request_size: int) -> Deliverer:
    return Deliverer(
        connect=lambda: KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", max_request_size=max_request_size),
        verdict_topic=topics.verdicts,
        dead_letter_topic=topics.dead,
        drift_topic=f"drift-{topics.group}",
        tracker=tracker,
        emit_lock=threading.Lock(),
        lifecycle=Lifecycle(5),
        liveness=Liveness(60),
        metrics=metrics,
        max_record_attempts=2,
    )


def _batch(tracker: OffsetTracker, topic: str, values: list[bytes]) -> tuple[list[Work], list]:  # type: ignore[type-arg]
    tp = TopicPartition(topic, 0)
    tracker.assign({tp})
    gen = tracker.added(tp, list(range(len(values))))
    assert gen is not None
    limits = OutcomeLimits(MAX_IMAGE_BYTES, payload_copy_max_bytes=8192)
    works, outcomes = [], []
    for i, value in enumerate(values):
        rec = InputRecord(topic, 0, i, None, f"r-{i}".encode(), value)
        works.append(Work(rec, tp, gen))
        outcomes.append(dead_letter_outcome(rec, InputError(ErrorCode.undecodable, "test"), None, limits))
    return works, outcomes


def test_a_refused_outcome_is_reduced_and_the_rest_delivered_once(servers) -> None:
    topics = Topics.fresh(servers.bootstrap_servers, partitions=1)
    tracker, metrics = OffsetTracker(), WorkerMetrics()
    works, outcomes = _batch(tracker, topics.uploads, [b"a", b"x" * 6000, b"b"])  # the middle one carries an 8 KB payload copy
    assert outcomes[1].size > 2000 > max(outcomes[0].size, outcomes[2].size)
    with _deliverer(servers.bootstrap_servers, topics, tracker, metrics, max_request_size=2000) as deliverer:
        deliverer.deliver(works, outcomes)
    assert tracker.to_commit()[TopicPartition(topics.uploads, 0)].offset == 3, "every offset done"
    assert metrics.outcomes_reduced.value("refused_by_broker") == 1 and metrics.outcomes_dropped.total() == 0
    reader = OutputReader(servers.bootstrap_servers, topics)
    try:
        wait_until(lambda: (reader.poll(), len(reader.dead) >= 3)[1], 30, "three dead letters")
        reader.poll(1000)
        assert sorted(d["upload_id"] or "" for d in reader.dead) == ["", "r-0", "r-2"], "each outcome delivered exactly once"
        minimal = next(d for d in reader.dead if d["upload_id"] is None)
        assert minimal["error_code"] == ErrorCode.outcome_refused.value and minimal["payload_size"] == 6000
    finally:
        reader.close()


def test_an_outcome_refused_even_minimal_is_counted_and_committed_past(servers) -> None:
    topics = Topics.fresh(servers.bootstrap_servers, partitions=1)
    tracker, metrics = OffsetTracker(), WorkerMetrics()
    works, outcomes = _batch(tracker, topics.uploads, [b"x" * 100])
    with _deliverer(servers.bootstrap_servers, topics, tracker, metrics, max_request_size=150) as deliverer:
        deliverer.deliver(works, outcomes)  # returns: bounded tries, not forever
    assert metrics.outcomes_dropped.total() == 1
    assert tracker.to_commit()[TopicPartition(topics.uploads, 0)].offset == 1, "committed past the record"
