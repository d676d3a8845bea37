"""Fetching images referenced by URI, under policy: what may be fetched, and from where.

This module is the policy (URI checks, address checks, ``file://``); the
network side is :mod:`worker.ingest.http_client` (pinned keep-alive HTTP(S)
connections under a deadline), :mod:`worker.ingest.s3` (``s3://`` through
obstore) and :mod:`worker.ingest.fetcher` (bounded concurrency, one deadline
per batch, its own threads). :func:`fetch` fetches one URI on its own.

Only three kinds of URI are ever followed; everything else (ftp, data:, gopher,
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
    are never an image host are refused even for an allowed name
    (:func:`refused_address`): link-local (169.254.0.0/16 holds the AWS, GCP
    and Azure metadata services; fe80::/10), the other clouds' metadata
    addresses (AWS's IPv6 ``fd00:ec2::254``, Alibaba's ``100.100.100.200``,
    Oracle's ``192.0.0.192``), ``0.0.0.0/8`` (Linux connects it to the local
    host), multicast, unspecified, broadcast and 240.0.0.0/4, also when they
    are written inside an IPv6 address (IPv4-mapped ``::ffff:a.b.c.d``,
    IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96`` and
    ``64:ff9b:1::/48``, 6to4 ``2002::/16``). Loopback and private ranges are
    allowed: an operator who lists an internal image store by name means it.
    HTTPS certificates are verified against the name.

    Redirects (301/302/303/307/308) are followed by hand, at most
    ``max_redirects`` hops, and every hop is checked like the first; a hop
    that changes the scheme (https to http, or the reverse) or the port, or
    goes to a host not on the list, is ``uri_refused``. The timeout is a
    deadline for the whole fetch (DNS, connect, TLS handshake, headers, body,
    all hops), for HTTPS as for HTTP, enforced by shutting the socket, not a
    per-read timeout a server could satisfy by sending one byte at a time.
    The size cap is enforced while streaming; ``Content-Length`` is used only
    to refuse early, never trusted to bound the read. No proxy is used
    (``HTTP_PROXY`` is ignored): the allow-list is the egress decision.

``s3://bucket/key``
    Only buckets on the bucket allow-list; see :mod:`worker.ingest.s3`.

``file://``
    Only with a configured root. The path must be absolute, contain no ``..``
    segment and no NUL, resolve (symlinks followed) to a place under the root,
    and be a regular file (a FIFO or device would block or never end); it is
    opened without following a final symlink, so swapping one in after the
    check does not escape the root.

Errors: ``uri_refused`` (policy), ``fetch_failed`` (network, HTTP status,
timeout, missing file), ``too_large`` (size cap). Messages go to dead letters,
which the uploader may read: they name the URI as sent and the kind of
failure, never a resolved path, an OS error string or a server's internals
(the fetch of ``file:///root/images/x`` says "no such image under the file
root", not where the root's symlinks lead).
"""

from __future__ import annotations

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
from typing import TYPE_CHECKING

from schemas import ErrorCode
from worker.errors import InputError

if TYPE_CHECKING:  # http_client imports this module; at run time fetch() imports it late
    from worker.ingest.http_client import ConnectionPool, Reaper, Resolver

DEFAULT_PORTS = {"http": 80, "https": 443}
_NEVER_IMAGE_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network": Linux connects 0.x.x.x to the local host
        "169.254.0.0/16",  # link-local: AWS/GCP/Azure/OpenStack metadata at 169.254.169.254
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud (classic) metadata
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    )
)
_NEVER_IMAGE_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed by some stacks)
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "ff00::/8",  # multicast
    )
)
#: IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64 well-known and local-use).
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")


@dataclass(frozen=True)
class FetchPolicy:
    #: Allow-list entries: ``host`` (default port) or ``host:port`` / ``[v6]:port``; lower-case.
    allowed_hosts: frozenset[str] = frozenset()
    file_root: Path | None = None
    timeout_s: float = 5.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    #: Buckets ``s3://`` URIs may name (lower-case); empty refuses every ``s3://`` URI.
    s3_buckets: frozenset[str] = frozenset()
    #: S3 endpoint URL (MinIO, a local S3 server); None = AWS, from the region.
    s3_endpoint: str | None = None
    #: S3 region; None = from the environment (``AWS_REGION`` / ``AWS_DEFAULT_REGION``).
    s3_region: str | None = None


@dataclass(frozen=True)
class HttpTarget:
    scheme: str
    host: str
    port: int
    path: str  # path + query, as sent in the request line


def _host_for_entry(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_http_uri(uri: str, policy: FetchPolicy) -> HttpTarget:
    """Parse an http(s) URI and apply the allow-list; raises ``uri_refused``."""
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InputError(ErrorCode.uri_refused, f"malformed URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InputError(ErrorCode.uri_refused, f"scheme {scheme or '(none)'!r} is not http(s)")
    if parts.username is not None or parts.password is not None:
        raise InputError(ErrorCode.uri_refused, "credentials in the URI are not allowed")
    host = (parts.hostname or "").lower()
    if not host:
        raise InputError(ErrorCode.uri_refused, "URI has no host")
    port = port if port is not None else DEFAULT_PORTS[scheme]
    entry_host = _host_for_entry(host)
    allowed = f"{entry_host}:{port}" in policy.allowed_hosts or (port == DEFAULT_PORTS[scheme] and host in policy.allowed_hosts)
    if not allowed:
        shown = host if port == DEFAULT_PORTS[scheme] else f"{entry_host}:{port}"
        raise InputError(ErrorCode.uri_refused, f"host {shown!r} is not on the fetch allow-list")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        raise InputError(ErrorCode.uri_refused, "URI path contains whitespace or control characters")
    return HttpTarget(scheme, host, port, path)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is written in one of the embedding forms."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in n for n in _NAT64) or (ip in _V4_COMPATIBLE and int(ip) > 1):  # ::1 is loopback, not ::0.0.0.1
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def refused_address(addr: str) -> bool:
    """True for an address that is never an image host (metadata services, link-local, multicast...), in any spelling."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_unspecified or any(ip in n for n in _NEVER_IMAGE_V6):
            return True
        v4 = _embedded_v4(ip)
        if v4 is None:
            return False
        ip = v4
    return any(ip in n for n in _NEVER_IMAGE_V4)


def resolve(host: str, port: int, deadline: float) -> str:
    """One allowed address for ``host``, within the deadline (getaddrinfo itself has no timeout)."""
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if literal:
        addresses = [host]
    else:
        found: list[str] = []  # filled by the lookup thread; read only once it has ended
        failed: list[Exception] = []

        def lookup() -> None:
            try:
                found.extend(str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except Exception as exc:  # gaierror, UnicodeError for odd names
                failed.append(exc)

        resolver = threading.Thread(target=lookup, name="fetch-dns", daemon=True)
        resolver.start()
        resolver.join(max(0.0, deadline - time.monotonic()))
        if resolver.is_alive():
            raise InputError(ErrorCode.fetch_failed, f"resolving {host} timed out")
        if failed:
            raise InputError(ErrorCode.fetch_failed, f"cannot resolve {host}")
        addresses = found
    usable = [a for a in addresses if not refused_address(a)]
    if not usable:
        raise InputError(ErrorCode.uri_refused, f"{host} resolves only to addresses that are never image hosts (metadata, link-local, multicast)")
    return usable[0]


def fetch_file(uri: str, policy: FetchPolicy) -> bytes:
    """A ``file://`` URI under the policy's root; messages never show resolved paths or OS error strings."""
    if policy.file_root is None:
        raise InputError(ErrorCode.uri_refused, "file:// URIs are disabled (no fetch_file_root configured)")
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise InputError(ErrorCode.uri_refused, f"file:// URI with host {parts.netloc!r} refused")
    raw = urllib.parse.unquote(parts.path)
    if "\0" in raw:
        raise InputError(ErrorCode.uri_refused, "file:// path contains a NUL byte")
    if not raw.startswith("/"):
        raise InputError(ErrorCode.uri_refused, "file:// path is not absolute")
    if ".." in raw.split("/"):
        raise InputError(ErrorCode.uri_refused, "file:// path contains a '..' segment")
    root = Path(os.path.realpath(policy.file_root))
    path = Path(os.path.realpath(raw))
    if not path.is_relative_to(root):
        raise InputError(ErrorCode.uri_refused, "file:// path is outside the allowed file root")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise InputError(ErrorCode.fetch_failed, "no readable image at this file:// path under the file root") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InputError(ErrorCode.fetch_failed, "file:// path is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > policy.max_bytes:
            raise InputError(ErrorCode.too_large, f"file is {info.st_size} bytes, limit {policy.max_bytes}")
        try:
            data = fh.read(policy.max_bytes + 1)
        except OSError:
            raise InputError(ErrorCode.fetch_failed, "reading the file:// image failed") from None
    if len(data) > policy.max_bytes:  # the file grew after fstat
        raise InputError(ErrorCode.too_large, f"file is larger than {policy.max_bytes} bytes")
    return data


def uri_scheme(uri: str) -> str:
    """The lower-cased scheme of ``uri``; ``uri_refused`` for one that cannot be parsed."""
    try:
        return urllib.parse.urlsplit(uri).scheme.lower()
    except ValueError as exc:
        raise InputError(ErrorCode.uri_refused, f"malformed URI: {exc}") from None


_shared_lock = threading.Lock()
_shared: tuple[Reaper, ConnectionPool, Resolver] | None = None  # for fetch(); one deadline thread, pool and resolver per process


def fetch(uri: str, policy: FetchPolicy) -> bytes:
    """Bytes behind ``uri`` or ``InputError`` (uri_refused, fetch_failed, too_large), in the calling thread.

    For one-off use and callers that bring their own threads: http(s) goes
    through one process-wide deadline thread and connection pool (so repeated
    calls reuse connections); a worker should keep a
    :class:`~worker.ingest.fetcher.Fetcher`, which adds its own bounded
    concurrency, a per-host cap and one deadline per batch.
    """
    global _shared
    scheme = uri_scheme(uri)
    if scheme in DEFAULT_PORTS:
        from worker.ingest.http_client import ConnectionPool, HttpClient, Reaper, Resolver  # it imports this module

        with _shared_lock:
            if _shared is None:
                _shared = (Reaper("fetch-shared-deadlines"), ConnectionPool(), Resolver())
            reaper, pool, resolver = _shared
        client = HttpClient(policy, reaper, pool, resolver)
        return client.get(uri, time.monotonic() + policy.timeout_s)
    if scheme == "file":
        return fetch_file(uri, policy)
    if scheme == "s3":
        from worker.ingest.fetcher import Fetcher

        with Fetcher(policy, concurrency=1) as fetcher:
            return fetcher.fetch(uri)
    raise InputError(ErrorCode.uri_refused, f"URI scheme {scheme or '(none)'!r} is not supported (only http, https, s3 and file)")
