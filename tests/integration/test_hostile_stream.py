"""A stream of hostile and odd uploads through the real broker to a real worker process.

Every record gets exactly one outcome (verdict or dead letter), each dead letter
carries the right error code, and afterwards the same worker process is alive
and scores a good image. Records whose upload id cannot be read (no key, a key
that is not UTF-8, an over-long id, unparsable JSON) are matched by the
dead letter's ``source`` offset instead, and must not carry a made-up id.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from devkit import corpus
from devkit.harness import OutputReader, Topics, publish, start_worker, stop, worker_env

MAX_BYTES = 256 * 1024  # the worker's limit in this test: small, so "too large" records stay small
JSON = [("content-type", b"application/json")]


class _ImageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    body = b""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/slow.png":
            time.sleep(3)
        if self.path in ("/ok.png", "/slow.png"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture
def image_server() -> Iterator[int]:
    _ImageHandler.body = corpus.save(corpus.noise_image(48, 40, seed=7), "PNG")
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    server.block_on_close = False  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _event(upload_id: str, **fields: object) -> bytes:
    return json.dumps({"upload_id": upload_id, **fields}).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _corpus(port: int, file_root: Path, outside: Path) -> list[tuple[bytes | None, bytes, list, str, str | None]]:
    """(key, value, headers, expected outcome, expected upload id in the outcome) per record, in offset order.

    Expected outcome is "verdict" or a dead-letter error code.
    """
    good = corpus.save(corpus.noise_image(), "JPEG")
    (file_root / "ok.png").write_bytes(corpus.save(corpus.noise_image(40, 40, seed=3), "PNG"))
    rows: list[tuple[bytes | None, bytes, list, str, str | None]] = []

    def raw(uid: str, data: bytes, expect: str) -> None:
        rows.append((uid.encode(), data, [], expect, uid))

    def ev(uid: str, expect: str, **fields: object) -> None:
        rows.append((None, _event(uid, **fields), JSON, expect, uid))

    # odd but legitimate: verdicts
    raw("ok-jpeg", good, "verdict")
    ev("ok-json-inline", "verdict", image_base64=_b64(corpus.save(corpus.noise_image(seed=2), "PNG")), tenant="t1")
    for fmt in ("GIF", "PNG", "WEBP", "TIFF", "MPO"):
        raw(f"animated-{fmt.lower()}", corpus.animated(fmt), "verdict")
    raw("cmyk-jpeg", corpus.save(Image.new("CMYK", (32, 32), (0, 200, 200, 0)), "JPEG"), "verdict")
    raw("png-16bit-rgb", corpus.png_16bit_rgb(), "verdict")
    raw("tiff-16bit-rgb", corpus.tiff_16bit_rgb(), "verdict")
    raw("palette-transparency", corpus.palette_with_transparency(), "verdict")
    raw("rgba-webp", corpus.save(Image.new("RGBA", (32, 32), (9, 9, 9, 0)), "WEBP", lossless=True), "verdict")
    raw("exif-rotated", corpus.exif_rotated_jpeg(), "verdict")
    raw("bmp", corpus.accepted_files()["BMP"], "verdict")
    ev("uri-http-ok", "verdict", image_uri=f"http://127.0.0.1:{port}/ok.png")
    ev("uri-file-ok", "verdict", image_uri=f"file://{file_root}/ok.png")

    # bombs
    raw("bomb-png-pixels", corpus.png_header_only(50000, 50000), "decompression_bomb")
    raw("bomb-gif-frame", corpus.gif_frame_bomb(), "decompression_bomb")
    raw("bomb-webp-canvas", corpus.webp_canvas_bomb(), "decompression_bomb")
    raw("bomb-jpeg-scans", corpus.jpeg_scan_bomb(side=2000, extra_scans=1000), "decompression_bomb")
    raw("bomb-png-ztxt", corpus.png_ztxt_bomb(), "decompression_bomb")
    # truncated files of every accepted format, formats we refuse, garbage
    for name, data in corpus.accepted_files().items():
        if name in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF"):
            raw(f"truncated-{name.lower()}", data[: len(data) // 2], "undecodable")
    for name, data in corpus.unsupported_files().items():
        raw(f"unsupported-{name.lower()}", data, "unsupported_format")
    raw("text", b"hello, I am text", "undecodable")
    raw("tiny", corpus.save(Image.new("RGB", (4, 4)), "PNG"), "image_too_small")
    # sizes
    raw("too-large-raw", b"\xff\xd8" + b"\x00" * MAX_BYTES, "too_large")
    ev("too-large-base64", "too_large", image_base64=_b64(b"\x00" * (MAX_BYTES + 1)))
    rows.append((b"too-large-json", b'{"upload_id": "too-large-json", "pad": "' + b" " * (2 * MAX_BYTES) + b'"}', JSON, "too_large", "too-large-json"))
    # records and events that are wrong
    rows.append((b"malformed-json", b'{"upload_id": "malformed-json",', JSON, "schema_invalid", "malformed-json"))
    rows.append((None, b"[1, 2, 3]", JSON, "schema_invalid", None))
    rows.append((None, b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", JSON, "schema_invalid", None))
    rows.append((None, good, [], "missing_key", None))
    rows.append((b"", good, [], "missing_key", None))
    rows.append((b"\xff\xfe\xfd", good, [], "schema_invalid", None))
    rows.append((b"k" * 600, good, [], "schema_invalid", None))
    rows.append((b"empty-value", b"", [], "undecodable", "empty-value"))
    ev("newer-schema", "unsupported_schema_version", schema_version=2, image_base64=_b64(good), new_field=True)
    ev("bad-base64", "invalid_base64", image_base64="!!!not base64!!!")
    ev("both-fields", "schema_invalid", image_base64=_b64(good), image_uri=f"http://127.0.0.1:{port}/ok.png")
    ev("neither-field", "schema_invalid")
    # URIs
    ev("uri-disallowed-host", "uri_refused", image_uri=f"http://localhost:{port}/ok.png")
    ev("uri-ftp", "uri_refused", image_uri="ftp://127.0.0.1/ok.png")
    ev("uri-data", "uri_refused", image_uri="data:image/png;base64,iVBORw0KGgo=")
    ev("uri-file-outside", "uri_refused", image_uri=f"file://{outside}")
    ev("uri-file-dotdot", "uri_refused", image_uri=f"file://{file_root}/../{outside.name}")
    ev("uri-404", "fetch_failed", image_uri=f"http://127.0.0.1:{port}/missing.png")
    ev("uri-slow", "fetch_failed", image_uri=f"http://127.0.0.1:{port}/slow.png")
    return rows


def test_hostile_stream_every_record_one_outcome_and_the_worker_survives(servers, tiny_bundle: Path, tmp_path: Path, image_server: int) -> None:
    file_root = tmp_path / "images"
    file_root.mkdir()
    outside = tmp_path / "outside.png"
    outside.write_bytes(corpus.save(corpus.noise_image(), "PNG"))
    rows = _corpus(image_server, file_root, outside)
    topics = Topics.fresh(servers.bootstrap_servers, partitions=1)  # one partition: offset = position in `rows`
    publish(servers.bootstrap_servers, topics.uploads, [(k, v, h) for k, v, h, _, _ in rows])

    env = worker_env(
        servers,
        topics,
        tiny_bundle,
        AIGIS_MAX_BATCH="8",
        AIGIS_MAX_IMAGE_BYTES=str(MAX_BYTES),
        AIGIS_FETCH_ALLOWED_HOSTS=f"127.0.0.1:{image_server}",
        AIGIS_FETCH_FILE_ROOT=str(file_root),
        AIGIS_FETCH_TIMEOUT_S="1",
        AIGIS_REDIS_URL="",  # every image is decoded by this worker, none served from an earlier test's cache
    )
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    reader = OutputReader(servers.bootstrap_servers, topics)
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and len(reader.verdicts) + len(reader.dead) < len(rows) and proc.poll() is None:
            reader.poll()
        assert proc.poll() is None, "worker died on hostile input:\n" + log.read_text()[-3000:]
        n_out = len(reader.verdicts) + len(reader.dead)
        assert n_out >= len(rows), f"only {n_out} of {len(rows)} outcomes\n" + log.read_text()[-3000:]

        # the same process still scores a good image
        publish(servers.bootstrap_servers, topics.uploads, [(b"after-the-storm", corpus.save(corpus.noise_image(seed=11), "JPEG"), [])])
        assert reader.wait_for_ids({"after-the-storm"}, 30, proc) == set(), log.read_text()[-3000:]
        assert proc.poll() is None
        reader.poll(500)
    finally:
        stop(proc)
        reader.close()

    verdict_ids = [d["upload_id"] for d in reader.verdicts]
    by_offset: dict[int, list[dict]] = {}
    for d in reader.dead:
        by_offset.setdefault(d["source"]["offset"], []).append(d)

    expected_verdicts = [uid for _, _, _, expect, uid in rows if expect == "verdict"] + ["after-the-storm"]
    assert sorted(verdict_ids) == sorted(expected_verdicts)  # each exactly once, nothing else scored
    problems = []
    for offset, (_, _, _, expect, uid) in enumerate(rows):
        if expect == "verdict":
            assert offset not in by_offset, f"{uid} was dead-lettered too: {by_offset[offset]}"
            continue
        got = by_offset.get(offset, [])
        if len(got) != 1 or got[0]["error_code"] != expect or got[0]["upload_id"] != uid:
            problems.append((offset, uid, expect, [(d["error_code"], d["upload_id"], d["message"][:120]) for d in got]))
    assert not problems, "\n".join(map(str, problems))
    assert set(by_offset) <= set(range(len(rows)))
    assert all(d["source"]["topic"] == topics.uploads for ds in by_offset.values() for d in ds)
    # a payload over the image limit is not copied into its dead letter: that copy could never be produced
    big = next(d for ds in by_offset.values() for d in ds if d["upload_id"] == "too-large-json")
    assert big["payload_base64"] is None and big["payload_size"] > MAX_BYTES
    small = next(d for ds in by_offset.values() for d in ds if d["upload_id"] == "text")
    assert base64.b64decode(small["payload_base64"]) == b"hello, I am text"
