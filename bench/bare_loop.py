"""``python -m bench.bare_loop``: the ceiling for the cache path (benchmark 5).

The least a Kafka consumer can do per image and still be a verdict service:
poll a batch, sha256 every value, produce a verdict-sized JSON per record,
flush (acks=all), commit. No Redis, no pydantic, no logging, one thread. The
aigis worker on an all-duplicate stream does this plus a Redis MGET, schema
validation and its pipeline hand-offs; the ratio of the two is the overhead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bare_loop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--out-topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--max-records", type=int, default=32, help="Records per poll/flush/commit cycle.")
    args = p.parse_args(argv)
    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 * 1024 * 1024,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=2)
    done = 0
    while done < args.count:
        polled = consumer.poll(timeout_ms=200, max_records=args.max_records)
        futures = []
        for records in polled.values():
            for r in records:
                sha = hashlib.sha256(r.value).hexdigest()
                verdict = {
                    "schema_version": 1,
                    "upload_id": r.key.decode(),
                    "content_sha256": sha,
                    "label": "real",
                    "score": 0.5,
                    "thresholds": {"threshold": 0.5, "uncertain_low": 0.5, "uncertain_high": 0.5},
                    "head_scores": {"linear-probe": 0.5},
                    "bundle": {"name": "bare", "version": "0", "sha256": sha},
                    "cache": "hit",
                    "timings": {"queue_ms": 0.0, "decode_ms": 0.0, "inference_ms": 0.0, "total_ms": 0.0},
                    "produced_at": time.time(),
                }
                futures.append(producer.send(args.out_topic, key=r.key, value=json.dumps(verdict).encode()))
        if not futures:
            continue
        producer.flush()
        for f in futures:
            f.get(timeout=30)
        consumer.commit()
        done += len(futures)
    consumer.close()
    producer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
