"""``python -m bench.naive_consumer``: the consumer a user would write without aigis (benchmark 4).

What the papers' code and most tutorials do: a kafka-python consumer loop
(auto-commit on), and for each message decode with Pillow, open_clip's own
preprocessing transform, ``model.encode_image`` on a batch of one in PyTorch
eager under ``torch.no_grad``, the linear probe, and ``producer.send`` of a
small JSON verdict. Same weights as the aigis bundle it is compared with: the
same open_clip architecture built with the same seed (random weights, as every
benchmark bundle), and the probe's weights read from the bundle's head ONNX.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
from kafka import KafkaConsumer, KafkaProducer
from PIL import Image

from export.clip import register_project_configs


def linear_head(head_onnx: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (D,), bias ()) of a one-layer probe, read from its ONNX initialisers."""
    import onnx
    from onnx import numpy_helper

    arrays = [numpy_helper.to_array(t) for t in onnx.load(str(head_onnx)).graph.initializer]
    weight = next(a for a in arrays if a.ndim == 2 and 1 in a.shape)
    bias = next(a for a in arrays if a.size == 1 and a is not weight)
    return torch.from_numpy(np.ascontiguousarray(weight.reshape(-1))).float(), torch.tensor(float(bias.reshape(-1)[0]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.naive_consumer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--out-topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--head", type=Path, required=True, help="The bundle's linear-probe head ONNX (its weights are reused).")
    p.add_argument("--count", type=int, required=True, help="Stop after this many messages.")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    register_project_configs()
    torch.manual_seed(args.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(args.arch, pretrained=None)
    model.eval()
    w, b = linear_head(args.head)

    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 * 1024 * 1024,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, value_serializer=lambda v: json.dumps(v).encode())
    for done, msg in enumerate(consumer, start=1):
        image = Image.open(io.BytesIO(msg.value)).convert("RGB")
        x = preprocess(image).unsqueeze(0)
        with torch.no_grad():
            emb = model.encode_image(x)
            score = torch.sigmoid(emb[0] @ w + b).item()
        producer.send(args.out_topic, key=msg.key, value={"upload_id": msg.key.decode(), "score": score})
        if done >= args.count:
            break
    producer.flush()
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
