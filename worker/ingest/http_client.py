"""HTTP(S) GETs for URI images: pinned addresses, keep-alive reuse per host, one deadline per fetch.

Built on ``http.client`` rather than urllib3/requests because two things the
policy needs do not fit those libraries: the connection must go to the one
address that was checked while TLS verifies the *name* (SNI and certificate),
and the deadline must cover the whole fetch, which per-read socket timeouts
cannot do (a server sending one byte every second never trips a 5 s read
timeout).

* **Deadline.** A :class:`Reaper` thread holds every fetch's deadline; when one
  passes it shuts the fetch's current socket (``shutdown(SHUT_RDWR)`` on the
  descriptor), which wakes any blocked ``connect``, TLS handshake, ``recv`` or
  ``send`` at once. For HTTPS the socket watched is the TLS socket itself,
  from before the handshake: wrapping detaches the plain socket, so watching
  only that one (as this module once did) let a server drip an HTTPS response
  for as long as it liked. One thread serves every fetch in flight.
* **Reuse.** Idle connections are kept per (scheme, host, port, pinned
  address, TLS context) in a :class:`ConnectionPool`, at most ``max_idle_per_host`` each and
  for ``idle_s``. A connection is pooled only when its response was read to
  the end, the server did not ask to close it and its deadline did not fire.
  A pooled connection the server has closed meanwhile is retried once on a
  fresh one, only when nothing of the response had arrived.
* **DNS.** Names are resolved with the fetch's deadline and the answer is
  cached for :attr:`Resolver.ttl_s` (concurrent lookups of one name share one
  query); every answer is checked (:func:`~worker.ingest.fetch.refused_address`)
  before it is used, cached or not.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import socket
import ssl
import threading
import time
import urllib.parse
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from schemas import ErrorCode
from worker.errors import InputError
from worker.ingest.fetch import FetchPolicy, HttpTarget, check_http_uri, resolve

REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
#: Error bodies up to this size are read (and discarded) so that the connection can be reused.
_DRAIN_LIMIT = 64 * 1024


class Watch:
    """One fetch's deadline: the socket it is using now is shut when the deadline passes."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                _shut(sock)

    def release(self) -> bool:
        """Stop watching the current socket; True when the deadline had not fired (the socket is intact)."""
        with self._lock:
            self._sock = None
            return not self.fired

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            _shut(self._sock)


def _shut(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        # the plain socket's shutdown, also for TLS: SSLSocket.shutdown would tear down
        # TLS state under the reading thread's feet; this only wakes it
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class Reaper:
    """A single thread that fires :class:`Watch` deadlines (instead of a timer thread per fetch)."""

    def __init__(self, name: str = "fetch-deadlines") -> None:
        self._heap: list[tuple[float, int, Watch]] = []
        self._cond = threading.Condition()
        self._serial = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def arm(self, deadline: float) -> Watch:
        watch = Watch(deadline)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._serial), watch))
            self._cond.notify()
        return watch

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2].fire()
                wait = (self._heap[0][0] - now) if self._heap else None
                self._cond.wait(wait)


class PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, while Host (and SNI) carry the name; its socket is watched."""

    def __init__(self, host: str, port: int, address: str) -> None:
        super().__init__(host, port)
        self.address = address
        self.watch: Watch | None = None
        self.idle_since = 0.0

    def _remaining(self) -> float:
        return max(0.01, (self.watch.deadline if self.watch else time.monotonic() + 5) - time.monotonic())

    def _raw_connect(self) -> socket.socket:
        sock = socket.create_connection((self.address, self.port), self._remaining())
        if self.watch is not None:
            self.watch.watch(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def connect(self) -> None:
        self.sock = self._raw_connect()


class PinnedHTTPSConnection(PinnedHTTPConnection):
    def __init__(self, host: str, port: int, address: str, context: ssl.SSLContext) -> None:
        super().__init__(host, port, address)
        self.context = context

    def connect(self) -> None:
        raw = self._raw_connect()
        tls = self.context.wrap_socket(raw, server_hostname=self.host, do_handshake_on_connect=False)
        if self.watch is not None:
            self.watch.watch(tls)  # wrapping detached `raw`: from here on only the TLS socket can be shut
        self.sock = tls
        tls.settimeout(self._remaining())
        tls.do_handshake()


PoolKey = tuple[str, str, int, str, int]  # scheme, host, port, address, id of the TLS context (0 for http)


@dataclass
class ConnectionPool:
    """Idle keep-alive connections per (scheme, host, port, pinned address)."""

    max_idle_per_host: int = 16
    idle_s: float = 20.0
    opened: int = 0
    reused: int = 0
    _idle: dict[PoolKey, deque[PinnedHTTPConnection]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, key: PoolKey) -> PinnedHTTPConnection | None:
        now = time.monotonic()
        stale: list[PinnedHTTPConnection] = []
        found = None
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if now - conn.idle_since <= self.idle_s and conn.sock is not None:
                    found = conn
                    self.reused += 1
                    break
                stale.append(conn)
        for conn in stale:
            conn.close()
        return found

    def give(self, key: PoolKey, conn: PinnedHTTPConnection) -> None:
        conn.watch = None
        conn.idle_since = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(key, deque())
            if len(idle) < self.max_idle_per_host:
                idle.append(conn)
                return
        conn.close()

    def count_opened(self) -> None:
        with self._lock:
            self.opened += 1

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()


class Resolver:
    """Checked DNS answers with a short cache; concurrent lookups of one name wait for one query."""

    def __init__(self, ttl_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, int], tuple[str, float]] = {}
        self._pending: dict[tuple[str, int], Future[str]] = {}
        self._lock = threading.Lock()

    def resolve(self, host: str, port: int, deadline: float) -> str:
        key = (host, port)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[1] > time.monotonic():
                return hit[0]
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = Future()
        assert pending is not None
        if not owner:
            try:
                return pending.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise InputError(ErrorCode.fetch_failed, f"resolving {host} timed out") from None
        try:
            address = resolve(host, port, deadline)
        except BaseException as exc:
            with self._lock:
                self._pending.pop(key, None)
            pending.set_exception(exc)
            raise
        with self._lock:
            self._pending.pop(key, None)
            self._cache[key] = (address, time.monotonic() + self.ttl_s)
        pending.set_result(address)
        return address


_DEFAULT_SSL: ssl.SSLContext | None = None


def _ssl_context(policy: FetchPolicy) -> ssl.SSLContext:
    global _DEFAULT_SSL
    if policy.ssl_context is not None:
        return policy.ssl_context
    if _DEFAULT_SSL is None:
        _DEFAULT_SSL = ssl.create_default_context()
    return _DEFAULT_SSL


def describe_network_error(exc: BaseException) -> str:
    """What went wrong, in words that reveal nothing about the worker's host (no OS error strings, no addresses)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate verification failed"
    if isinstance(exc, ssl.SSLError):
        return "TLS handshake or record error"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError):
        return "connection closed by the server"
    if isinstance(exc, http.client.IncompleteRead):
        return "body ended early"
    if isinstance(exc, http.client.HTTPException):
        return "not a valid HTTP response"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return "network error"


class HttpClient:
    """GETs with the policy's checks, a pinned address, connection reuse and a whole-fetch deadline."""

    def __init__(self, policy: FetchPolicy, reaper: Reaper, pool: ConnectionPool, resolver: Resolver) -> None:
        self.policy = policy
        self.reaper = reaper
        self.pool = pool
        self.resolver = resolver

    def get(self, uri: str, deadline: float) -> bytes:
        """The body behind an http(s) URI, following checked redirects, or ``InputError``."""
        watch = self.reaper.arm(deadline)
        url = uri
        previous: HttpTarget | None = None
        try:
            for _hop in range(self.policy.max_redirects + 1):
                target = check_http_uri(url, self.policy)
                if previous is not None:
                    if target.scheme != previous.scheme:
                        raise InputError(ErrorCode.uri_refused, f"redirect from {previous.scheme}:// to {target.scheme}:// refused")
                    if target.port != previous.port:
                        raise InputError(ErrorCode.uri_refused, f"redirect from port {previous.port} to port {target.port} refused")
                try:
                    status, location, body = self._one_request(target, url, watch)
                    if watch.fired:  # a close-delimited body cut by the deadline looks complete: it is not
                        raise InputError(ErrorCode.fetch_failed, "deadline")
                except InputError as exc:
                    if watch.fired and exc.code is ErrorCode.fetch_failed:  # the shut socket surfaced as a short body or EOF
                        raise InputError(ErrorCode.fetch_failed, f"GET {url}: timed out (fetch deadline)") from None
                    raise
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    if watch.fired or time.monotonic() >= deadline:
                        raise InputError(ErrorCode.fetch_failed, f"GET {url}: timed out (fetch deadline)") from None
                    raise InputError(ErrorCode.fetch_failed, f"GET {url}: {describe_network_error(exc)}") from None
                if status in REDIRECTS:
                    if not location:
                        raise InputError(ErrorCode.fetch_failed, f"GET {url}: HTTP {status} without a Location")
                    url = urllib.parse.urljoin(url, location)
                    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
                        raise InputError(ErrorCode.uri_refused, f"redirect from {target.host} to a non-http(s) URI refused")
                    previous = target
                    continue
                if not 200 <= status < 300:
                    raise InputError(ErrorCode.fetch_failed, f"GET {url}: HTTP {status}")
                return body
            raise InputError(ErrorCode.fetch_failed, f"GET {uri}: more than {self.policy.max_redirects} redirects")
        finally:
            watch.release()

    def _key(self, target: HttpTarget, address: str) -> PoolKey:
        """Connections are shared only between requests that would have made the same one (TLS trust included)."""
        return (target.scheme, target.host, target.port, address, id(_ssl_context(self.policy)) if target.scheme == "https" else 0)

    def _connection(self, target: HttpTarget, address: str, fresh: bool) -> tuple[PinnedHTTPConnection, bool]:
        key = self._key(target, address)
        conn = None if fresh else self.pool.take(key)
        if conn is not None:
            return conn, True
        self.pool.count_opened()
        if target.scheme == "https":
            return PinnedHTTPSConnection(target.host, target.port, address, _ssl_context(self.policy)), False
        return PinnedHTTPConnection(target.host, target.port, address), False

    def _one_request(self, target: HttpTarget, url: str, watch: Watch) -> tuple[int, str | None, bytes]:
        """One GET; returns (status, Location, body). The body is read only for 2xx answers."""
        address = self.resolver.resolve(target.host, target.port, watch.deadline)
        key = self._key(target, address)
        for attempt in (0, 1):
            conn, reused = self._connection(target, address, fresh=attempt > 0)
            conn.watch = watch
            if conn.sock is not None:
                watch.watch(conn.sock)
                conn.sock.settimeout(max(0.01, watch.deadline - time.monotonic()))
            try:
                resp = self._send(conn, target)
            except ConnectionError:  # RemoteDisconnected, reset, broken pipe
                conn.close()
                if reused and attempt == 0 and not watch.fired:
                    continue  # the server closed the idle connection: once more on a fresh one
                raise
            except BaseException:
                conn.close()
                raise
            try:
                status, location, body, reusable = self._read(resp, url)
            except BaseException:
                conn.close()
                raise
            if reusable and watch.release():
                self.pool.give(key, conn)
            else:
                conn.close()
            return status, location, body
        raise AssertionError("unreachable")

    @staticmethod
    def _send(conn: PinnedHTTPConnection, target: HttpTarget) -> http.client.HTTPResponse:
        conn.putrequest("GET", target.path, skip_accept_encoding=True)
        conn.putheader("User-Agent", "aigis-worker")
        conn.putheader("Accept", "image/*")
        conn.putheader("Accept-Encoding", "identity")
        conn.endheaders()
        return conn.getresponse()

    def _read(self, resp: http.client.HTTPResponse, url: str) -> tuple[int, str | None, bytes, bool]:
        """(status, Location, body, whether the connection may be reused)."""
        if resp.status in REDIRECTS or not 200 <= resp.status < 300:
            location = resp.getheader("Location")
            reusable = False
            if resp.length is not None and resp.length <= _DRAIN_LIMIT:  # a short error or redirect body: drain it, keep the connection
                resp.read()
                reusable = not resp.will_close
            return resp.status, location, b"", reusable
        length_header = (resp.getheader("Content-Length") or "").strip()
        declared = int(length_header) if length_header.isdigit() else None
        if declared is not None and declared > self.policy.max_bytes:
            raise InputError(ErrorCode.too_large, f"GET {url}: declares {declared} bytes, limit {self.policy.max_bytes}")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = resp.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > self.policy.max_bytes:
                raise InputError(ErrorCode.too_large, f"GET {url}: body exceeds {self.policy.max_bytes} bytes")
            chunks.append(chunk)
        if declared is not None and total != declared:  # http.client's read(amt) returns short bodies silently
            raise InputError(ErrorCode.fetch_failed, f"GET {url}: body ended after {total} of {declared} declared bytes")
        return resp.status, None, b"".join(chunks), not resp.will_close
