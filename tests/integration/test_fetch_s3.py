"""s3://bucket/key URIs through the fetcher against a real S3 server (moto's, in this process), credentials from the environment."""

from __future__ import annotations

import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from devkit.servers import free_port
from schemas import ErrorCode
from worker.config import WorkerConfig
from worker.errors import InputError
from worker.ingest.fetch import FetchPolicy
from worker.ingest.fetcher import Fetcher, fetcher_from_config
from worker.ingest.s3 import parse_s3_uri

CAP = 64 * 1024


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer  # dev extra only

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials the way a pod gets them: environment variables (moto accepts any)."""
    for name, value in {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def _put(endpoint: str, path: str, body: bytes = b"") -> None:
    # an explicit content type: urllib would send form-urlencoded, which moto's Flask front end consumes as a form
    req = urllib.request.Request(f"{endpoint}/{path}", data=body, method="PUT", headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req, timeout=10).close()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"uploads-{uuid.uuid4().hex[:10]}"
    _put(s3_endpoint, name)
    return name


def _policy(endpoint: str, *buckets: str, **kw: object) -> FetchPolicy:
    base: dict[str, object] = {"s3_buckets": frozenset(buckets), "s3_endpoint": endpoint, "timeout_s": 5.0, "max_bytes": CAP}
    base.update(kw)
    return FetchPolicy(**base)  # type: ignore[arg-type]


def _error(result: bytes | InputError) -> InputError:
    assert isinstance(result, InputError), f"expected an error, got {len(result)} bytes"
    return result


def test_objects_in_an_allowed_bucket_are_fetched(aws_env: None, s3_endpoint: str, bucket: str) -> None:
    objects = {f"tenant-a/2026/img-{i}.jpg": bytes([i]) * (100 + i) for i in range(40)}
    objects["with space/and+plus.png"] = b"odd-key"
    for key, body in objects.items():
        _put(s3_endpoint, f"{bucket}/{urllib.request.quote(key)}", body)
    uris = [f"s3://{bucket}/{urllib.request.quote(k)}" for k in objects]
    with Fetcher(_policy(s3_endpoint, bucket), concurrency=8) as fetcher:
        results = fetcher.fetch_many(uris, deadline=time.monotonic() + 20)
        assert fetcher.stats().ok == len(objects)
    assert results == list(objects.values())


def test_buckets_off_the_allow_list_and_odd_uris_are_refused(aws_env: None, s3_endpoint: str, bucket: str) -> None:
    _put(s3_endpoint, f"other-{bucket}")
    _put(s3_endpoint, f"other-{bucket}/x.png", b"not yours")
    pol = _policy(s3_endpoint, bucket)
    refused = [
        f"s3://other-{bucket}/x.png",  # exists, readable with these credentials, but not listed
        f"s3://{bucket}/",
        f"s3://{bucket}",
        f"s3://{bucket}/a/../x.png",
        f"s3://{bucket}/a//x.png",
        f"s3://key:secret@{bucket}/x.png",
        f"s3://{bucket}:9000/x.png",
        f"s3://{bucket}/x.png?versionId=1",
        f"s3://{bucket}/x%00.png",
        "s3:///x.png",
    ]
    with Fetcher(pol, concurrency=4) as fetcher:
        results = fetcher.fetch_many(refused)
    assert [_error(r).code for r in results] == [ErrorCode.uri_refused] * len(refused)
    assert "allow-list" in _error(results[0]).message


def test_missing_objects_and_oversized_objects(aws_env: None, s3_endpoint: str, bucket: str) -> None:
    _put(s3_endpoint, f"{bucket}/big.bin", b"\x00" * (CAP + 1))
    _put(s3_endpoint, f"{bucket}/ok.bin", b"\x01" * CAP)
    with Fetcher(_policy(s3_endpoint, bucket), concurrency=2) as fetcher:
        missing, big, ok = fetcher.fetch_many([f"s3://{bucket}/nope.png", f"s3://{bucket}/big.bin", f"s3://{bucket}/ok.bin"])
    assert _error(missing).code is ErrorCode.fetch_failed and "no such object" in _error(missing).message
    assert s3_endpoint.split("//")[1] not in _error(missing).message  # the endpoint is the operator's business, not the uploader's
    assert _error(big).code is ErrorCode.too_large and str(CAP) in _error(big).message
    assert ok == b"\x01" * CAP


def test_the_batch_deadline_holds_against_an_s3_endpoint_that_never_answers(aws_env: None) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with Fetcher(_policy(endpoint, "stuck", timeout_s=30.0), concurrency=8) as fetcher:
            t0 = time.monotonic()
            results = fetcher.fetch_many([f"s3://stuck/k{i}" for i in range(10)], deadline=time.monotonic() + 1.0)
            elapsed = time.monotonic() - t0
    assert all(_error(r).code is ErrorCode.fetch_failed and "timed out" in _error(r).message for r in results)
    assert elapsed < 4  # the batch's 1 s, not the policy's 30 s


def test_http_and_s3_uris_in_one_batch(aws_env: None, s3_endpoint: str, bucket: str) -> None:
    _put(s3_endpoint, f"{bucket}/a.png", b"from-s3")
    with Fetcher(_policy(s3_endpoint, bucket), concurrency=4) as fetcher:
        s3, http = fetcher.fetch_many([f"s3://{bucket}/a.png", "http://not-allowed.example/a.png"])
    assert s3 == b"from-s3" and _error(http).code is ErrorCode.uri_refused


def test_the_worker_config_builds_the_fetcher(aws_env: None, s3_endpoint: str, bucket: str) -> None:
    _put(s3_endpoint, f"{bucket}/cfg.png", b"configured")
    cfg = WorkerConfig(fetch_s3_buckets=f" {bucket.upper()} , other", fetch_s3_endpoint=s3_endpoint, fetch_concurrency=5, fetch_per_host=2)
    with fetcher_from_config(cfg) as fetcher:
        assert (fetcher.concurrency, fetcher.per_host) == (5, 2)
        assert fetcher.fetch(f"s3://{bucket}/cfg.png") == b"configured"
    assert parse_s3_uri(f"s3://{bucket}/cfg.png", fetcher.policy).key == "cfg.png"
