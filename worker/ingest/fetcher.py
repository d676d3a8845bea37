"""The worker's fetcher: URI images fetched with their own bounded concurrency and one deadline per batch.

Fetching used to run on the decode threads, one URI per thread, so a URI
stream at 50 ms per fetch reached a sixth of the inline throughput (the two
decode threads spent their time waiting on sockets), and one slow host held
the decode pool. A :class:`Fetcher` owns what fetching needs:

* its own threads (``concurrency``, dozens by default: a thread waiting on a
  socket costs no CPU) for http(s) and ``file://``, and an asyncio loop for
  ``s3://`` (:mod:`worker.ingest.s3`);
* keep-alive connections per host (:mod:`worker.ingest.http_client`), each
  request still going to the checked, pinned address;
* a per-host cap (``per_host``) inside each batch, so the URIs of one slow
  host hold at most that many threads and the other hosts' fetches start at
  once instead of queueing behind them;
* one deadline for the whole batch: :meth:`Fetcher.fetch_many` returns by the
  deadline whatever the hosts do, with ``fetch_failed`` for each fetch not done
  by then (its socket is shut at the same moment, so its thread is free
  again); each fetch is also bounded by the policy's own ``timeout_s`` from
  when it starts.

The pipeline calls::

    with fetcher_from_config(cfg) as fetcher:              # once per worker (it owns threads and connections)
        ...
        results = fetcher.fetch_many(uris, deadline=time.monotonic() + cfg.fetch_timeout_s)   # once per batch
        # results[i] is bytes or an InputError (uri_refused / fetch_failed / too_large), in input order

``stats()`` gives counters for metrics (fetches by outcome, connections opened and reused).
"""

from __future__ import annotations

import functools
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from schemas import ErrorCode
from worker.errors import InputError
from worker.ingest.fetch import DEFAULT_PORTS, FetchPolicy, fetch_file, uri_scheme
from worker.ingest.http_client import ConnectionPool, HttpClient, Reaper, Resolver

if TYPE_CHECKING:
    from worker.config import WorkerConfig
    from worker.ingest.s3 import S3Client


@dataclass(frozen=True)
class FetchStats:
    """Counters since the fetcher was made (for Prometheus counters: take differences)."""

    ok: int
    failed: int
    timed_out: int
    connections_opened: int
    connections_reused: int


def _host_key(uri: str) -> str:
    """What the per-host cap counts by: scheme://host:port for http(s), the bucket for s3, one key for files."""
    try:
        parts = urllib.parse.urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme in DEFAULT_PORTS:
            return f"{scheme}://{(parts.hostname or '').lower()}:{parts.port or DEFAULT_PORTS[scheme]}"
        return f"{scheme}://{(parts.hostname or '').lower()}"
    except ValueError:
        return "?"


class Fetcher:
    """Fetches batches of URIs under a :class:`~worker.ingest.fetch.FetchPolicy`; a context manager owning its threads and connections."""

    def __init__(self, policy: FetchPolicy, *, concurrency: int = 32, per_host: int | None = None, name: str = "fetch") -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.policy = policy
        self.concurrency = concurrency
        self.per_host = max(1, min(per_host or concurrency, concurrency))
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix=name)
        self._reaper = Reaper(f"{name}-deadlines")
        self._connections = ConnectionPool(max_idle_per_host=self.per_host)
        self._http = HttpClient(policy, self._reaper, self._connections, Resolver())
        self._s3: S3Client | None = None
        self._s3_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._closed = False

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads and drop pooled connections (fetches in flight end at their deadlines)."""
        if self._closed:
            return
        self._closed = True
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._connections.close()
        self._reaper.close()
        if self._s3 is not None:
            self._s3.close()

    # -- fetching ---------------------------------------------------------------------------
    def fetch(self, uri: str, deadline: float | None = None) -> bytes:
        """One URI's bytes; raises ``InputError``."""
        result = self.fetch_many([uri], deadline)[0]
        if isinstance(result, InputError):
            raise result
        return result

    def fetch_many(self, uris: Sequence[str], deadline: float | None = None) -> list[bytes | InputError]:
        """Every URI's bytes or ``InputError``, in input order, by ``deadline`` (a ``time.monotonic()`` value).

        ``None`` means the policy's ``timeout_s`` from now. Each fetch also ends at
        ``timeout_s`` after it starts. Never raises for a single URI's failure and
        never returns later than the deadline (plus scheduling jitter).
        """
        if self._closed:
            raise RuntimeError("fetcher is closed")
        deadline = deadline if deadline is not None else time.monotonic() + self.policy.timeout_s
        n = len(uris)
        results: list[bytes | InputError | None] = [None] * n
        queues: dict[str, deque[int]] = {}
        for i, uri in enumerate(uris):
            queues.setdefault(_host_key(uri), deque()).append(i)
        running = dict.fromkeys(queues, 0)
        cond = threading.Condition()
        state = {"left": n, "expired": False}

        def finish(i: int, value: bytes | InputError, host: str) -> None:
            with cond:
                if results[i] is None and not state["expired"]:
                    results[i] = value
                    state["left"] -= 1
                running[host] -= 1
                if not state["expired"]:
                    start_more(host)
                cond.notify_all()

        def start_more(host: str) -> None:
            queue = queues[host]
            if time.monotonic() >= deadline:  # a fetch cut off at the deadline must not make room for another one
                return
            while queue and running[host] < self.per_host:
                i = queue.popleft()
                future = self._submit(uris[i], min(deadline, time.monotonic() + self.policy.timeout_s))
                if future.done():  # refused before any I/O: record it here rather than recursing through the callback
                    results[i] = _outcome(future)
                    state["left"] -= 1
                    continue
                running[host] += 1
                future.add_done_callback(functools.partial(_on_done, finish, i, host))

        with cond:
            for host in queues:
                start_more(host)
            while state["left"] > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    state["expired"] = True
                    break
                cond.wait(remaining)
            out: list[bytes | InputError] = []
            late = 0
            for i, value in enumerate(results):
                if value is None:
                    late += 1
                    value = InputError(ErrorCode.fetch_failed, f"GET {uris[i][:200]}: timed out (the batch's fetch deadline passed)")
                out.append(value)
        with self._counts_lock:
            failed = sum(isinstance(v, InputError) for v in out)
            self._counts.update({"ok": n - failed, "failed": failed - late, "timed_out": late})
        return out

    def _submit(self, uri: str, deadline: float) -> Future[bytes]:
        try:
            scheme = uri_scheme(uri)
        except InputError as exc:
            return _failed(exc)
        if scheme == "s3":
            return self._s3_client().submit(uri, deadline)
        if scheme in DEFAULT_PORTS:
            return self._threads.submit(self._http.get, uri, deadline)
        if scheme == "file":
            return self._threads.submit(fetch_file, uri, self.policy)
        return _failed(InputError(ErrorCode.uri_refused, f"URI scheme {scheme or '(none)'!r} is not supported (only http, https, s3 and file)"))

    def _s3_client(self) -> S3Client:
        with self._s3_lock:
            if self._s3 is None:
                from worker.ingest.s3 import S3Client  # obstore is loaded only by workers that see s3:// URIs

                self._s3 = S3Client(self.policy, self.concurrency)
            return self._s3

    def stats(self) -> FetchStats:
        with self._counts_lock:
            c = dict(self._counts)
        return FetchStats(c.get("ok", 0), c.get("failed", 0), c.get("timed_out", 0), self._connections.opened, self._connections.reused)


def _on_done(finish: Callable[[int, bytes | InputError, str], None], i: int, host: str, future: Future[bytes]) -> None:
    finish(i, _outcome(future), host)


def _failed(exc: InputError) -> Future[bytes]:
    f: Future[bytes] = Future()
    f.set_exception(exc)
    return f


def _outcome(future: Future[bytes]) -> bytes | InputError:
    try:
        return future.result()
    except InputError as exc:
        return exc
    except BaseException as exc:  # a bug in a fetch path must still give this URI one outcome
        return InputError(ErrorCode.fetch_failed, f"fetch failed: {type(exc).__name__}")


def policy_from_config(cfg: WorkerConfig) -> FetchPolicy:
    """The fetch policy a worker's configuration describes."""
    return FetchPolicy(
        allowed_hosts=cfg.allowed_hosts,
        file_root=cfg.fetch_file_root,
        timeout_s=cfg.fetch_timeout_s,
        max_bytes=cfg.max_image_bytes,
        s3_buckets=cfg.s3_buckets,
        s3_endpoint=cfg.fetch_s3_endpoint or None,
        s3_region=cfg.fetch_s3_region or None,
    )


def fetcher_from_config(cfg: WorkerConfig) -> Fetcher:
    """The worker's fetcher: its policy, ``--fetch-concurrency`` threads, ``--fetch-per-host`` per host."""
    return Fetcher(policy_from_config(cfg), concurrency=cfg.fetch_concurrency, per_host=cfg.fetch_per_host)
