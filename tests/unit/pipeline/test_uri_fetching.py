"""The pipeline fetches URIs on the fetcher's own threads, never on the decode pool, under one deadline per batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devkit.images import unique_jpegs
from schemas import ErrorCode, UploadEvent
from worker.config import WorkerConfig
from worker.ingest.fetcher import fetcher_from_config
from worker.ingest.wire import InputRecord
from worker.model.bundle import LoadedBundle
from worker.model.rollout import Models
from worker.pipeline.batch import BatchProcessor
from worker.pipeline.items import PipelineSettings

IMAGES = unique_jpegs(12, seed=5)


class _SlowImages(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer.lock:
                    outer.active += 1
                    outer.peak = max(outer.peak, outer.active)
                try:
                    time.sleep(outer.delay_s if "slow" in self.path else 0.05)
                    body = IMAGES[int(self.path.rsplit("/", 1)[1]) % len(IMAGES)]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with outer.lock:
                        outer.active -= 1

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def image_server() -> Iterator[_SlowImages]:
    server = _SlowImages(delay_s=30.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _uri_record(i: int, uri: str) -> InputRecord:
    return InputRecord("t", 0, i, None, None, UploadEvent(upload_id=f"u-{i}", image_uri=uri).model_dump_json().encode())


def test_uri_fetches_run_concurrently_beyond_the_decode_threads(tiny_bundle: Path, image_server: _SlowImages) -> None:
    port = image_server.server_address[1]
    cfg = WorkerConfig(bundle=tiny_bundle, redis_url="", fetch_allowed_hosts=f"127.0.0.1:{port}", decode_threads=1, fetch_concurrency=16)
    records = [_uri_record(i, f"http://127.0.0.1:{port}/img/{i}") for i in range(12)]
    with ThreadPoolExecutor(1) as pool, fetcher_from_config(cfg) as fetcher:
        outcomes = BatchProcessor(PipelineSettings.from_config(cfg), Models(LoadedBundle(tiny_bundle)), None, pool, fetcher=fetcher).process(records)
    assert all(o.verdict is not None for o in outcomes), [o.dead_letter for o in outcomes if o.dead_letter]
    assert image_server.peak > cfg.decode_threads, f"fetches ran {image_server.peak} at a time: they are queued behind the decode pool"


def test_one_slow_host_fails_only_its_uploads_and_only_at_the_batch_deadline(tiny_bundle: Path, image_server: _SlowImages) -> None:
    port = image_server.server_address[1]
    # A deadline the fast host (50 ms) meets with room on a loaded 2-core CI machine; the slow one (30 s) never does.
    cfg = WorkerConfig(bundle=tiny_bundle, redis_url="", fetch_allowed_hosts=f"127.0.0.1:{port}", fetch_timeout_s=3.0)
    records = [_uri_record(i, f"http://127.0.0.1:{port}/{'slow' if i % 4 == 0 else 'img'}/{i}") for i in range(8)]
    with ThreadPoolExecutor(2) as pool, fetcher_from_config(cfg) as fetcher:
        proc = BatchProcessor(PipelineSettings.from_config(cfg), Models(LoadedBundle(tiny_bundle)), None, pool, fetcher=fetcher)
        outcomes = proc.process(records)
    slow = [o for i, o in enumerate(outcomes) if i % 4 == 0]
    fast = [o for i, o in enumerate(outcomes) if i % 4 != 0]
    assert all(o.dead_letter is not None and o.dead_letter.error_code is ErrorCode.fetch_failed for o in slow)
    assert all(o.verdict is not None for o in fast), [o.dead_letter for o in fast if o.dead_letter]
    assert proc.metrics.stage_seconds.count("fetch") == 1, "one fetch round per batch"
