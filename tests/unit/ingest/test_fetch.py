"""URI fetching under policy, against a real HTTP server on 127.0.0.1 and real files.

The server is Python's http.server in a thread: real sockets, real HTTP, with
handlers that misbehave the ways hostile or broken servers do (slow, dripping,
oversized without Content-Length, redirecting elsewhere, not speaking HTTP).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from schemas import ErrorCode
from worker.errors import InputError
from worker.ingest.fetch import FetchPolicy, fetch

BODY = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # bytes only; fetch never decodes
CAP = 4096


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    other_port = 0  # set by the fixture: a second, not-allowed port on the same host

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, length: bool = True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        port = self.server.server_address[1]
        if path == "/img.png":
            self._send(200, BODY, {"Content-Type": "image/png"})
        elif path == "/redirect-same":
            self._send(302, headers={"Location": "/img.png"})
        elif path == "/redirect-absolute":
            self._send(301, headers={"Location": f"http://127.0.0.1:{port}/img.png"})
        elif path == "/redirect-disallowed-host":
            self._send(302, headers={"Location": f"http://localhost:{port}/img.png"})
        elif path == "/redirect-other-port":
            self._send(307, headers={"Location": f"http://127.0.0.1:{self.other_port}/img.png"})
        elif path == "/redirect-file":
            self._send(302, headers={"Location": "file:///etc/passwd"})
        elif path == "/redirect-ftp":
            self._send(308, headers={"Location": "ftp://127.0.0.1/img.png"})
        elif path == "/redirect-loop":
            self._send(302, headers={"Location": "/redirect-loop"})
        elif path == "/slow":
            time.sleep(3)
            self._send(200, BODY)
        elif path == "/drip":  # headers at once, then one byte every 0.2 s: a per-read timeout never fires
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        elif path == "/huge-no-length":  # HTTP/1.0, body delimited by close: only streaming can cap it
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"\x00" * 1024)
            except OSError:
                pass
        elif path == "/huge-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10 * CAP))
            self.end_headers()
        elif path == "/short-body":  # declares more than it sends
            self.send_response(200)
            self.send_header("Content-Length", "2000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
        elif path == "/garbage":  # not HTTP at all: http.client raises BadStatusLine, an HTTPException, not an OSError
            self.wfile.write(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")
        elif path == "/chunked":
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(0, len(BODY), 300):
                part = BODY[i : i + 300]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._send(404, b"not here")


def _serve(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def http_server() -> Iterator[int]:
    """Two real servers on 127.0.0.1: the allowed one (port returned) and another port that is not allowed."""
    ThreadingHTTPServer.daemon_threads = True
    main = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    other = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    main.block_on_close = other.block_on_close = False  # type: ignore[attr-defined]
    _Handler.other_port = other.server_address[1]
    _serve(main)
    _serve(other)
    yield main.server_address[1]
    for s in (main, other):
        s.shutdown()
        s.server_close()


def policy(port: int, **kw: object) -> FetchPolicy:
    base: dict[str, object] = {"allowed_hosts": frozenset({f"127.0.0.1:{port}"}), "timeout_s": 2.0, "max_bytes": CAP}
    base.update(kw)
    return FetchPolicy(**base)  # type: ignore[arg-type]


def code_of(uri: str, pol: FetchPolicy) -> tuple[ErrorCode, str]:
    with pytest.raises(InputError) as info:
        fetch(uri, pol)
    return info.value.code, info.value.message


# -- http(s) --------------------------------------------------------------------------------


def test_allowed_host_and_port_fetches_the_body(http_server: int) -> None:
    assert fetch(f"http://127.0.0.1:{http_server}/img.png", policy(http_server)) == BODY


def test_chunked_transfer_is_read_to_the_end(http_server: int) -> None:
    assert fetch(f"http://127.0.0.1:{http_server}/chunked", policy(http_server)) == BODY


def test_redirects_within_the_allow_list_are_followed(http_server: int) -> None:
    assert fetch(f"http://127.0.0.1:{http_server}/redirect-same", policy(http_server)) == BODY
    assert fetch(f"http://127.0.0.1:{http_server}/redirect-absolute", policy(http_server)) == BODY


def test_host_is_compared_as_written(http_server: int) -> None:
    """localhost and 127.0.0.1 are the same machine, but only the listed spelling is allowed (no DNS in the check)."""
    code, msg = code_of(f"http://localhost:{http_server}/img.png", policy(http_server))
    assert code is ErrorCode.uri_refused and "localhost" in msg
    assert code_of(f"http://2130706433:{http_server}/img.png", policy(http_server))[0] is ErrorCode.uri_refused  # 127.0.0.1 as one number
    assert code_of(f"http://127.0.0.1.:{http_server}/img.png", policy(http_server))[0] is ErrorCode.uri_refused  # trailing dot
    assert fetch(f"http://LOCALHOST:{http_server}/img.png", policy(http_server, allowed_hosts=frozenset({f"localhost:{http_server}"}))) == BODY


def test_a_bare_host_entry_allows_only_the_default_port(http_server: int) -> None:
    pol = policy(http_server, allowed_hosts=frozenset({"127.0.0.1"}))
    code, msg = code_of(f"http://127.0.0.1:{http_server}/img.png", pol)
    assert code is ErrorCode.uri_refused and str(http_server) in msg


def test_redirect_to_a_disallowed_host_port_or_scheme_is_refused(http_server: int) -> None:
    pol = policy(http_server)
    for path in ("redirect-disallowed-host", "redirect-other-port", "redirect-file", "redirect-ftp"):
        assert code_of(f"http://127.0.0.1:{http_server}/{path}", pol)[0] is ErrorCode.uri_refused, path
    # a hop to another port is refused even when that port is on the list (the README's promise): ports are part of the policy
    both = policy(http_server, allowed_hosts=frozenset({f"127.0.0.1:{http_server}", f"127.0.0.1:{_Handler.other_port}"}))
    code, msg = code_of(f"http://127.0.0.1:{http_server}/redirect-other-port", both)
    assert code is ErrorCode.uri_refused and "port" in msg
    assert fetch(f"http://127.0.0.1:{_Handler.other_port}/img.png", both) == BODY  # the refusal was the policy, not the network


def test_redirect_loop_ends_as_fetch_failed(http_server: int) -> None:
    code, msg = code_of(f"http://127.0.0.1:{http_server}/redirect-loop", policy(http_server, max_redirects=3))
    assert code is ErrorCode.fetch_failed and "redirects" in msg


def test_slow_server_times_out(http_server: int) -> None:
    code, msg = code_of(f"http://127.0.0.1:{http_server}/slow", policy(http_server, timeout_s=0.5))
    assert code is ErrorCode.fetch_failed and "timed out" in msg


def test_the_timeout_is_a_deadline_not_a_per_read_timeout(http_server: int) -> None:
    """A byte every 0.2 s keeps every single read under a 1 s socket timeout; the 1 s deadline still ends it."""
    code, msg = code_of(f"http://127.0.0.1:{http_server}/drip", policy(http_server, timeout_s=1.0))
    assert code is ErrorCode.fetch_failed and "timed out" in msg


def test_oversized_body_without_content_length_is_cut_while_streaming(http_server: int) -> None:
    code, msg = code_of(f"http://127.0.0.1:{http_server}/huge-no-length", policy(http_server))
    assert code is ErrorCode.too_large and str(CAP) in msg
    assert len(fetch(f"http://127.0.0.1:{http_server}/huge-no-length", policy(http_server, max_bytes=64 * 1024))) == 64 * 1024


def test_declared_oversized_body_is_refused_before_reading(http_server: int) -> None:
    assert code_of(f"http://127.0.0.1:{http_server}/huge-declared", policy(http_server))[0] is ErrorCode.too_large


def test_http_errors_and_broken_servers_are_fetch_failed(http_server: int) -> None:
    pol = policy(http_server)
    code, msg = code_of(f"http://127.0.0.1:{http_server}/missing", pol)
    assert code is ErrorCode.fetch_failed and "404" in msg
    assert code_of(f"http://127.0.0.1:{http_server}/garbage", pol)[0] is ErrorCode.fetch_failed
    assert code_of(f"http://127.0.0.1:{http_server}/short-body", pol)[0] is ErrorCode.fetch_failed


def test_connection_refused_is_fetch_failed() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert code_of(f"http://127.0.0.1:{port}/img.png", policy(port))[0] is ErrorCode.fetch_failed


def test_https_verifies_certificates(http_server: int) -> None:
    """TLS to a server that does not speak it (or lacks a valid certificate) fails; it is never downgraded."""
    assert code_of(f"https://127.0.0.1:{http_server}/img.png", policy(http_server))[0] is ErrorCode.fetch_failed


def test_addresses_that_are_never_image_hosts_are_refused_even_when_listed() -> None:
    """169.254.169.254 is the cloud metadata service: refused before any connection is made."""
    for host in ("169.254.169.254", "0.0.0.0", "224.0.0.1", "[fe80::1]", "[::ffff:169.254.169.254]"):
        entry = host.strip("[]").lower() if host.startswith("[") else host
        pol = FetchPolicy(allowed_hosts=frozenset({entry}), timeout_s=1.0)
        assert code_of(f"http://{host}/latest/meta-data/", pol)[0] is ErrorCode.uri_refused, host


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://127.0.0.1/img.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "gopher://127.0.0.1:70/_x",
        "javascript:alert(1)",
        "img.png",
        "/abs/path/img.png",
        "//127.0.0.1/img.png",
        "",
        "http://",
        "http://user:pass@127.0.0.1/img.png",
        "http://[::1/img.png",
        "http://127.0.0.1:99999/img.png",
    ],
)
def test_everything_else_is_uri_refused(uri: str) -> None:
    pol = FetchPolicy(allowed_hosts=frozenset({"127.0.0.1"}), timeout_s=1.0, file_root=Path("/"))
    assert code_of(uri, pol)[0] is ErrorCode.uri_refused


# -- file:// --------------------------------------------------------------------------------


@pytest.fixture
def file_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(BODY)
    (root / "sub" / "b.png").write_bytes(BODY[::-1])
    (root / "big.png").write_bytes(b"\x00" * (CAP + 1))
    (tmp_path / "secret.txt").write_bytes(b"outside the root")
    (root / "escape.png").symlink_to(tmp_path / "secret.txt")
    (root / "inside-link.png").symlink_to(root / "a.png")
    os.mkfifo(root / "pipe.png")
    return root


def fpol(root: Path | None) -> FetchPolicy:
    return FetchPolicy(file_root=root, max_bytes=CAP)


def test_file_under_the_root_is_read(file_tree: Path) -> None:
    assert fetch(f"file://{file_tree}/a.png", fpol(file_tree)) == BODY
    assert fetch(f"file://localhost{file_tree}/sub/b.png", fpol(file_tree)) == BODY[::-1]
    assert fetch(f"file://{file_tree}/sub%2Fb.png", fpol(file_tree)) == BODY[::-1]  # percent-encoding is decoded, then checked
    assert fetch(f"file://{file_tree}/inside-link.png", fpol(file_tree)) == BODY  # a symlink that stays inside is fine


def test_file_uris_are_refused_without_a_root(file_tree: Path) -> None:
    assert code_of(f"file://{file_tree}/a.png", fpol(None))[0] is ErrorCode.uri_refused


def test_file_escapes_are_refused(file_tree: Path) -> None:
    pol = fpol(file_tree)
    outside = file_tree.parent / "secret.txt"
    for uri in (
        f"file://{outside}",  # plainly outside
        f"file://{file_tree}/escape.png",  # symlink pointing outside
        f"file://{file_tree}/sub/../a.png",  # '..' is refused even when it would stay inside
        f"file://{file_tree}/sub/%2E%2E/a.png",  # ... also percent-encoded
        f"file://{file_tree}/../secret.txt",
        "file:a.png",  # relative
        f"file://{file_tree}/a.png%00.jpg",  # NUL
        f"file://otherhost{file_tree}/a.png",  # remote host
    ):
        assert code_of(uri, pol)[0] is ErrorCode.uri_refused, uri


def test_file_that_is_missing_a_directory_or_a_fifo_is_fetch_failed(file_tree: Path) -> None:
    """A FIFO would block open() or read() forever: it is refused as not a regular file."""
    pol = fpol(file_tree)
    for name in ("missing.png", "sub", "pipe.png"):
        assert code_of(f"file://{file_tree}/{name}", pol)[0] is ErrorCode.fetch_failed, name


def test_file_over_the_size_cap_is_too_large(file_tree: Path) -> None:
    assert code_of(f"file://{file_tree}/big.png", fpol(file_tree))[0] is ErrorCode.too_large
