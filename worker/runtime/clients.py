"""Kafka clients configured to carry whole images, and topic creation.

Inline images up to ``max_image_bytes`` must fit through every hop: the
producer's request size, the topic's ``max.message.bytes`` and the consumer's
fetch sizes are all derived from that one number (plus base64/JSON headroom).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import structlog
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from worker.config import WorkerConfig, message_bytes_for

log = structlog.get_logger(__name__)


def make_consumer(
    bootstrap: str, topic: str, group_id: str | None, max_image_bytes: int, client_id: str = "aigis-worker", listener: object | None = None, **kw: object
) -> KafkaConsumer:
    """A consumer sized for whole images, subscribed to ``topic`` (with a rebalance listener if given).

    ``request_timeout_ms`` is 30 s rather than kafka-python's 305 s so that a
    commit against a vanished broker (e.g. in the revoke listener) gives up in
    bounded time; group joins use their own, longer timeout.
    """
    fetch = message_bytes_for(max_image_bytes)
    consumer = KafkaConsumer(
        *([] if listener is not None else [topic]),
        bootstrap_servers=bootstrap.split(","),
        group_id=group_id,
        client_id=f"{client_id}-{os.getpid()}",
        enable_auto_commit=False,
        auto_offset_reset=kw.pop("auto_offset_reset", "earliest"),
        max_partition_fetch_bytes=fetch,
        fetch_max_bytes=max(fetch, 52_428_800),
        request_timeout_ms=kw.pop("request_timeout_ms", 30_000),
        **kw,
    )
    if listener is not None:
        consumer.subscribe(topics=[topic], listener=listener)
    return consumer


@dataclass(frozen=True)
class ConsumerSettings:
    """How the worker's consumer is made: the input topic and group, and the group timing options."""

    bootstrap_servers: str
    topic: str
    group_id: str
    max_image_bytes: int
    client_id: str
    auto_offset_reset: str
    session_timeout_ms: int
    heartbeat_interval_ms: int
    max_poll_interval_ms: int
    fetch_max_wait_ms: int

    @classmethod
    def from_config(cls, cfg: WorkerConfig) -> ConsumerSettings:
        return cls(
            cfg.bootstrap_servers,
            cfg.input_topic,
            cfg.group_id,
            cfg.max_image_bytes,
            cfg.client_id,
            cfg.auto_offset_reset,
            cfg.session_timeout_ms,
            min(cfg.heartbeat_interval_ms, cfg.session_timeout_ms // 3),
            cfg.max_poll_interval_ms,
            cfg.fetch_max_wait_ms,
        )

    def connect(self, listener: ConsumerRebalanceListener) -> KafkaConsumer:
        """A consumer subscribed with ``listener`` (the poll loop owns it from here)."""
        return make_consumer(
            self.bootstrap_servers,
            self.topic,
            self.group_id,
            self.max_image_bytes,
            self.client_id,
            listener=listener,
            auto_offset_reset=self.auto_offset_reset,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            max_poll_interval_ms=self.max_poll_interval_ms,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
        )


def make_producer(bootstrap: str, max_image_bytes: int, client_id: str = "aigis-worker", **kw: object) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        client_id=f"{client_id}-{os.getpid()}",
        acks="all",
        max_request_size=message_bytes_for(max_image_bytes),
        linger_ms=kw.pop("linger_ms", 2),
        retries=kw.pop("retries", 10),
        **kw,
    )


def ensure_topics(bootstrap: str, topics: list[str], partitions: int, max_image_bytes: int, timeout_s: float = 30.0) -> None:
    """Create missing topics with a message size that fits the largest inline image."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="aigis-admin")
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting_for_broker", error=str(exc))
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                t,
                num_partitions=partitions,
                replication_factor=1,
                topic_configs={"max.message.bytes": str(message_bytes_for(max_image_bytes))},
            )
            for t in topics
            if t not in existing
        ]
        if new:
            try:
                admin.create_topics(new)
                log.info("topics_created", topics=[t.name for t in new], partitions=partitions)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
