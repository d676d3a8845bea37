"""Fetching images referenced by URI, under policy.

Only two kinds of URI are ever followed; everything else (ftp, data:, gopher,
javascript:, relative or empty URIs) is refused with ``uri_refused``.

``http(s)://``
    The host must be on the allow-list, compared **as written in the URI**
    (lower-cased; no DNS lookup, no wildcard, no suffix match, a trailing dot
    is a different name). An entry ``host`` allows that host on the scheme's
    default port only (80/443); ``host:port`` (``[v6addr]:port`` for IPv6
    literals) allows exactly that port. Ports are part of the policy because
    otherwise an upload could make the worker speak HTTP to any service on an
    allowed machine. IP literals match only if listed literally
    (``http://2130706433/`` is not ``127.0.0.1``).

    The name is resolved once (with the fetch's deadline) and the connection
    goes to exactly the address that was checked, so a DNS answer that changes
    between check and connect (rebinding) cannot redirect it. Addresses that
    are never an image host are refused even for an allowed name: link-local
    (169.254.0.0/16 holds cloud metadata services; fe80::/10), multicast,
    unspecified and 240.0.0.0/4. Loopback and private ranges are allowed: an
    operator who lists an internal image store by name means it. HTTPS
    certificates are verified against the name.

    Redirects (301/302/303/307/308) are followed by hand, at most
    ``max_redirects`` hops, and every hop is checked like the first: a hop to
    another scheme or to a host not on the list is ``uri_refused``. The
    timeout is a deadline for the whole fetch (DNS, connect, headers, body,
    all hops), enforced by a watchdog that shuts the socket, not a per-read
    timeout a server could satisfy by sending one byte at a time. The size cap
    is enforced while streaming; ``Content-Length`` is used only to refuse
    early, never trusted to bound the read. No proxy is used (``HTTP_PROXY`` is
    ignored): the allow-list is the egress decision.

``file://``
    Only with a configured root. The path must be absolute, contain no ``..``
    segment and no NUL, resolve (symlinks followed) to a place under the root,
    and be a regular file (a FIFO or device would block or never end); it is
    opened without following a final symlink, so swapping one in after the
    check does not escape the root.

Errors: ``uri_refused`` (policy), ``fetch_failed`` (network, HTTP status,
timeout, missing file), ``too_large`` (size cap).
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from schemas import ErrorCode
from worker.errors import InputError

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK = 64 * 1024
_NEVER_IMAGE_HOSTS = (ipaddress.ip_network("240.0.0.0/4"),)


@dataclass(frozen=True)
class FetchPolicy:
    #: Allow-list entries: ``host`` (default port) or ``host:port`` / ``[v6]:port``; lower-case.
    allowed_hosts: frozenset[str] = frozenset()
    file_root: Path | None = None
    timeout_s: float = 5.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str  # path + query, as sent in the request line


def _host_for_entry(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_http_uri(uri: str, policy: FetchPolicy) -> _Target:
    """Parse an http(s) URI and apply the allow-list; raises ``uri_refused``."""
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InputError(ErrorCode.uri_refused, f"malformed URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InputError(ErrorCode.uri_refused, f"scheme {scheme or '(none)'!r} is not http(s)")
    if parts.username is not None or parts.password is not None:
        raise InputError(ErrorCode.uri_refused, "credentials in the URI are not allowed")
    host = (parts.hostname or "").lower()
    if not host:
        raise InputError(ErrorCode.uri_refused, "URI has no host")
    port = port if port is not None else _DEFAULT_PORTS[scheme]
    entry_host = _host_for_entry(host)
    allowed = f"{entry_host}:{port}" in policy.allowed_hosts or (port == _DEFAULT_PORTS[scheme] and host in policy.allowed_hosts)
    if not allowed:
        shown = host if port == _DEFAULT_PORTS[scheme] else f"{entry_host}:{port}"
        raise InputError(ErrorCode.uri_refused, f"host {shown!r} is not on the fetch allow-list")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        raise InputError(ErrorCode.uri_refused, "URI path contains whitespace or control characters")
    return _Target(scheme, host, port, path)


def _refused_address(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return True
    return isinstance(ip, ipaddress.IPv4Address) and (ip == ipaddress.IPv4Address("255.255.255.255") or any(ip in n for n in _NEVER_IMAGE_HOSTS))


def _resolve(host: str, port: int, deadline: float) -> str:
    """One address for ``host``, within the deadline (getaddrinfo itself has no timeout)."""
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if literal:
        addresses = [host]
    else:
        box: dict[str, object] = {}

        def lookup() -> None:
            try:
                box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except Exception as exc:  # gaierror, UnicodeError for odd names
                box["error"] = exc

        resolver = threading.Thread(target=lookup, name="fetch-dns", daemon=True)
        resolver.start()
        resolver.join(max(0.0, deadline - time.monotonic()))
        if resolver.is_alive():
            raise InputError(ErrorCode.fetch_failed, f"resolving {host} timed out")
        if "error" in box:
            raise InputError(ErrorCode.fetch_failed, f"cannot resolve {host}: {box['error']}")
        addresses = [info[4][0] for info in box["infos"]]  # type: ignore[attr-defined]
    usable = [a for a in addresses if not _refused_address(a)]
    if not usable:
        raise InputError(ErrorCode.uri_refused, f"{host} resolves only to addresses that are never image hosts ({', '.join(addresses[:3])})")
    return usable[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, while Host (and SNI) carry the name."""

    def __init__(self, host: str, port: int, address: str, timeout: float, dog: _Watchdog) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.dog = dog

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        # Watch the raw socket itself, before any TLS handshake, and keep watching it after
        # http.client drops conn.sock (it does once a close-delimited response starts).
        self.dog.watch(self.sock)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, dog: _Watchdog, context: ssl.SSLContext) -> None:
        super().__init__(host, port, address, timeout, dog)
        self.context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


class _Watchdog:
    """Shuts the current connection's socket at the deadline, waking any blocked read."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self.sock = sock
            if self.fired:
                self._shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shut(self.sock)

    @staticmethod
    def _shut(sock: socket.socket | None) -> None:
        if sock is not None:
            try:
                # the plain socket's shutdown, also for TLS: SSLSocket.shutdown
                # would tear down TLS state under the reading thread's feet
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


_DEFAULT_SSL: ssl.SSLContext | None = None


def _ssl_context(policy: FetchPolicy) -> ssl.SSLContext:
    global _DEFAULT_SSL
    if policy.ssl_context is not None:
        return policy.ssl_context
    if _DEFAULT_SSL is None:
        _DEFAULT_SSL = ssl.create_default_context()
    return _DEFAULT_SSL


def _fetch_http(uri: str, policy: FetchPolicy) -> bytes:
    deadline = time.monotonic() + policy.timeout_s
    url = uri
    with _Watchdog(policy.timeout_s) as dog:
        for _hop in range(policy.max_redirects + 1):
            target = check_http_uri(url, policy)
            try:
                status, location, body = _one_request(target, url, policy, deadline, dog)
            except InputError:
                raise
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if dog.fired or time.monotonic() >= deadline:
                    raise InputError(ErrorCode.fetch_failed, f"GET {url}: timed out after {policy.timeout_s:g} s") from None
                raise InputError(ErrorCode.fetch_failed, f"GET {url}: {type(exc).__name__}: {exc}") from None
            if dog.fired:
                raise InputError(ErrorCode.fetch_failed, f"GET {url}: timed out after {policy.timeout_s:g} s")
            if status in _REDIRECTS:
                if not location:
                    raise InputError(ErrorCode.fetch_failed, f"GET {url}: HTTP {status} without a Location")
                url = urllib.parse.urljoin(url, location)
                if urllib.parse.urlsplit(url).scheme.lower() not in _DEFAULT_PORTS:
                    raise InputError(ErrorCode.uri_refused, f"redirect from {target.host} to a non-http(s) URI refused")
                continue
            if not 200 <= status < 300:
                raise InputError(ErrorCode.fetch_failed, f"GET {url}: HTTP {status}")
            return body
    raise InputError(ErrorCode.fetch_failed, f"GET {uri}: more than {policy.max_redirects} redirects")


def _one_request(target: _Target, url: str, policy: FetchPolicy, deadline: float, dog: _Watchdog) -> tuple[int, str | None, bytes]:
    """One GET; returns (status, Location, body). The body is read only for 2xx answers."""
    address = _resolve(target.host, target.port, deadline)
    remaining = max(0.01, deadline - time.monotonic())
    conn: _PinnedHTTPConnection
    if target.scheme == "https":
        conn = _PinnedHTTPSConnection(target.host, target.port, address, remaining, dog, _ssl_context(policy))
    else:
        conn = _PinnedHTTPConnection(target.host, target.port, address, remaining, dog)
    try:
        conn.putrequest("GET", target.path, skip_accept_encoding=True)
        conn.putheader("User-Agent", "aigis-worker")
        conn.putheader("Accept", "image/*")
        conn.putheader("Accept-Encoding", "identity")
        conn.putheader("Connection", "close")
        conn.endheaders()
        resp = conn.getresponse()
        if resp.status in _REDIRECTS or not 200 <= resp.status < 300:
            return resp.status, resp.getheader("Location"), b""
        length_header = (resp.getheader("Content-Length") or "").strip()
        declared = int(length_header) if length_header.isdigit() else None
        if declared is not None and declared > policy.max_bytes:
            raise InputError(ErrorCode.too_large, f"GET {url}: declares {declared} bytes, limit {policy.max_bytes}")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = resp.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > policy.max_bytes:
                raise InputError(ErrorCode.too_large, f"GET {url}: body exceeds {policy.max_bytes} bytes")
            chunks.append(chunk)
        if declared is not None and total != declared:  # http.client's read(amt) returns short bodies silently
            raise InputError(ErrorCode.fetch_failed, f"GET {url}: body ended after {total} of {declared} declared bytes")
        return resp.status, None, b"".join(chunks)
    finally:
        conn.close()


def _fetch_file(uri: str, policy: FetchPolicy) -> bytes:
    if policy.file_root is None:
        raise InputError(ErrorCode.uri_refused, "file:// URIs are disabled (no fetch_file_root configured)")
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise InputError(ErrorCode.uri_refused, f"file:// URI with host {parts.netloc!r} refused")
    raw = urllib.parse.unquote(parts.path)
    if "\0" in raw:
        raise InputError(ErrorCode.uri_refused, "file:// path contains a NUL byte")
    if not raw.startswith("/"):
        raise InputError(ErrorCode.uri_refused, f"file:// path {raw!r} is not absolute")
    if ".." in raw.split("/"):
        raise InputError(ErrorCode.uri_refused, "file:// path contains a '..' segment")
    root = Path(os.path.realpath(policy.file_root))
    path = Path(os.path.realpath(raw))
    if not path.is_relative_to(root):
        raise InputError(ErrorCode.uri_refused, f"{raw} resolves to {path}, outside the allowed root {root}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(ErrorCode.fetch_failed, f"cannot open {path}: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InputError(ErrorCode.fetch_failed, f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > policy.max_bytes:
            raise InputError(ErrorCode.too_large, f"{path} is {info.st_size} bytes, limit {policy.max_bytes}")
        try:
            data = fh.read(policy.max_bytes + 1)
        except OSError as exc:
            raise InputError(ErrorCode.fetch_failed, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > policy.max_bytes:  # the file grew after fstat
        raise InputError(ErrorCode.too_large, f"{path} is larger than {policy.max_bytes} bytes")
    return data


def fetch(uri: str, policy: FetchPolicy) -> bytes:
    """Bytes behind ``uri`` or ``InputError`` (uri_refused, fetch_failed, too_large)."""
    try:
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
    except ValueError as exc:
        raise InputError(ErrorCode.uri_refused, f"malformed URI: {exc}") from None
    if scheme in _DEFAULT_PORTS:
        return _fetch_http(uri, policy)
    if scheme == "file":
        return _fetch_file(uri, policy)
    raise InputError(ErrorCode.uri_refused, f"URI scheme {scheme or '(none)'!r} is not supported (only http, https and file)")
