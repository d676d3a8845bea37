"""``python -m bench.offline``: the offline reference for benchmark 3, in its own torch-free process.

Scores a directory of images with :func:`worker.score.score_files` (the code
behind ``python -m worker score``: the worker's own batch processor, no Kafka,
no Redis) after one warm-up batch, several times, and prints JSON with the
seconds each pass took. A separate process so that its threads and memory are
those of a worker, not of the benchmark process with PyTorch loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from worker.model.bundle import LoadedBundle
from worker.score import expand, score_files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.offline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", type=Path, help="Directory of images.")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--decode-threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--providers", default="CPUExecutionProvider")
    args = p.parse_args(argv)
    files = expand([args.images])
    bundle = LoadedBundle(args.bundle, args.providers.split(","))
    score_files(bundle, files[: args.max_batch], args.max_batch, args.decode_threads)  # warm-up
    seconds, verdicts = [], 0
    for _ in range(args.reps):
        t0 = time.perf_counter()
        outcomes = score_files(bundle, files, args.max_batch, args.decode_threads)
        seconds.append(time.perf_counter() - t0)
        verdicts = sum(o.verdict is not None for o in outcomes)
    json.dump({"images": len(files), "verdicts": verdicts, "seconds": seconds}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
