"""Fetching images referenced by URI, under policy.

Only two kinds of URI are ever followed: ``http(s)://`` to a host on the
allow-list (every redirect hop re-checked), with a timeout and a byte cap
enforced while streaming; and ``file://`` to a path that resolves (symlinks
included) under a configured root. Everything else is refused with
``uri_refused``; network and file errors are ``fetch_failed``.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from schemas import ErrorCode
from worker.errors import InputError


@dataclass(frozen=True)
class FetchPolicy:
    allowed_hosts: frozenset[str] = frozenset()
    file_root: Path | None = None
    timeout_s: float = 5.0
    max_bytes: int = 10 * 1024 * 1024


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        _check_http(newurl, self.policy)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _check_http(uri: str, policy: FetchPolicy) -> None:
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        raise InputError(ErrorCode.uri_refused, f"redirect to scheme {parts.scheme!r} refused")
    host = (parts.hostname or "").lower()
    if host not in policy.allowed_hosts:
        raise InputError(ErrorCode.uri_refused, f"host {host!r} is not on the fetch allow-list")


def _fetch_http(uri: str, policy: FetchPolicy) -> bytes:
    _check_http(uri, policy)
    opener = urllib.request.build_opener(_CheckedRedirects(policy))
    req = urllib.request.Request(uri, headers={"User-Agent": "aigis-worker", "Accept": "image/*"})
    try:
        with opener.open(req, timeout=policy.timeout_s) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                raise InputError(ErrorCode.too_large, f"{uri} declares {length} bytes, limit {policy.max_bytes}")
            data = resp.read(policy.max_bytes + 1)
    except InputError:
        raise
    except urllib.error.HTTPError as exc:
        raise InputError(ErrorCode.fetch_failed, f"GET {uri}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise InputError(ErrorCode.fetch_failed, f"GET {uri}: {exc}") from None
    if len(data) > policy.max_bytes:
        raise InputError(ErrorCode.too_large, f"{uri} is larger than {policy.max_bytes} bytes")
    return data


def _fetch_file(uri: str, policy: FetchPolicy) -> bytes:
    if policy.file_root is None:
        raise InputError(ErrorCode.uri_refused, "file:// URIs are disabled (no fetch_file_root configured)")
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise InputError(ErrorCode.uri_refused, f"file:// URI with host {parts.netloc!r} refused")
    root = policy.file_root.resolve()
    path = Path(urllib.parse.unquote(parts.path)).resolve()
    if root != path and root not in path.parents:
        raise InputError(ErrorCode.uri_refused, f"{path} is outside the allowed root {root}")
    try:
        size = path.stat().st_size
        if size > policy.max_bytes:
            raise InputError(ErrorCode.too_large, f"{path} is {size} bytes, limit {policy.max_bytes}")
        with path.open("rb") as fh:
            return fh.read(policy.max_bytes + 1)
    except InputError:
        raise
    except OSError as exc:
        raise InputError(ErrorCode.fetch_failed, f"cannot read {path}: {exc.strerror or exc}") from None


def fetch(uri: str, policy: FetchPolicy) -> bytes:
    """Bytes behind ``uri`` or ``InputError`` (uri_refused, fetch_failed, too_large)."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_http(uri, policy)
    if scheme == "file":
        return _fetch_file(uri, policy)
    raise InputError(ErrorCode.uri_refused, f"URI scheme {scheme or '(none)'!r} is not supported")
