"""``python -m bench``: run the benchmarks side by side and write JSON + markdown.

  python -m bench --quick                 every benchmark, short (validates the harness; numbers are noisy)
  python -m bench --all                   every benchmark at full length (tens of minutes on 2 cores)
  python -m bench --only backbone,cache   just these
  python -m bench.report --readme         render the README "Performance" section and the plot from the JSON

Benchmarks (in run order):
  roofline   fp32 matmul peak of this machine and each backbone's FLOPs per image (the physical limit)
  backbone   1. PyTorch eager vs ONNX Runtime: fp32, fused, int8 (CPU); fp16/CUDA/TensorRT with a GPU; batch 1/8/32
  decode     2. full decode + resize vs JPEG draft mode on 12 MP and 2 MP photos, threads 1..N
  streaming  3. worker through the real broker vs the same bundle offline (cache off, unique images)
  baseline   4. a kafka-python + open_clip one-at-a-time consumer vs the aigis worker
  cache      5. all-duplicate stream: worker vs a bare kafka-python loop, with a py-spy profile
  latency    6. p50/p99 produce -> verdict at 50 % / 90 % of capacity, two --max-wait-ms
  uri        events pointing at a store that answers after 50 ms vs the same images inline
  scaling    7. aigis-tiny, ViT-B-16, ViT-L-14 (random weights): how cost grows
  provenance the provenance stage's cost per image on the cache-miss path (target: under 5% of decode) and the watermark's false positives
  augment    export embed --augment K (UFD's training augmentation): images/s and embeddings/s by preprocessing mode and K

Each benchmark writes OUT/NAME.json (machine, command, settings, rows with
median and spread, targets, notes); OUT/results.md is regenerated from all the
JSON files in OUT after every run.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.options import Options
from bench.results import BenchResult


def _registry() -> dict[str, Callable[[Options], BenchResult]]:
    from bench.augment import run_augment
    from bench.backbone import run_backbone, run_roofline, run_scaling
    from bench.decode import run_decode
    from bench.provenance import run_provenance
    from bench.streaming import run_baseline, run_cache, run_latency, run_streaming
    from bench.uri import run_uri

    return {
        "roofline": run_roofline,
        "backbone": run_backbone,
        "decode": run_decode,
        "streaming": run_streaming,
        "baseline": run_baseline,
        "cache": run_cache,
        "latency": run_latency,
        "uri": run_uri,
        "scaling": run_scaling,
        "provenance": run_provenance,
        "augment": run_augment,
    }


NAMES = ["roofline", "backbone", "decode", "streaming", "baseline", "cache", "latency", "uri", "scaling", "provenance", "augment"]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _fractions(text: str) -> list[float]:
    out = [float(x) for x in text.split(",") if x.strip()]
    if not out or not all(0 < x <= 1.5 for x in out):
        raise argparse.ArgumentTypeError(f"expected fractions of capacity such as 0.5,0.9; got {text!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="Run every benchmark (the default when --only is not given).")
    which.add_argument("--only", default=None, help=f"Comma-separated benchmarks to run: {', '.join(NAMES)}.")
    p.add_argument("--quick", action="store_true", help="Short runs on small models to validate the harness (minutes, not tens of minutes).")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="Directory for NAME.json and results.md (default bench/results).")
    p.add_argument("--reps", type=int, default=None, help="Repetitions per measurement (default 5, 3 with --quick).")
    p.add_argument("--arch", default=None, help="Backbone for benchmarks 1-2 (default ViT-B-16; aigis-tiny with --quick).")
    p.add_argument("--batch-sizes", type=_ints, default=None, help="Batch sizes for benchmark 1 (default 1,8,32).")
    p.add_argument("--stream-archs", default=None, help="Bundles the streaming benchmarks run on (default aigis-tiny,ViT-B-16; aigis-tiny with --quick).")
    p.add_argument(
        "--stream-images", type=int, default=None, help="Images per streaming run, every bundle (default 2048 tiny / 160 ViT-B-16; 192 tiny with --quick)."
    )
    p.add_argument("--scaling-archs", default=None, help="Architectures for benchmark 7 (default aigis-tiny,ViT-B-16,ViT-L-14).")
    p.add_argument("--cache-messages", type=int, default=None, help="Messages in the all-duplicate stream (default 12000; 2000 with --quick).")
    p.add_argument("--latency-seconds", type=float, default=None, help="Seconds of offered load per latency point (default 30; 6 with --quick).")
    p.add_argument("--latency-waits", type=_ints, default=None, help="--max-wait-ms values benchmark 6 compares (default 5,50).")
    p.add_argument("--latency-loads", type=_fractions, default=None, help="Offered loads benchmark 6 measures, as fractions of capacity (default 0.5,0.9).")
    p.add_argument(
        "--no-latency-isolate",
        dest="latency_isolate",
        action="store_false",
        help="Skip benchmark 6's second pass with the worker alone on one core (broker, Redis and load generator pinned to the others).",
    )
    p.add_argument(
        "--worker-log-level", default="warning", help="Log level of the workers the benchmarks start (default warning; benchmark 5 also runs one at info)."
    )
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="AIGIS_NAME=VALUE",
        help="Extra setting for every worker started (repeatable), e.g. AIGIS_DECODE_THREADS=1.",
    )
    p.add_argument("--keep-going", action="store_true", help="Run the remaining benchmarks when one fails (the failure is reported at the end).")
    return p


def options_from(args: argparse.Namespace) -> Options:
    opts = Options.quick_defaults(args.out) if args.quick else Options(out=args.out)
    if args.reps:
        opts.reps = args.reps
    if args.arch:
        opts.backbone_arch = args.arch
    if args.batch_sizes:
        opts.batch_sizes = args.batch_sizes
    if args.stream_archs:
        opts.stream_archs = [a.strip() for a in args.stream_archs.split(",") if a.strip()]
    if args.scaling_archs:
        opts.scaling_archs = [a.strip() for a in args.scaling_archs.split(",") if a.strip()]
    if args.cache_messages:
        opts.cache_messages = args.cache_messages
    if args.latency_seconds:
        opts.latency_seconds = args.latency_seconds
    if args.latency_waits:
        opts.latency_waits_ms = args.latency_waits
    if args.latency_loads:
        opts.latency_loads = args.latency_loads
    opts.latency_isolate = args.latency_isolate
    opts.worker_log_level = args.worker_log_level
    for item in args.worker_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("AIGIS_"):
            raise SystemExit(f"--worker-env expects AIGIS_NAME=VALUE, got {item!r}")
        opts.worker_env[name] = value
    for arch in opts.stream_archs:
        opts.stream_images.setdefault(arch, 64)
        if args.stream_images:
            opts.stream_images[arch] = args.stream_images
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = NAMES if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    opts = options_from(args)
    registry = _registry()
    failed: list[str] = []
    from bench.report import write_markdown

    for name in names:
        print(f"== {name}{' (quick)' if opts.quick else ''}", flush=True)
        try:
            result = registry[name](opts)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            if not args.keep_going:
                break
            continue
        path = result.write(opts.out)
        for t in result.targets:
            verdict = "met" if t.met else ("NOT met" if t.met is not None else "n/a")
            shown = f"{t.measured:.3g}" if t.measured is not None else "-"
            print(f"  target {t.name}: {shown}{t.unit} (goal {t.goal}) -> {verdict}", flush=True)
        print(f"  wrote {path} ({result.duration_s:.0f} s)", flush=True)
        try:
            write_markdown(opts.out)
        except Exception:  # the JSON is written; a rendering bug must not cost the remaining benchmarks
            traceback.print_exc()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"results in {opts.out}; README section: python -m bench.report --out {opts.out} --readme", flush=True)
    return 0
