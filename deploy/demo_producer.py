"""Demo producer for deploy/compose.yaml: publish made-up images, then print each verdict or dead letter.

Runs inside the worker image (base dependencies only, no torch). The images are
synthetic (gradients, noise, shapes) plus one corrupt file and one JSON event,
so the output shows both outcomes. Upload ids carry a per-run tag, so runs
against the same topics do not mix. Exit status 0 when every upload got an
outcome within --wait-s, 1 otherwise.

    python deploy/demo_producer.py --bootstrap-servers 127.0.0.1:9092 --count 20
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import time
import uuid

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from PIL import Image, ImageDraw

from worker.runtime.clients import ensure_topics, make_producer


def made_image(i: int, rng: np.random.Generator) -> bytes:
    """One of a few synthetic picture kinds, as JPEG or PNG."""
    w, h = int(rng.integers(160, 480)), int(rng.integers(160, 480))
    kind = i % 3
    if kind == 0:
        x = np.linspace(0, 255, w, dtype=np.float32)
        y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
        arr = np.stack([np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)), np.full((h, w), 128.0)], -1).astype(np.uint8)
        img = Image.fromarray(arr)
    elif kind == 1:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    else:
        img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(8):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            draw.ellipse((x0, y0, x0 + int(rng.integers(10, 120)), y0 + int(rng.integers(10, 120))), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG" if i % 2 == 0 else "PNG", **({"quality": 90} if i % 2 == 0 else {}))
    return buf.getvalue()


def _partitions(consumer: KafkaConsumer, topic: str, timeout_s: float = 60.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return parts
        time.sleep(0.2)
    raise SystemExit(f"topic {topic} has no partitions after {timeout_s:g} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap-servers", default=os.environ.get("AIGIS_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), help="Kafka (default: $AIGIS_BOOTSTRAP_SERVERS)")
    p.add_argument("--input-topic", default="aigis.uploads")
    p.add_argument("--verdict-topic", default="aigis.verdicts")
    p.add_argument("--dead-letter-topic", default="aigis.dead-letters")
    p.add_argument("--count", type=int, default=20, help="images to publish (plus one corrupt file and one JSON event)")
    p.add_argument("--wait-s", type=float, default=300.0, help="how long to wait for every outcome")
    p.add_argument("--max-image-bytes", type=int, default=10 * 1024 * 1024, help="must match the worker's AIGIS_MAX_IMAGE_BYTES")
    args = p.parse_args(argv)

    run = uuid.uuid4().hex[:6]
    topics = [args.input_topic, args.verdict_topic, args.dead_letter_topic]
    print(f"[producer] broker {args.bootstrap_servers}, run {run}", flush=True)
    ensure_topics(args.bootstrap_servers, topics, 6, args.max_image_bytes, timeout_s=120)

    rng = np.random.default_rng(int(run, 16))
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
    for i in range(args.count):
        records.append((f"demo-{run}-{i:03d}".encode(), made_image(i, rng), [("tenant", b"demo")]))
    records.append((f"demo-{run}-corrupt".encode(), made_image(0, rng)[:200], []))
    event = {"upload_id": f"demo-{run}-json", "tenant": "demo", "image_base64": base64.b64encode(made_image(1, rng)).decode()}
    records.append((None, json.dumps(event).encode(), [("content-type", b"application/json")]))
    expected = {(k.decode() if k else f"demo-{run}-json") for k, _, _ in records}

    reader = KafkaConsumer(bootstrap_servers=args.bootstrap_servers.split(","), enable_auto_commit=False, client_id=f"demo-reader-{run}")
    parts = [TopicPartition(t, p) for t in topics[1:] for p in _partitions(reader, t)]
    reader.assign(parts)
    reader.seek_to_end()
    for tp in parts:
        reader.position(tp)  # resolve "end" now, before producing, so no outcome of this run is skipped

    producer = make_producer(args.bootstrap_servers, args.max_image_bytes, client_id=f"demo-producer-{run}")
    for key, value, headers in records:
        producer.send(args.input_topic, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()
    print(f"[producer] published {len(records)} uploads; waiting for their outcomes", flush=True)

    seen: set[str] = set()
    deadline = time.monotonic() + args.wait_s
    while seen != expected and time.monotonic() < deadline:
        for tp, batch in reader.poll(timeout_ms=500).items():
            for r in batch:
                doc = json.loads(r.value)
                uid = doc.get("upload_id")
                if uid not in expected or uid in seen:
                    continue
                seen.add(uid)
                if tp.topic == args.verdict_topic:
                    note = "" if doc["thresholds"]["calibrated"] else "  (uncalibrated head: the label means nothing yet)"
                    print(f"  {uid:24s} {doc['label']:13s} score={doc['score']:.3f} cache={doc['cache']}{note}", flush=True)
                else:
                    print(f"  {uid:24s} DEAD LETTER   {doc['error_code']}: {doc['message'][:60]}", flush=True)
    reader.close()
    missing = expected - seen
    print(f"[producer] {len(seen)}/{len(expected)} outcomes" + (f"; missing: {sorted(missing)}" if missing else ""), flush=True)
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
