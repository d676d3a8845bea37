"""``python -m bench.pickup_probe``: how old records are when a bare consumer receives them (benchmark 6).

Runs beside a worker under load, in its own consumer group on the worker's
input topic, with the worker's fetch settings and no work at all. Its pick-up
age is the floor the broker and the client set *under that load* on this
machine: what is left of the worker's own "to pick-up" time above it is the
worker's (poll cadence, micro-batch wait, a busy prepare stage).

Prints ``ready`` once it holds partitions, then writes the ages (ms) of the
records whose key starts with ``--prefix`` to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kafka import KafkaConsumer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pickup_probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--prefix", required=True, help="Only records whose key starts with this are measured.")
    p.add_argument("--count", type=int, required=True, help="Stop after this many measured records ...")
    p.add_argument("--timeout-s", type=float, required=True, help="... or after this long, whichever comes first.")
    p.add_argument("--fetch-max-wait-ms", type=int, default=25)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap.split(","),
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    deadline = time.monotonic() + args.timeout_s
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(timeout_ms=100)
    for tp in consumer.assignment():
        consumer.position(tp)  # resolve "latest" now, so records sent after "ready" are all seen
    print("ready", flush=True)
    prefix = args.prefix.encode()
    ages: list[float] = []
    while len(ages) < args.count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=100, max_records=500).values():
            now_ms = time.time() * 1000
            ages.extend(now_ms - r.timestamp for r in records if r.key is not None and r.key.startswith(prefix))
    consumer.close(autocommit=False)
    args.out.write_text(json.dumps(ages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
