"""``python -m export benchmark OUT``: the synthetic benchmark end to end, and the README's detector tables.

synth (``OUT/data``) -> embed the training split once (views for NTF, native
crops for freq) -> one bundle per method (``OUT/bundles/<method>``, trained
with ``--profile``) -> ``export eval`` of all bundles on the test split
(``OUT/report``) through the worker's runtime. ``--readme README.md`` rewrites
the generated parts of the README's detectors section: the methods table
(from the registry: paper, inputs, default hyper-parameters) and the results,
with the command that produced them.

``--exclude-generator G`` trains without generator G (leave-one-generator-out);
G stays in the test split, so its column is the unseen-generator result.

The data are the project's synthetic generators: a functional benchmark of the
whole train/export/serve/evaluate path, not evidence about real generators.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from export import heads as head_registry

METHODS_START = "<!-- detectors:methods:start -->"
METHODS_END = "<!-- detectors:methods:end -->"


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "/".join(_short(x) for x in v)
    return str(v)


def methods_table() -> str:
    """Markdown table of every registered method, generated from the code (never typed by hand)."""
    lines = ["| method | follows | reads | defaults (the paper's where it gives them) |", "| --- | --- | --- | --- |"]
    for name in head_registry.names():
        cls = head_registry.get(name)
        method = cls()
        reads = " + ".join("CLIP embedding" if s == "embedding" else f"native {method.crop_size}px centre crop" for s in cls.inputs)
        if name == "ntf":
            reads += " (+ 2 augmented views of real images for training)"
        defaults = ", ".join(f"{k}={_short(v)}" for k, v in method.config.model_dump().items() if k != "seed")
        outputs = " ; outputs probability" + (" + " + ", ".join(cls.anomaly_outputs) if cls.anomaly_outputs else "")
        lines.append(f"| `{name}` | {cls.paper} | {reads}{outputs} | {defaults} |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="Work directory: data/, embeddings/, bundles/, report/.")
    p.add_argument("--method", action="append", default=None, help=f"Method to train, repeatable (default all: {', '.join(head_registry.names())}).")
    p.add_argument("--arch", default="aigis-tiny", help="open_clip architecture (default aigis-tiny: runs on a laptop CPU).")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint (or --random-weights).")
    p.add_argument("--random-weights", action="store_true", help="Random encoder weights (deterministic from --seed): the functional benchmark.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the data, the encoder's random weights and training (default 0).")
    p.add_argument("--train-per-class", type=int, default=120, help="Real and fake training images per generator (default 120).")
    p.add_argument("--test-per-class", type=int, default=100, help="Real and fake test images per generator (default 100: TPR@1%%FPR needs >= 100 real).")
    p.add_argument("--profile", default="small-data", help="Hyper-parameter profile for training (default small-data; see export.train.PROFILES).")
    p.add_argument("--exclude-generator", action="append", default=None, help="Leave this generator out of training (it stays in the test split).")
    p.add_argument("--conditions", default=None, help="Evaluation conditions (default: all of GenDet's Table 4 sweep).")
    p.add_argument("--readme", type=Path, default=None, help="Rewrite the generated parts of this README's detectors section.")


def run(args: argparse.Namespace) -> int:
    from export.embed import EmbedOptions, embed_dataset
    from export.evaluate import CONDITIONS, RESULTS_END, RESULTS_START, evaluate, replace_between
    from export.synth import SynthConfig, make_dataset
    from export.train import make_method, train_bundle

    t0 = time.perf_counter()
    methods = args.method or head_registry.names()
    out: Path = args.out
    data = out / "data"
    if not (data / "synth.json").is_file():
        make_dataset(data, SynthConfig(seed=args.seed, train_per_class=args.train_per_class, test_per_class=args.test_per_class), progress=True)
    built = [make_method(m, args.profile, {}, args.seed) for m in methods]
    crops = sorted({m.crop_size for m in built if "native_crop" in m.inputs and m.crop_size})
    emb = out / "embeddings"
    opts = EmbedOptions(
        arch=args.arch, pretrained=args.pretrained, seed=args.seed, random_weights=args.random_weights, views=True, native_crop=crops[0] if crops else None
    )
    embed_dataset(data / "train", emb, opts, progress=True)

    bundles = []
    for m in methods:
        path = out / "bundles" / m
        train_bundle(
            path,
            data=emb,
            methods=[m],
            arch=args.arch,
            pretrained=args.pretrained,
            random_weights=args.random_weights,
            seed=args.seed,
            profile=args.profile,
            exclude_generators=args.exclude_generator,
            name=f"synthetic-{m}",
        )
        bundles.append(path)
    conditions = [c.strip() for c in args.conditions.split(",")] if args.conditions else list(CONDITIONS)
    _, md = evaluate(bundles, data / "test", out / "report", conditions, labels=methods, progress=True)
    print(md)
    elapsed = time.perf_counter() - t0
    if args.readme:
        command = (
            "python -m export benchmark " + " ".join(shlex.quote(a) for a in sys.argv[2:] if a)
            if sys.argv[1:2] == ["benchmark"]
            else "python -m export benchmark"
        )
        intro = (
            f"Measured by `{command}` ({elapsed / 60:.0f} min on {platform.machine()} with {_cores()} CPU cores; "
            f"backbone `{args.arch}` with {'weights ' + args.pretrained if args.pretrained else 'random weights'}, "
            f"profile `{args.profile}`, {args.train_per_class} train / {args.test_per_class} test images per class and generator"
            + (f", trained without {', '.join(args.exclude_generator)}" if args.exclude_generator else "")
            + "). Every score comes from the ONNX bundle run by the worker's own pipeline.\n\n"
        )
        text = args.readme.read_text()
        text = replace_between(text, METHODS_START, METHODS_END, methods_table())
        text = replace_between(text, RESULTS_START, RESULTS_END, intro + md)
        args.readme.write_text(text)
        print(f"updated {args.readme}")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
