"""Benchmark ``uri``: events that point at object storage vs the same images inline.

Most platforms put uploads in object storage and publish a reference. The
worker fetches those on its own threads (:class:`worker.ingest.fetcher.Fetcher`),
so a slow store costs latency, not throughput, as long as enough fetches are in
flight. Here a local HTTP server stands in for the store and answers every GET
after a fixed delay (50 ms by default, about an S3 GET's first byte from inside
a region); the worker scores the same images once inline (raw records) and once
by URI (JSON events with ``image_uri``). Target: URI throughput >= 0.9 x inline.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.artifacts import ensure_bundle, photo_jpegs
from bench.options import Options
from bench.results import BenchResult
from bench.streaming import _arch_seed, run_worker_once, warmup_items
from devkit.harness import Topics
from devkit.servers import dev_servers
from schemas import UploadEvent

#: Delay the stand-in object store adds before answering each GET.
FETCH_DELAY_S = 0.05


class _DelayedStore(ThreadingHTTPServer):
    """GET /<name> answers the stored bytes after ``delay_s``; counts requests and the most in flight at once."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, objects: dict[str, bytes], delay_s: float) -> None:
        self.objects = objects
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.requests = 0
        self.active = 0
        self.peak = 0
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as object stores answer

            def do_GET(self) -> None:
                with store.lock:
                    store.requests += 1
                    store.active += 1
                    store.peak = max(store.peak, store.active)
                try:
                    time.sleep(store.delay_s)
                    body = store.objects.get(self.path.lstrip("/"))
                    if body is None:
                        self.send_error(404)
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with store.lock:
                        store.active -= 1

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@contextmanager
def delayed_store(objects: dict[str, bytes], delay_s: float) -> Iterator[_DelayedStore]:
    server = _DelayedStore(objects, delay_s)
    thread = threading.Thread(target=server.serve_forever, name="bench-store", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run_uri(opts: Options) -> BenchResult:
    r = BenchResult("uri", f"URI ingest: events that point at a store answering after {FETCH_DELAY_S * 1000:.0f} ms vs the same images inline", opts.quick)
    arch = opts.stream_archs[0]
    n = opts.stream_images[arch]
    r.config.update(arch=arch, images=n, fetch_delay_ms=FETCH_DELAY_S * 1000, cache="off", partitions=2)
    r.note("the store is a local HTTP server that sleeps before answering each GET (keep-alive on), standing in for object storage")
    bundle = ensure_bundle(arch)
    images = photo_jpegs(n, seed=_arch_seed(arch) + 11)
    objects = {f"img-{i}.jpg": data for i, data in enumerate(images)}
    with dev_servers() as servers, tempfile.TemporaryDirectory(prefix="aigis-bench-") as tmp, delayed_store(objects, FETCH_DELAY_S) as store:
        port = store.server_address[1]
        inline = [(f"inline-{i}".encode(), data) for i, data in enumerate(images)]
        by_uri = [
            (f"uri-{i}".encode(), UploadEvent(upload_id=f"uri-{i}", image_uri=f"http://127.0.0.1:{port}/img-{i}.jpg").model_dump_json().encode())
            for i in range(n)
        ]
        rates = {}
        for mode, items in (("inline", inline), ("uri", by_uri)):
            print(f"  {arch}: {n} images {mode} ...", flush=True)
            topics = Topics.fresh(servers.bootstrap_servers, 2)
            log = Path(tmp) / f"{mode}.log"
            before = store.requests
            got = run_worker_once(
                r, opts, servers, topics, bundle, items, log, 300 + n * 1.0, warmup_items(arch, mode), fetch_allowed_hosts=f"127.0.0.1:{port}"
            )
            rates[mode] = got["rate"]
            r.add(
                arch=arch,
                mode=mode,
                images=n,
                images_per_s=got["rate"],
                ratio_to_inline=got["rate"] / rates["inline"] if rates.get("inline") else None,
                store_requests=store.requests - before,
                store_peak_in_flight=store.peak if mode == "uri" else None,
            )
            print(f"    {got['rate']:.1f} images/s", flush=True)
    ratio = rates["uri"] / rates["inline"] if rates.get("inline") else None
    r.target("URI events at 50 ms per fetch vs inline", ">= 0.9 x inline throughput", ratio, 0.9, "x")
    return r.finish()
