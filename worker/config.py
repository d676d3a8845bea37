"""Worker configuration: one pydantic model, three sources.

Every field is settable as ``--kebab-case`` on the command line and as
``AIGIS_UPPER_SNAKE`` in the environment (command line wins, then environment,
then the default). The argparse parser is generated from the model, so ``--help``
always documents every option with its variable and default, and deploy
manifests can be checked against :func:`env_var_names`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.provenance import ProvenancePolicy

ENV_PREFIX = "AIGIS_"

_GROUPS = {
    "kafka": "Kafka",
    "model": "Model bundle and inference",
    "cache": "Redis cache",
    "input": "Input limits and fetching",
    "runtime": "Batching and runtime",
    "provenance": "Provenance",
    "ops": "Operations",
    "drift": "Drift monitoring",
}


def _f(default: Any, help: str, group: str, **kw: Any) -> Any:
    return Field(default, description=help, json_schema_extra={"group": group}, **kw)


class WorkerConfig(BaseModel):
    """Everything a worker process needs to know; validated once at start-up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Kafka
    bootstrap_servers: str = _f("127.0.0.1:9092", "Kafka bootstrap servers, comma-separated host:port.", "kafka")
    input_topic: str = _f("aigis.uploads", "Topic the upload events arrive on.", "kafka")
    verdict_topic: str = _f("aigis.verdicts", "Topic verdicts are published to (key = upload id).", "kafka")
    dead_letter_topic: str = _f("aigis.dead-letters", "Topic undecodable or refused uploads go to, with an error code.", "kafka")
    group_id: str = _f("aigis-workers", "Consumer group; run N workers with the same group to scale out.", "kafka")
    client_id: str = _f("aigis-worker", "Kafka client id prefix (the pid is appended).", "kafka")
    create_topics: bool = _f(False, "Create the three topics at start-up if missing (development convenience).", "kafka")
    topic_partitions: int = _f(6, "Partitions for topics created by --create-topics.", "kafka", ge=1)
    session_timeout_ms: int = _f(10_000, "Consumer group session timeout: how soon a dead worker's partitions move.", "kafka", ge=500)
    heartbeat_interval_ms: int = _f(3_000, "Consumer heartbeat interval (keep below a third of the session timeout).", "kafka", ge=100)
    fetch_max_wait_ms: int = _f(
        25, "Longest the broker holds a fetch open waiting for data; kafka-python's 500 ms default adds that much latency at low load.", "kafka", ge=0
    )
    max_poll_interval_ms: int = _f(300_000, "Longest gap between polls before the group evicts this worker.", "kafka", ge=1000)
    auto_offset_reset: str = _f("earliest", "Where a new consumer group starts: earliest or latest.", "kafka", pattern="^(earliest|latest)$")
    # Model
    bundle: Path | None = _f(None, "Model bundle directory (manifest.json + ONNX files). Required to run.", "model")
    providers: str = _f(
        "CUDAExecutionProvider,CPUExecutionProvider",
        "ONNX Runtime execution providers in order of preference; unavailable ones are skipped (CPU is the last resort).",
        "model",
    )
    intra_op_threads: int = _f(0, "ONNX Runtime intra-op threads (0 = ORT default: one per physical core).", "model", ge=0)
    intra_op_spinning: bool = _f(
        False,
        "Let ONNX Runtime's idle intra-op threads spin-wait for the next run (ORT's default). Off by default: spinning takes the cores "
        "decoding needs (README: Latency); worth trying on a node with cores to spare.",
        "model",
    )
    shadow_bundle: Path | None = _f(
        None, "A second bundle scored on every freshly inferred image; its score rides along as `shadow`, never changing the label.", "model"
    )
    bundle_watch_interval_s: float = _f(5.0, "How often to check the bundle's manifest.json for a new version to hot-swap (0 = only on SIGHUP).", "model", ge=0)
    # Cache
    redis_url: str = _f("redis://127.0.0.1:6379/0", "Redis for the verdict cache; empty string disables caching.", "cache")
    cache_ttl_s: int = _f(7 * 24 * 3600, "Seconds a cached verdict lives.", "cache", ge=1)
    redis_timeout_s: float = _f(0.5, "Socket timeout for every Redis call; a slow Redis is treated as a miss.", "cache", gt=0)
    cache_breaker_failures: int = _f(3, "Consecutive Redis failures that open the circuit breaker (cache bypassed).", "cache", ge=1)
    cache_breaker_reset_s: float = _f(5.0, "Seconds the breaker stays open before one probe call tries Redis again.", "cache", gt=0)
    cache_scope: Literal["global", "tenant"] = _f(
        "global",
        "`global`: one cache entry per image and bundle, shared by all tenants (a tenant can tell that someone uploaded the same bytes before: "
        "`cache: hit`, `inference_ms: 0`). `tenant`: the tenant is part of every key, so nothing is shared or revealed across tenants, "
        "at the cost of scoring and storing a popular image once per tenant.",
        "cache",
    )
    near_duplicate_max_distance: int = _f(
        -1,
        "Serve exact-cache misses from a cached image whose 64-bit pHash is within this Hamming distance (-1 = off). "
        "Risk: pHash collisions are easy to make on purpose, so an uploader can craft an image that inherits another image's verdict "
        "without being scored; leave it off for adversarial uploaders, keep the distance small, prefer `--cache-scope tenant`.",
        "cache",
        ge=-1,
        le=15,
    )
    near_duplicate_scan_limit: int = _f(
        256,
        "Most near-duplicate index entries read per lookup, and kept per hash band (newest first); entries expire with their verdicts.",
        "cache",
        ge=1,
        le=100_000,
    )
    # Input
    max_image_bytes: int = _f(10 * 1024 * 1024, "Largest image accepted, in bytes (checked before decoding).", "input", ge=1024)
    max_image_pixels: int = _f(40_000_000, "Largest decoded image, in pixels; above this is a decompression bomb.", "input", ge=1)
    min_image_side: int = _f(8, "Smallest accepted width/height in pixels.", "input", ge=1)
    fetch_allowed_hosts: str = _f(
        "",
        "Comma-separated hosts http(s) URIs may point at, compared as written in the URI: `host` allows the default port (80/443), "
        "`host:port` that port only. Empty refuses all http(s) URIs.",
        "input",
    )
    fetch_file_root: Path | None = _f(None, "Directory file:// URIs must lie under; unset refuses file:// URIs.", "input")
    fetch_timeout_s: float = _f(
        5.0, "Deadline for fetching a URI image: DNS, connect, TLS, redirects and body together; also the deadline of a whole batch's fetches.", "input", gt=0
    )
    fetch_concurrency: int = _f(64, "URI fetches in flight per worker, on the fetcher's own threads (never the decode threads).", "input", ge=1, le=1024)
    fetch_per_host: int = _f(
        32, "Most fetches in flight to one host (or S3 bucket) within a batch, so one slow host cannot hold every fetch thread.", "input", ge=1, le=1024
    )
    fetch_s3_buckets: str = _f(
        "",
        "Comma-separated buckets s3://bucket/key URIs may name (exact, case-insensitive). Empty refuses all s3:// URIs. "
        "Credentials come from the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, web identity, instance role).",
        "input",
    )
    fetch_s3_endpoint: str = _f("", "S3 endpoint URL for S3-compatible stores (MinIO, Ceph); empty = AWS (or AWS_ENDPOINT_URL).", "input")
    fetch_s3_region: str = _f("", "S3 region; empty = from AWS_REGION / AWS_DEFAULT_REGION.", "input")
    decode_timeout_s: float = _f(5.0, "Per-image limit on decode + preprocess; slower images are dead-lettered as decode_timeout (0 = none).", "input", ge=0)
    dead_letter_payload_max_bytes: int = _f(
        1024 * 1024, "Original payloads up to this size are copied into the dead letter (base64) for replay.", "input", ge=0
    )
    # Runtime
    max_batch: int = _f(32, "Most images per inference batch.", "runtime", ge=1)
    max_wait_ms: int = _f(
        5,
        "Longest a batch waits to fill once it has its first image, and only while the decode stage is busy: "
        "a batch whose next stage is idle leaves at once, under load batches fill without waiting (README: Latency).",
        "runtime",
        ge=0,
    )
    decode_threads: int = _f(2, "Threads that fetch/decode/preprocess images in parallel with inference.", "runtime", ge=1)
    max_in_flight: int = _f(0, "Records in the pipeline before partitions are paused (0 = 4 x max-batch); resumed at half.", "runtime", ge=0)
    shutdown_grace_s: float = _f(20.0, "On SIGTERM: seconds to finish and deliver in-flight batches before leaving the group anyway.", "runtime", gt=0)
    exit_when_idle_s: float = _f(
        0.0, "Exit after this many seconds without input, counted from the first assignment (0 = run forever). For bounded runs.", "runtime", ge=0
    )
    # Provenance
    provenance_policy: ProvenancePolicy = _f(
        ProvenancePolicy.decide,
        "off: read no provenance; annotate: read C2PA, IPTC/XMP, generator metadata and the SD watermark into the verdict, label from the model; "
        "decide: also label ai_generated when a trusted valid C2PA manifest declares AI or the watermark matches (nothing makes an image real).",
        "provenance",
    )
    provenance_trust_anchors: Path | None = _f(
        None,
        "PEM file of C2PA trust anchors (CA certificates). Unset: signers are reported, none is trusted, so no manifest decides a label.",
        "provenance",
    )
    provenance_timeout_s: float = _f(
        2.0,
        "Per-image limit on the provenance read, counted after decode + preprocess and apart from --decode-timeout-s; "
        "a slower read makes every signal unreadable ('timed out'), the image still gets the model's verdict (0 = none).",
        "provenance",
        ge=0,
    )
    # Ops
    metrics_port: int = _f(0, "Port for /metrics (Prometheus), /healthz (liveness) and /readyz (readiness); 0 = off.", "ops", ge=0, le=65535)
    liveness_timeout_s: float = _f(60.0, "/healthz fails when the poll loop or a pipeline stage made no progress for this long.", "ops", gt=0)
    log_level: str = _f("info", "Log level: debug, info, warning, error.", "ops", pattern="^(debug|info|warning|error)$")
    log_format: str = _f("json", "json (one object per line) or console (for humans).", "ops", pattern="^(json|console)$")
    # Drift (label-free statistics over a sliding window of fresh verdicts; see README, Drift)
    drift_monitor: bool = _f(True, "Keep drift statistics for bundles whose manifest has a drift reference (gauges, reports, warnings).", "drift")
    drift_topic: str = _f("aigis.drift", "Topic DriftReport events go to when a statistic crosses its threshold (key = bundle sha256).", "drift")
    drift_window_images: int = _f(1000, "Sliding window: the most recent fresh (non-cached) verdicts the statistics are computed over.", "drift", ge=50)
    drift_window_s: float = _f(3600.0, "Sliding window: verdicts older than this many seconds leave the window.", "drift", gt=0)
    drift_min_images: int = _f(300, "No statistic is judged before the window holds this many verdicts.", "drift", ge=20)
    drift_eval_every: int = _f(50, "Judge the statistics every this many fresh verdicts.", "drift", ge=1)
    drift_alpha: float = _f(
        1e-4, "False-alarm probability per statistic and judgement on a stable stream; sets every threshold with the window size.", "drift", gt=0, lt=0.5
    )
    drift_psi_min: float = _f(0.1, "Smallest score-distribution shift (PSI) that can alarm, however large the window.", "drift", ge=0)
    drift_rate_min_excess: float = _f(
        0.02, "Smallest excess of the uncertain-band or novelty rate over its expected value that can alarm (absolute share).", "drift", ge=0, lt=1
    )

    @field_validator("providers")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not [p for p in v.split(",") if p.strip()]:
            raise ValueError("at least one provider is required")
        return v

    @field_validator("provenance_trust_anchors")
    @classmethod
    def _anchors_file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{v} is not a file")
        return v

    @property
    def provider_list(self) -> list[str]:
        return [p.strip() for p in self.providers.split(",") if p.strip()]

    @property
    def allowed_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.fetch_allowed_hosts.split(",") if h.strip())

    @property
    def s3_buckets(self) -> frozenset[str]:
        return frozenset(b.strip().lower() for b in self.fetch_s3_buckets.split(",") if b.strip())


#: What a JSON upload event may hold beside its base64 image (ids, URI, content type, timestamps).
EVENT_HEADROOM_BYTES = 64 * 1024
#: What a record on any of the worker's topics may hold beside a base64 image: the event's headroom and
#: room for a dead letter's envelope around a payload copy.
RECORD_HEADROOM_BYTES = 256 * 1024


def base64_bytes(n: int) -> int:
    """Length of the base64 text of ``n`` bytes."""
    return n * 4 // 3


def inline_event_max_bytes(max_image_bytes: int) -> int:
    """Largest JSON upload event that can carry an image under the limit; larger ones are refused before parsing."""
    return base64_bytes(max_image_bytes) + EVENT_HEADROOM_BYTES


def message_bytes_for(max_image_bytes: int) -> int:
    """Largest record a topic and the producer must accept: base64 of the image plus envelope headroom.

    Inline images up to ``max_image_bytes`` must fit through every hop, so the
    producer's request size, the topics' ``max.message.bytes`` and the
    consumer's fetch sizes all derive from this one number, and every outcome
    the worker builds is sized to fit it.
    """
    return base64_bytes(max_image_bytes) + RECORD_HEADROOM_BYTES


def env_var(field: str) -> str:
    return ENV_PREFIX + field.upper()


def env_var_names() -> set[str]:
    """Every environment variable the worker reads (deploy manifests are checked against this)."""
    return {env_var(name) for name in WorkerConfig.model_fields}


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or (get_origin(annotation) is not None and bool in get_args(annotation))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per config field, grouped, with env var and default in the help."""
    groups = {key: parser.add_argument_group(title) for key, title in _GROUPS.items()}
    for name, info in WorkerConfig.model_fields.items():
        extra = info.json_schema_extra or {}
        group = groups[str(extra.get("group", "ops"))] if isinstance(extra, dict) else parser
        flag = "--" + name.replace("_", "-")
        default = info.default
        shown = "unset" if default is None or default == "" else default
        help_text = f"{info.description} [env {env_var(name)}; default: {shown}]"
        if _is_bool(info.annotation):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, default=None, metavar=name.upper(), help=help_text)


def load_config(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """Merge defaults < environment < command line and validate.

    Raises ``SystemExit`` with every problem listed when validation fails, so a
    misconfigured pod dies at start with a message instead of misbehaving later.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in WorkerConfig.model_fields:
        if env_var(name) in environ:
            raw = environ[env_var(name)]
            values[name] = raw if not _is_bool(WorkerConfig.model_fields[name].annotation) else raw.strip().lower() in {"1", "true", "yes", "on"}
        if args is not None and getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    try:
        return WorkerConfig(**values)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc'])} ({'--' + str(e['loc'][0]).replace('_', '-')} / {env_var(str(e['loc'][0]))}): {e['msg']}"
            for e in exc.errors()
        ]
        raise SystemExit("invalid worker configuration:\n" + "\n".join(lines)) from None


def config_from_argv(argv: Sequence[str] | None = None) -> WorkerConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_config(parser.parse_args(argv))
