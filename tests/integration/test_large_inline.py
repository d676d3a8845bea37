"""Inline images up to the configured size limit travel producer -> broker -> worker -> verdict."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from devkit.harness import MAX_IMAGE_BYTES, OutputReader, Topics, publish, start_worker, stop, worker_env


def _noise_png(target_bytes: int) -> bytes:
    """Incompressible PNG just under ``target_bytes``."""
    side = int((target_bytes / 3) ** 0.5)
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def test_nine_megabyte_images_inline_raw_and_base64_get_verdicts(servers, tiny_bundle: Path, tmp_path: Path) -> None:
    big = _noise_png(int(MAX_IMAGE_BYTES * 0.93))
    assert 0.85 * MAX_IMAGE_BYTES < len(big) <= MAX_IMAGE_BYTES
    too_big = big + b"\0" * (MAX_IMAGE_BYTES - len(big) + 1)  # one byte over the limit
    event = {"upload_id": "big-json", "image_base64": base64.b64encode(big).decode()}
    topics = Topics.fresh(servers.bootstrap_servers, partitions=1)
    publish(
        servers.bootstrap_servers,
        topics.uploads,
        [
            (b"big-raw", big, []),
            (None, json.dumps(event).encode(), [("content-type", b"application/json")]),
            (b"too-big", too_big, []),
        ],
    )
    proc = start_worker(worker_env(servers, topics, tiny_bundle), tmp_path / "worker.log")
    reader = OutputReader(servers.bootstrap_servers, topics)
    try:
        missing = reader.wait_for_ids({"big-raw", "big-json", "too-big"}, 120, proc)
        assert not missing, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        stop(proc)
        reader.close()
    verdicts = {d["upload_id"]: d for d in reader.verdicts}
    assert set(verdicts) == {"big-raw", "big-json"}
    assert verdicts["big-raw"]["content_sha256"] == verdicts["big-json"]["content_sha256"]
    (dead,) = reader.dead
    assert dead["upload_id"] == "too-big" and dead["error_code"] == "too_large"
    assert dead["payload_size"] == len(too_big)
