"""Hostile provenance metadata through the real broker to a real worker process.

Every file of ``devkit.corpus.provenance_hostile_files()`` (zTXt/iTXt bombs, 20,000 PNG chunks and 10,000 JPEG
segments, billion laughs, XXE, 50,000-deep and 100,000-wide and 3 MiB XMP, 2 GiB extended-XMP claims, EXIF
loops, malformed and fuzzed JUMBF/C2PA stores) is a decodable image, so each must end as a *verdict* whose
attacked signal is ``unreadable``, never as a dead letter; good uploads between them are scored as usual, a
trusted C2PA manifest still decides its label, the partition's committed offset reaches the end and the worker
stays up.
"""

from __future__ import annotations

import json
from pathlib import Path

from devkit import corpus
from devkit import provenance_images as pi
from devkit.c2pa_signing import make_ca, make_signer, sign_image
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


def test_hostile_provenance_gets_verdicts_with_the_signal_unreadable_and_the_partition_moves_on(servers, tiny_bundle: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hostile = corpus.provenance_hostile_files()
    targets = corpus.provenance_hostile_targets()
    ca = make_ca()
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(ca.cert_pem)
    signed = sign_image(pi.encode(pi.photo(96, 64), "JPEG"), "image/jpeg", make_signer(ca), "trainedAlgorithmicMedia")
    good = raw_records("good", unique_jpegs(3, seed=31))
    items = [good[0], *raw_records("hostile", list(hostile.values())), good[1], (b"signed", signed, [("content-type", b"image/jpeg")]), good[2]]
    names = {f"hostile-{i}": name for i, name in enumerate(hostile)}
    topics = Topics.fresh(servers.bootstrap_servers, partitions=1)
    ends = publish(servers.bootstrap_servers, topics.uploads, items)
    port = free_port()
    env = worker_env(
        servers,
        topics,
        tiny_bundle,
        AIGIS_MAX_BATCH="4",
        AIGIS_MAX_WAIT_MS="5",
        AIGIS_PROVENANCE_POLICY="decide",
        AIGIS_PROVENANCE_TRUST_ANCHORS=str(anchors),
        AIGIS_REDIS_URL="",
        AIGIS_METRICS_PORT=str(port),  # every record read and scored here, none served from another test's cache
    )
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    reader = OutputReader(servers.bootstrap_servers, topics)
    try:
        wait_until(lambda: (reader.poll(), len(reader.verdicts) + len(reader.dead) >= len(items))[1], 180, "an outcome per record")
        wait_until(lambda: committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads).get(0) == ends[0], 60, "the commit to reach the end")
        assert proc.poll() is None, "hostile metadata must not stop the worker"
        assert reader.dead == [], [(d["upload_id"], d["error_code"], d["message"][:120]) for d in reader.dead]
        verdicts = {v["upload_id"]: v for v in reader.verdicts}
        assert set(verdicts) == {*names, "good-0", "good-1", "good-2", "signed"}
        for uid, name in names.items():
            v = verdicts[uid]
            signals = {s["kind"]: s for s in v["provenance"]["signals"]}
            assert set(signals) == {"c2pa", "iptc_digital_source_type", "generator_metadata", "watermark"}, name
            attacked = signals[targets[name]]
            assert attacked["status"] == "unreadable" and attacked["detail"], (name, attacked)
            assert v["decided_by"] == "model" and v["label"] == v["model_label"], name  # unreadable evidence decides nothing
        assert verdicts["signed"]["decided_by"] == "provenance" and verdicts["signed"]["label"] == "ai_generated"
        assert verdicts["signed"]["provenance"]["decisive"] == ["c2pa"]
        assert all(verdicts[f"good-{i}"]["provenance"]["policy"] == "decide" for i in range(3))
        assert all(len(json.dumps(v)) < 16 * 1024 for v in reader.verdicts), "no verdict carries what the hostile files hold"
        decided = [e for e in log_events(log) if e.get("event") == "provenance_decided"]
        assert [e["upload_id"] for e in decided] == ["signed"] and decided[0]["strength"] == "verified"
        body = http_get(port, "/metrics")[1]
        assert metric(body, "aigis_label_decisions_total", decided_by="provenance") == 1
        assert metric(body, "aigis_label_decisions_total", decided_by="model") == len(items) - 1
        unreadable = sum(metric(body, "aigis_provenance_signals_total", kind=k, status="unreadable") or 0 for k in set(targets.values()))
        assert unreadable >= len(hostile)
    finally:
        stop(proc)
        reader.close()
