"""The fetcher against real local servers: plain HTTP and TLS (a self-signed certificate made here), misbehaving on purpose.

Deadline (HTTPS included), redirects that change scheme or port, cloud metadata
addresses in every spelling, error messages that reveal nothing of the
worker's host, and the fetcher's own concurrency: a per-host cap, one deadline
per batch, connection reuse.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from schemas import ErrorCode
from worker.errors import InputError
from worker.ingest.fetch import FetchPolicy, fetch, refused_address
from worker.ingest.fetcher import Fetcher

BODY = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless a handler says otherwise

    def log_message(self, *args: object) -> None:
        pass

    def _ok(self, body: bytes = BODY) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        st = self.server.state  # type: ignore[attr-defined]
        with st["lock"]:
            st["requests"] += 1
            st["connections"].add(self.client_address)
            st["active"] += 1
            st["max_active"] = max(st["max_active"], st["active"])
        try:
            self._route()
        finally:
            with st["lock"]:
                st["active"] -= 1

    def _route(self) -> None:
        path = self.path
        if path == "/img.png":
            self._ok()
        elif path == "/slow":
            time.sleep(2.0)
            self._ok()
        elif path == "/hold":  # answers after a while, one at a time would serialise a batch
            time.sleep(0.3)
            self._ok()
        elif path == "/drip":  # headers at once, then a byte every 0.2 s for 20 s: no per-read timeout ever fires
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)  # type: ignore[attr-defined]
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/close-silently":  # answers, then drops the connection without saying so (an idle timeout)
            self._ok()
            self.close_connection = True
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


def _state() -> dict:
    return {"lock": threading.Lock(), "requests": 0, "connections": set(), "active": 0, "max_active": 0}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = _state()
        self.redirect_to = ""
        self.tls = tls

    def get_request(self):  # type: ignore[no-untyped-def]
        sock, addr = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        if self.tls is not None:
            try:
                request.settimeout(10)
                request.do_handshake()
            except (OSError, ssl.SSLError):
                return
        super().finish_request(request, client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]


def _serve(server: _Server) -> _Server:
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (made here, never written outside the test's temp dir)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aigis-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[_Server]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certificate)
    server = _serve(_Server(ctx))
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def plain_servers() -> Iterator[tuple[_Server, _Server]]:
    a, b = _serve(_Server()), _serve(_Server())
    yield a, b
    for s in (a, b):
        s.shutdown()
        s.server_close()


def _client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(certificate[0])
    return ctx


def _policy(*servers: _Server, certificate: tuple[Path, Path] | None = None, **kw: object) -> FetchPolicy:
    base: dict[str, object] = {
        "allowed_hosts": frozenset(f"127.0.0.1:{s.port}" for s in servers),
        "timeout_s": 2.0,
        "max_bytes": 1 << 20,
        "ssl_context": _client_tls(certificate) if certificate else None,
    }
    base.update(kw)
    return FetchPolicy(**base)  # type: ignore[arg-type]


def _error(result: bytes | InputError) -> InputError:
    assert isinstance(result, InputError), f"expected an error, got {len(result)} bytes"
    return result


# -- HTTPS: the deadline holds, certificates are checked ----------------------------------------------------------------


def test_https_fetches_with_a_verified_certificate(tls_server: _Server, certificate: tuple[Path, Path]) -> None:
    assert fetch(f"https://127.0.0.1:{tls_server.port}/img.png", _policy(tls_server, certificate=certificate)) == BODY
    # the same server, certificate not trusted: refused, never downgraded
    with pytest.raises(InputError) as info:
        fetch(f"https://127.0.0.1:{tls_server.port}/img.png", _policy(tls_server))
    assert info.value.code is ErrorCode.fetch_failed and "certificate" in info.value.message


def test_the_deadline_holds_for_an_https_body_dripped_one_byte_at_a_time(tls_server: _Server, certificate: tuple[Path, Path]) -> None:
    # Before: only the plain socket was watched, and wrapping it in TLS detached it: this fetch ran the full 20 s and succeeded.
    pol = _policy(tls_server, certificate=certificate, timeout_s=1.0)
    with Fetcher(pol, concurrency=1) as fetcher:  # one thread: the next fetch can only run if the deadline freed it
        t0 = time.monotonic()
        with pytest.raises(InputError) as info:
            fetcher.fetch(f"https://127.0.0.1:{tls_server.port}/drip")
        assert info.value.code is ErrorCode.fetch_failed and "timed out" in info.value.message
        assert fetcher.fetch(f"https://127.0.0.1:{tls_server.port}/img.png", deadline=time.monotonic() + 3) == BODY
        assert time.monotonic() - t0 < 6  # the deadline (1 s), not the server (20 s)


def test_the_deadline_holds_for_a_tls_handshake_that_never_completes(tls_server: _Server, certificate: tuple[Path, Path]) -> None:
    """A server that accepts the connection and never answers the ClientHello."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        pol = _policy(tls_server, certificate=certificate, timeout_s=1.0, allowed_hosts=frozenset({f"127.0.0.1:{port}", f"127.0.0.1:{tls_server.port}"}))
        with Fetcher(pol, concurrency=1) as fetcher:
            t0 = time.monotonic()
            with pytest.raises(InputError) as info:
                fetcher.fetch(f"https://127.0.0.1:{port}/img.png")
            assert info.value.code is ErrorCode.fetch_failed and "timed out" in info.value.message
            assert fetcher.fetch(f"https://127.0.0.1:{tls_server.port}/img.png", deadline=time.monotonic() + 3) == BODY
            assert time.monotonic() - t0 < 6


def test_the_http_client_itself_ends_a_dripping_https_fetch_at_its_deadline(tls_server: _Server, certificate: tuple[Path, Path]) -> None:
    """Below the fetcher (which returns at the deadline anyway): the blocked read itself is woken, so no thread stays stuck."""
    from worker.ingest.http_client import ConnectionPool, HttpClient, Reaper, Resolver

    reaper = Reaper()
    try:
        client = HttpClient(_policy(tls_server, certificate=certificate), reaper, ConnectionPool(), Resolver())
        t0 = time.monotonic()
        with pytest.raises(InputError) as info:
            client.get(f"https://127.0.0.1:{tls_server.port}/drip", deadline=time.monotonic() + 1.0)
        assert "timed out" in info.value.message and time.monotonic() - t0 < 6
    finally:
        reaper.close()


# -- redirects ----------------------------------------------------------------------------------------------------


def test_a_redirect_from_https_to_http_is_refused_even_to_an_allowed_host(
    tls_server: _Server, plain_servers: tuple[_Server, _Server], certificate: tuple[Path, Path]
) -> None:
    plain = plain_servers[0]
    tls_server.redirect_to = f"http://127.0.0.1:{plain.port}/img.png"
    pol = _policy(tls_server, plain, certificate=certificate)
    with pytest.raises(InputError) as info:
        fetch(f"https://127.0.0.1:{tls_server.port}/redirect", pol)
    assert info.value.code is ErrorCode.uri_refused and "https:// to http://" in info.value.message
    assert plain.state["requests"] == 0  # refused before any request went out
    plain.redirect_to = f"https://127.0.0.1:{tls_server.port}/img.png"  # and the upgrade too: a hop keeps its scheme
    with pytest.raises(InputError) as info:
        fetch(f"http://127.0.0.1:{plain.port}/redirect", pol)
    assert info.value.code is ErrorCode.uri_refused


def test_a_redirect_to_another_port_is_refused_even_when_allowed(plain_servers: tuple[_Server, _Server]) -> None:
    a, b = plain_servers
    a.redirect_to = f"http://127.0.0.1:{b.port}/img.png"
    with pytest.raises(InputError) as info:
        fetch(f"http://127.0.0.1:{a.port}/redirect", _policy(a, b))
    assert info.value.code is ErrorCode.uri_refused and "port" in info.value.message
    assert b.state["requests"] == 0


def test_a_redirect_to_another_allowed_name_on_the_same_port_is_followed(plain_servers: tuple[_Server, _Server]) -> None:
    a = plain_servers[0]
    a.redirect_to = f"http://localhost:{a.port}/img.png"
    pol = _policy(a, allowed_hosts=frozenset({f"127.0.0.1:{a.port}", f"localhost:{a.port}"}))
    assert fetch(f"http://127.0.0.1:{a.port}/redirect", pol) == BODY


# -- addresses that are never image hosts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack metadata (link-local)
        "fd00:ec2::254",  # AWS metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud metadata
        "192.0.0.192",  # Oracle Cloud classic metadata
        "::ffff:169.254.169.254",  # IPv4-mapped
        "::ffff:100.100.100.200",
        "::169.254.169.254",  # IPv4-compatible
        "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix + 169.254.169.254
        "64:ff9b::6464:64c8",  # NAT64 + 100.100.100.200
        "64:ff9b:1::a9fe:a9fe",  # NAT64 local-use prefix
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "fe80::1",
        "fe80::1%eth0",
        "0.0.0.0",
        "0.1.2.3",  # Linux connects 0.0.0.0/8 to the local host
        "::",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
        "240.0.0.1",
    ],
)
def test_metadata_and_link_local_addresses_are_refused_in_every_spelling(address: str) -> None:
    assert refused_address(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.0.0.1", "192.168.1.10", "100.64.0.1", "64:ff9b::a00:1", "2001:db8::1", "8.8.8.8"])
def test_ordinary_addresses_are_not_refused(address: str) -> None:
    assert not refused_address(address)


def test_a_listed_metadata_address_is_refused_before_connecting() -> None:
    for host, entry in (("[fd00:ec2::254]", "fd00:ec2::254"), ("100.100.100.200", "100.100.100.200"), ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe")):
        with pytest.raises(InputError) as info:
            fetch(f"http://{host}/latest/meta-data/", FetchPolicy(allowed_hosts=frozenset({entry}), timeout_s=1.0))
        assert info.value.code is ErrorCode.uri_refused, host


# -- messages reveal nothing of the worker's host ----------------------------------------------------------------------


def test_file_errors_name_neither_resolved_paths_nor_os_errors(tmp_path: Path) -> None:
    root = tmp_path / "images-root"
    secret = tmp_path / "private-dir"
    (root / "sub").mkdir(parents=True)
    secret.mkdir()
    (secret / "key.pem").write_bytes(b"secret")
    (root / "link.png").symlink_to(secret / "key.pem")
    os.mkfifo(root / "pipe.png")
    pol = FetchPolicy(file_root=root)
    messages = []
    for uri in (f"file://{root}/link.png", f"file://{root}/missing.png", f"file://{root}/sub", f"file://{root}/pipe.png", f"file://{secret}/key.pem"):
        with pytest.raises(InputError) as info:
            fetch(uri, pol)
        messages.append(info.value.message)
    for msg in messages:
        assert "private-dir" not in msg and "key.pem" not in msg and "No such file" not in msg and "Errno" not in msg, msg
        assert str(root) not in msg, msg


def test_network_errors_carry_no_os_error_text() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError) as info:
        fetch(f"http://127.0.0.1:{port}/img.png", FetchPolicy(allowed_hosts=frozenset({f"127.0.0.1:{port}"}), timeout_s=1.0))
    assert info.value.message.endswith("connection refused") and "Errno" not in info.value.message


# -- the fetcher: its own concurrency, a per-host cap, one deadline per batch, reuse ----------------------------------


def test_one_slow_host_does_not_hold_back_the_others(plain_servers: tuple[_Server, _Server]) -> None:
    slow, fast = plain_servers
    uris = [f"http://127.0.0.1:{slow.port}/slow"] * 8 + [f"http://127.0.0.1:{fast.port}/img.png"] * 4
    # 4 threads: without the per-host cap the 8 slow URIs would take them all and the fast ones would wait past the deadline
    with Fetcher(_policy(slow, fast), concurrency=4, per_host=2) as fetcher:
        t0 = time.monotonic()
        results = fetcher.fetch_many(uris, deadline=time.monotonic() + 1.0)
        elapsed = time.monotonic() - t0
    assert results[8:] == [BODY] * 4
    assert all(_error(r).code is ErrorCode.fetch_failed and "timed out" in _error(r).message for r in results[:8])
    assert elapsed < 3.0  # by the batch deadline (1 s), not the slow host's 2 s per request times 4 rounds
    assert slow.state["max_active"] <= 2


def test_the_batch_deadline_bounds_fetch_many_whatever_the_hosts_do(plain_servers: tuple[_Server, _Server], tls_server: _Server) -> None:
    slow = plain_servers[0]
    with socket.socket() as silent:  # accepts and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        uris = [f"http://127.0.0.1:{port}/x"] * 5 + [f"http://127.0.0.1:{slow.port}/drip"] * 5 + [f"https://127.0.0.1:{port}/x"] * 5
        pol = FetchPolicy(allowed_hosts=frozenset({f"127.0.0.1:{port}", f"127.0.0.1:{slow.port}"}), timeout_s=30.0)
        with Fetcher(pol, concurrency=32) as fetcher:
            t0 = time.monotonic()
            results = fetcher.fetch_many(uris, deadline=time.monotonic() + 0.8)
            elapsed = time.monotonic() - t0
            assert fetcher.stats().timed_out + fetcher.stats().failed == 15
    assert len(results) == 15 and all(_error(r).code is ErrorCode.fetch_failed for r in results)
    assert elapsed < 2.5  # the batch's 0.8 s, though the policy would allow 30 s per fetch


def test_fetches_run_concurrently_up_to_the_cap(plain_servers: tuple[_Server, _Server]) -> None:
    server = plain_servers[0]
    with Fetcher(_policy(server), concurrency=6) as fetcher:
        t0 = time.monotonic()
        results = fetcher.fetch_many([f"http://127.0.0.1:{server.port}/hold"] * 18, deadline=time.monotonic() + 10)
        elapsed = time.monotonic() - t0
    assert results == [BODY] * 18
    assert server.state["max_active"] == 6  # never more than the cap, and the cap was used
    assert elapsed < 0.3 * 18 / 2  # concurrent: three rounds of 0.3 s, nowhere near 18 sequential ones


def test_connections_are_reused_per_host(plain_servers: tuple[_Server, _Server], tls_server: _Server, certificate: tuple[Path, Path]) -> None:
    plain = plain_servers[0]
    pol = _policy(plain, tls_server, certificate=certificate)
    with Fetcher(pol, concurrency=4) as fetcher:
        for _ in range(5):
            assert fetcher.fetch_many([f"http://127.0.0.1:{plain.port}/img.png"] * 4 + [f"https://127.0.0.1:{tls_server.port}/img.png"] * 4) == [BODY] * 8
        stats = fetcher.stats()
    assert plain.state["requests"] == tls_server.state["requests"] == 20
    assert len(plain.state["connections"]) <= 4 and len(tls_server.state["connections"]) <= 4
    assert stats.connections_opened <= 8 and stats.connections_reused >= 32 and stats.ok == 40


def test_a_pooled_connection_the_server_dropped_is_retried_on_a_fresh_one(plain_servers: tuple[_Server, _Server]) -> None:
    server = plain_servers[0]
    with Fetcher(_policy(server), concurrency=1) as fetcher:
        for _ in range(4):
            assert fetcher.fetch(f"http://127.0.0.1:{server.port}/close-silently") == BODY
            time.sleep(0.05)  # let the server's close arrive: the pooled connection is now dead
    assert server.state["requests"] == 4


def test_fetch_many_keeps_input_order_and_gives_every_uri_one_outcome(plain_servers: tuple[_Server, _Server], tmp_path: Path) -> None:
    server = plain_servers[0]
    (tmp_path / "a.png").write_bytes(b"file-bytes")
    uris = [
        f"http://127.0.0.1:{server.port}/img.png",
        "ftp://127.0.0.1/x",
        f"file://{tmp_path}/a.png",
        f"http://127.0.0.1:{server.port}/missing",
        "http://not-allowed.example/x",
        "s3://no-bucket-allowed/key",
        "",
    ]
    with Fetcher(_policy(server, file_root=tmp_path), concurrency=3) as fetcher:
        results = fetcher.fetch_many(uris)
    assert results[0] == BODY and results[2] == b"file-bytes"
    assert [_error(results[i]).code for i in (1, 3, 4, 5, 6)] == [
        ErrorCode.uri_refused,
        ErrorCode.fetch_failed,
        ErrorCode.uri_refused,
        ErrorCode.uri_refused,
        ErrorCode.uri_refused,
    ]


def test_many_refused_uris_in_one_batch_do_not_recurse() -> None:
    with Fetcher(FetchPolicy(), concurrency=2, per_host=1) as fetcher:
        results = fetcher.fetch_many(["ftp://h/x"] * 5000)
    assert len(results) == 5000 and all(_error(r).code is ErrorCode.uri_refused for r in results)


def test_a_closed_fetcher_refuses_work_and_releases_its_threads(plain_servers: tuple[_Server, _Server]) -> None:
    server = plain_servers[0]
    before = {t.name for t in threading.enumerate()}
    fetcher = Fetcher(_policy(server), concurrency=3, name="fetch-close-test")
    assert fetcher.fetch_many([f"http://127.0.0.1:{server.port}/img.png"] * 3) == [BODY] * 3
    fetcher.close()
    with pytest.raises(RuntimeError):
        fetcher.fetch_many(["http://127.0.0.1/"])
    time.sleep(0.2)
    leftover = {t.name for t in threading.enumerate()} - before
    assert not [n for n in leftover if n.startswith("fetch-close-test")], leftover
