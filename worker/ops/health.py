"""Liveness, readiness and the one small HTTP port that serves them with /metrics.

Liveness is about *progress*, not about dependencies: the poll loop beats on
every iteration and each pipeline stage says when it started its current
batch. The process is unhealthy when the poll loop has not beaten for
``timeout_s`` or a stage has been on one batch for longer than that (a wedged
inference call, a decode that never returns). A broker or Redis outage does
not make the worker unhealthy (restarting every pod would not bring Kafka
back); it makes it *not ready* instead.

Readiness: the bundle is loaded (the process does not serve before), the
consumer is a stable member of its group, the group coordinator answered a
heartbeat within three heartbeat intervals (so the broker is reachable; group
state alone stays "stable" for a while after the broker vanished), and the
worker is not draining for shutdown.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog

from worker.ops.metrics import CONTENT_TYPE, WorkerMetrics

log = structlog.get_logger(__name__)


class Liveness:
    """Heartbeats of the poll loop and busy markers of the pipeline stages."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._loop_beat = time.monotonic()
        self._busy: dict[str, float] = {}

    def beat(self) -> None:
        self._loop_beat = time.monotonic()

    def busy(self, stage: str) -> None:
        with self._lock:
            self._busy[stage] = time.monotonic()

    def idle(self, stage: str) -> None:
        with self._lock:
            self._busy.pop(stage, None)

    def loop_age(self) -> float:
        return time.monotonic() - self._loop_beat

    def problems(self) -> list[str]:
        now = time.monotonic()
        out = []
        if now - self._loop_beat > self.timeout_s:
            out.append(f"poll loop made no progress for {now - self._loop_beat:.1f}s")
        with self._lock:
            for stage, since in self._busy.items():
                if now - since > self.timeout_s:
                    out.append(f"stage {stage} has been on one batch for {now - since:.1f}s")
        return out


class HealthServer:
    """/metrics, /healthz, /readyz on one port, served from a daemon thread."""

    def __init__(
        self,
        port: int,
        metrics: WorkerMetrics,
        liveness: Callable[[], list[str]],
        readiness: Callable[[], list[str]],
        before_scrape: Callable[[], None] | None = None,
        host: str = "0.0.0.0",
    ) -> None:
        self.metrics = metrics
        self.liveness = liveness
        self.readiness = readiness
        self.before_scrape = before_scrape
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    if outer.before_scrape is not None:
                        outer.before_scrape()
                    self._send(200, outer.metrics.render().encode(), CONTENT_TYPE)
                elif path in ("/healthz", "/livez"):
                    self._status(outer.liveness())
                elif path == "/readyz":
                    self._status(outer.readiness())
                else:
                    self._send(404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain")

            def _status(self, problems: list[str]) -> None:
                body = json.dumps({"ok": not problems, "problems": problems}).encode() + b"\n"
                self._send(200 if not problems else 503, body, "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes every few seconds are not news
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="health-http", daemon=True)

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        log.info("health_server_started", port=self.port, paths=["/metrics", "/healthz", "/readyz"])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
