"""``s3://bucket/key`` images through obstore, with a bucket allow-list and credentials from the environment.

Why obstore (the Rust ``object_store`` crate) rather than boto3:

* **Deadlines.** obstore's ``timeout`` client option bounds a whole request
  (connect to last body byte); botocore has only connect and per-read
  timeouts, which a slow-dripping server (or a wedged proxy) defeats, the
  same hole the HTTP fetcher closes. Here every request also runs under the
  batch's deadline in asyncio (``wait_for``), and a request cancelled at the
  deadline is dropped with its connection, not left running in a thread.
* **Threads and pooling.** One ``S3Store`` per bucket is safe to share
  between threads and tasks and pools its (HTTP/1.1 keep-alive, TLS)
  connections; boto3 clients are thread-safe too, but sessions and resources
  are not, and every concurrent request holds a thread, whereas here dozens of
  GETs in flight cost one event-loop thread.
* **Size in the worker image.** obstore is one 5.6 MB wheel (16 MB
  installed) with no Python dependencies; boto3 needs botocore, s3transfer
  and jmespath, and botocore alone is 32 MB installed (measured in this
  venv), almost all of it models of AWS services the worker never calls.

Policy: the bucket must be on ``FetchPolicy.s3_buckets`` (compared
lower-cased and exactly); the key is the URI path, percent-decoded, and must
be non-empty, without ``.``/``..`` segments, empty segments or control
characters (object_store would normalise them, so the object read could
differ from the one named). Credentials come from the environment as for any
AWS SDK (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
web identity, the container or instance role), never from the URI or the
command line. The endpoint (for MinIO or another S3-compatible store) and
region come from the policy or the environment. The object's size, from the
response, is checked against the byte limit before its body is read, and the
body is read in chunks under the cap as well.

Errors: ``uri_refused`` (bucket not allowed, malformed), ``fetch_failed``
(missing object, access denied, timeout, network), ``too_large``; the
messages name the bucket and key as sent, not the endpoint or the SDK's text.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from schemas import ErrorCode
from worker.errors import InputError
from worker.ingest.fetch import FetchPolicy

if TYPE_CHECKING:  # TypedDicts that exist only in obstore's stubs
    from obstore.store import ClientConfig, RetryConfig, S3Config

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(uri: str, policy: FetchPolicy) -> S3Location:
    """Bucket and key of an ``s3://`` URI under the allow-list; raises ``uri_refused``."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError as exc:
        raise InputError(ErrorCode.uri_refused, f"malformed URI: {exc}") from None
    if parts.scheme.lower() != "s3":
        raise InputError(ErrorCode.uri_refused, "not an s3:// URI")
    if parts.username is not None or parts.password is not None or parts.port is not None or parts.query or parts.fragment:
        raise InputError(ErrorCode.uri_refused, "s3:// URIs are s3://bucket/key, without credentials, port, query or fragment")
    bucket = (parts.hostname or "").lower()
    if not bucket:
        raise InputError(ErrorCode.uri_refused, "s3:// URI has no bucket")
    if bucket not in policy.s3_buckets:
        raise InputError(ErrorCode.uri_refused, f"bucket {bucket!r} is not on the s3 bucket allow-list")
    key = urllib.parse.unquote(parts.path.removeprefix("/"))
    if not key:
        raise InputError(ErrorCode.uri_refused, "s3:// URI has no key")
    if any(seg in ("", ".", "..") for seg in key.split("/")):
        raise InputError(ErrorCode.uri_refused, "s3:// key has an empty, '.' or '..' segment")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InputError(ErrorCode.uri_refused, "s3:// key contains control characters")
    return S3Location(bucket, key)


class S3Client:
    """GETs from S3 on one asyncio loop thread: bounded concurrency, one store per bucket, deadlines by cancellation."""

    def __init__(self, policy: FetchPolicy, concurrency: int = 32, name: str = "fetch-s3") -> None:
        self.policy = policy
        self.concurrency = concurrency
        self._stores: dict[str, S3Store] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        self._sem = asyncio.run_coroutine_threadsafe(self._make_semaphore(), self._loop).result()

    async def _make_semaphore(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.concurrency)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._ready.set()
        self._loop.run_forever()

    def _store(self, bucket: str) -> S3Store:
        store = self._stores.get(bucket)
        if store is None:
            timeout = timedelta(seconds=self.policy.timeout_s)
            client: ClientConfig = {"timeout": timeout, "connect_timeout": timeout}
            config: S3Config = {}
            if self.policy.s3_endpoint:
                config["endpoint"] = self.policy.s3_endpoint
                client["allow_http"] = self.policy.s3_endpoint.startswith("http://")
            if self.policy.s3_region:
                config["region"] = self.policy.s3_region
            retry: RetryConfig = {"max_retries": 1, "retry_timeout": timeout}
            store = self._stores[bucket] = S3Store(bucket, config=config, client_options=client, retry_config=retry)
        return store

    def submit(self, uri: str, deadline: float) -> Future[bytes]:
        """Start fetching ``uri`` (an allowed s3:// URI) by ``deadline`` (``time.monotonic()``); the future holds bytes or ``InputError``."""
        return asyncio.run_coroutine_threadsafe(self._get(uri, deadline), self._loop)

    async def _get(self, uri: str, deadline: float) -> bytes:
        location = parse_s3_uri(uri, self.policy)
        store = self._store(location.bucket)
        async with self._sem:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InputError(ErrorCode.fetch_failed, f"GET {location}: timed out (fetch deadline)")
            try:
                return await asyncio.wait_for(self._read(store, location), remaining)
            except InputError:
                raise
            except TimeoutError:
                raise InputError(ErrorCode.fetch_failed, f"GET {location}: timed out (fetch deadline)") from None
            except (NotFoundError, FileNotFoundError):
                raise InputError(ErrorCode.fetch_failed, f"GET {location}: no such object") from None
            except (PermissionDeniedError, UnauthenticatedError, PermissionError):
                raise InputError(ErrorCode.fetch_failed, f"GET {location}: access denied") from None
            except Exception as exc:  # obstore's GenericError and friends carry endpoint URLs and SDK text: not for the uploader
                raise InputError(ErrorCode.fetch_failed, f"GET {location}: S3 request failed ({type(exc).__name__})") from None

    async def _read(self, store: S3Store, location: S3Location) -> bytes:
        result = await obstore.get_async(store, location.key)
        size = int(result.meta["size"])
        if size > self.policy.max_bytes:
            raise InputError(ErrorCode.too_large, f"GET {location}: object is {size} bytes, limit {self.policy.max_bytes}")
        chunks: list[bytes] = []
        total = 0
        async for chunk in result.stream(min_chunk_size=_CHUNK):
            total += len(chunk)
            if total > self.policy.max_bytes:
                raise InputError(ErrorCode.too_large, f"GET {location}: body exceeds {self.policy.max_bytes} bytes")
            chunks.append(bytes(chunk))
        return b"".join(chunks)

    def close(self) -> None:
        self._stores.clear()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
