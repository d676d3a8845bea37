"""Command line: ``aigis-worker`` / ``python -m worker``.

python -m worker --bundle DIR [options]     run the streaming worker
python -m worker score --bundle DIR FILE... score files once, no Kafka
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.config import add_arguments, load_config

DESCRIPTION = """\
aigis streaming worker: consumes upload events from Kafka, scores each image with
a CLIP backbone and detector heads on ONNX Runtime, caches scores in Redis and
publishes one verdict (or dead letter) per upload, committing offsets only after
the broker acknowledged them.

Every option can also be set as an environment variable (shown in brackets);
the command line wins over the environment.

Subcommands:
  score FILE...   score image files once without Kafka (python -m worker score --help)
"""

EPILOG = """\
examples:
  python -m worker --bundle bundles/demo --bootstrap-servers kafka:9092 --redis-url redis://redis:6379/0
  AIGIS_BUNDLE=/models/prod AIGIS_MAX_BATCH=64 python -m worker
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigis-worker", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def run_worker(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args)
    from worker.ops.logs import configure

    configure(cfg.log_level, cfg.log_format)
    from worker.app import WorkerApp

    return WorkerApp(cfg).run()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "score":
        from worker.score import main as score_main

        return score_main(argv[1:])
    return run_worker(argv)
