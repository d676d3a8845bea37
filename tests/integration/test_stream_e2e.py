"""End to end through the real broker and Redis: every upload accounted for, exactly once per run."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from devkit.harness import OutputReader, Topics, committed_offsets, jpeg_bytes, publish, start_worker, stop, worker_env
from export.photos import load_rgb, photo_paths


def _uploads() -> tuple[list[tuple[bytes | None, bytes, list]], dict[str, str]]:
    """Raw and JSON uploads with duplicates and a corrupt file; returns records and id -> expected kind."""
    photos = [jpeg_bytes(load_rgb(p)) for p in photo_paths(include_grey=False)[:5]]
    records: list[tuple[bytes | None, bytes, list]] = []
    expected: dict[str, str] = {}
    for i, data in enumerate(photos):
        records.append((f"raw-{i}".encode(), data, [("content-type", b"image/jpeg"), ("tenant", b"t1")]))
        expected[f"raw-{i}"] = "verdict"
    # same bytes again under new ids (cache hits), one as a JSON event
    records.append((b"dup-0", photos[0], []))
    expected["dup-0"] = "verdict"
    event = {"upload_id": "json-dup-1", "tenant": "t2", "image_base64": base64.b64encode(photos[1]).decode()}
    records.append((None, json.dumps(event).encode(), [("content-type", b"application/json")]))
    expected["json-dup-1"] = "verdict"
    records.append((b"corrupt-1", photos[2][: len(photos[2]) // 3], []))  # truncated JPEG
    expected["corrupt-1"] = "dead"
    records.append((b"not-an-image", b"hello, I am text", []))
    expected["not-an-image"] = "dead"
    png = Image.new("RGB", (64, 48), (10, 200, 30))
    import io

    buf = io.BytesIO()
    png.save(buf, "PNG")
    records.append((b"made-png", buf.getvalue(), []))
    expected["made-png"] = "verdict"
    return records, expected


def test_every_upload_gets_exactly_one_outcome(servers, tiny_bundle: Path, tmp_path: Path) -> None:
    topics = Topics.fresh(servers.bootstrap_servers, partitions=3)
    records, expected = _uploads()
    # First pass publishes everything except the duplicates, so the duplicates arrive after their originals are cached.
    first = [r for r in records if not (r[0] or b"").startswith(b"dup") and b"json-dup" not in r[1][:200]]
    dups = [r for r in records if r not in first]
    ends = publish(servers.bootstrap_servers, topics.uploads, first)

    env = worker_env(servers, topics, tiny_bundle, AIGIS_MAX_BATCH="4", AIGIS_EXIT_WHEN_IDLE_S="4")
    proc = start_worker(env, tmp_path / "worker.log")
    reader = OutputReader(servers.bootstrap_servers, topics)
    try:
        first_ids = {(k or b"").decode() for k, _, _ in first}
        assert reader.wait_for_ids(first_ids, 90, proc) == set(), (tmp_path / "worker.log").read_text()[-3000:]
        for p, end in publish(servers.bootstrap_servers, topics.uploads, dups).items():
            ends[p] = max(ends.get(p, 0), end)
        assert reader.wait_for_ids(set(expected), 60, proc) == set(), (tmp_path / "worker.log").read_text()[-3000:]
        assert proc.wait(60) == 0
        reader.poll(1000)
    finally:
        stop(proc)
        reader.close()

    # exactly one outcome per upload id, of the expected kind
    seen = [d["upload_id"] for d in reader.verdicts] + [d["upload_id"] for d in reader.dead]
    assert sorted(seen) == sorted(expected)
    kinds = {d["upload_id"]: "verdict" for d in reader.verdicts} | {d["upload_id"]: "dead" for d in reader.dead}
    assert kinds == expected

    by_id = {d["upload_id"]: d for d in reader.verdicts}
    # duplicates are served from the cache with the original's score
    assert by_id["dup-0"]["cache"] == "hit"
    assert by_id["json-dup-1"]["cache"] == "hit"
    assert by_id["dup-0"]["score"] == pytest.approx(by_id["raw-0"]["score"])
    assert by_id["json-dup-1"]["content_sha256"] == by_id["raw-1"]["content_sha256"]
    assert by_id["json-dup-1"]["tenant"] == "t2" and by_id["raw-0"]["tenant"] == "t1"
    assert all(by_id[f"raw-{i}"]["cache"] == "miss" for i in range(5))
    assert all(d["bundle"]["name"] == "test-tiny" and 0 <= d["score"] <= 1 for d in reader.verdicts)

    codes = {d["upload_id"]: d["error_code"] for d in reader.dead}
    assert codes == {"corrupt-1": "undecodable", "not-an-image": "undecodable"}
    dl = next(d for d in reader.dead if d["upload_id"] == "not-an-image")
    assert base64.b64decode(dl["payload_base64"]) == b"hello, I am text"  # nothing lost: the payload rides along

    # committed offsets reached the end of every partition
    time.sleep(0.5)
    assert committed_offsets(servers.bootstrap_servers, topics.group, topics.uploads) == ends
