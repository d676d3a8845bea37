"""``python -m export``: the PyTorch side of aigis.

python -m export synth OUT              make the synthetic real/fake benchmark (UniversalFakeDetect layout)
python -m export embed DATASET OUT     frozen open_clip embeddings, sharded and resumable
python -m export bundle OUT ...        train heads (--data) or a placeholder, export backbone + heads, write the manifest
python -m export import NAME OUT ...   a published detector's released checkpoint as a served bundle (ufd, c2p-clip)
python -m export eval BUNDLE... DATA   score a dataset through the worker's runtime: per-generator metrics, robustness, plots
python -m export benchmark OUT         synth -> leakage check -> embed -> leave-one-generator-out bundles -> eval -> README tables
python -m export demo                  the end-to-end demo behind `make demo`
python -m export drift-benchmark OUT   false alarms and detection delay of the worker's drift statistics, README tables
python -m export feedback collect|compare   moderator decisions -> dataset; primary vs shadow against the decisions
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from export import heads as head_registry


def cmd_bundle(args: argparse.Namespace) -> int:
    if args.data is not None:
        from export.train import parse_set, train_bundle

        manifest = train_bundle(
            args.out,
            data=args.data,
            methods=args.method,
            arch=args.arch,
            pretrained=args.pretrained,
            seed=args.seed,
            profile=args.profile,
            overrides=parse_set(args.set),
            target_fpr=args.target_fpr,
            band_factor=args.band_factor,
            val_fraction=args.val_fraction,
            include_generators=args.generator,
            exclude_generators=args.exclude_generator,
            cache_root=args.cache_dir,
            embeddings_dir=args.embeddings,
            name=args.name,
            version=args.version,
            save_heads=args.save_heads,
            load_heads=args.head,
            monitoring=_monitoring_options(args),
            random_weights=args.random_weights,
            assume_openai=args.openai_weights,
            preprocess_mode=args.preprocess,
            allow_draft=args.allow_draft,
            augment=args.augment,
        )
        cal = manifest.calibration
        v = cal.validation
        print(f"wrote bundle {args.out} ({manifest.backbone.architecture}, heads: {', '.join(h.name for h in manifest.heads)})")
        print(
            f"calibrated on {v['n_real']} real + {v['n_fake']} fake validation images: threshold {cal.threshold:.4f} for FPR <= {cal.target_fpr:.2%}, "
            f"uncertain band [{cal.uncertain_low:.4f}, {cal.uncertain_high:.4f}); validation AUC {_fmt(v['roc_auc'])}, AP {_fmt(v['average_precision'])}"
        )
        for note in manifest.notes:
            print(f"note: {note}")
        return 0

    from export.bundle import write_placeholder_bundle
    from export.clip import DEFAULT_ARCH

    if args.head:
        raise SystemExit("--head needs --data: a loaded head is calibrated and validated on that data's validation split")

    unknown = [m for m in args.method if m != "linear-probe"]
    if unknown:
        head_registry.get(unknown[0])  # a clear error for a misspelt method first
        raise SystemExit(f"--data is required to build a {unknown[0]} head (only linear-probe has an untrained placeholder)")
    if args.augment:
        raise SystemExit("--augment needs --data: augmented copies are training data")
    manifest = write_placeholder_bundle(
        args.out,
        args.arch or DEFAULT_ARCH,
        args.pretrained,
        random_weights=args.random_weights,
        assume_openai=args.openai_weights,
        preprocess_mode=args.preprocess or "clip",
        allow_draft=bool(args.allow_draft),
        name=args.name,
        version=args.version,
        seed=args.seed,
    )
    print(f"wrote bundle {args.out} ({manifest.backbone.architecture}, heads: {', '.join(h.name for h in manifest.heads)})")
    print(f"parity: backbone {manifest.parity.backbone_max_abs_diff:.2e}, heads {manifest.parity.head_max_abs_diff}" if manifest.parity else "")
    return 0


def _monitoring_options(args: argparse.Namespace):
    from export.monitoring import MonitoringOptions

    return MonitoringOptions(
        drift_reference=not args.no_drift_reference,
        attribution=not args.no_attribution,
        attribution_coverage=args.attribution_coverage,
        seed=args.seed,
        progress=True,
    )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def cmd_synth(args: argparse.Namespace) -> int:
    from export.synth import run

    return run(args)


def cmd_embed(args: argparse.Namespace) -> int:
    from export.embed import run

    return run(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from export.evaluate import run

    return run(args)


def cmd_benchmark(args: argparse.Namespace) -> int:
    from export.benchmark import run

    return run(args)


def cmd_import(args: argparse.Namespace) -> int:
    return args.importer.run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from export.demo import run_demo

    return run_demo(workdir=args.workdir, count=args.count)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("bundle", help="build a model bundle (manifest + ONNX files)", description="Build a model bundle directory the worker can load.")
    b.add_argument("out", type=Path, help="Output directory (created; an existing manifest is replaced).")
    from export.embed import add_draft_argument, add_weights_arguments

    add_weights_arguments(
        b,
        default_arch=None,
        arch_help="open_clip architecture (default: the one the --data embeddings were made with, else ViT-L-14; aigis-tiny for tests and the demo).",
    )
    b.add_argument(
        "--preprocess",
        choices=("clip", "ufd"),
        default=None,
        help="Preprocessing mode the bundle serves: clip (open_clip's eval transform) or ufd (UniversalFakeDetect's native 224 centre crop). "
        "Default: the mode the --data embeddings were made with, else clip.",
    )
    add_draft_argument(b, default=None)
    b.add_argument(
        "--augment",
        type=int,
        default=None,
        metavar="K",
        help="With an image --data: embed K augmented copies per image (UFD's training augmentation) and train on them. "
        "For an embedding directory this is fixed by `python -m export embed --augment`.",
    )
    b.add_argument(
        "--method",
        action="append",
        default=None,
        help=f"Head method, repeatable for an ensemble. Known: {', '.join(head_registry.names())}.",
    )
    b.add_argument(
        "--data",
        type=Path,
        default=None,
        help="Train the heads on this: an image dataset in UniversalFakeDetect layout (embedded on the fly, cached) or an embedding directory "
        "from `python -m export embed`. Without it only an untrained linear-probe placeholder can be built.",
    )
    b.add_argument(
        "--head",
        type=Path,
        action="append",
        default=None,
        metavar="CHECKPOINT",
        help="Use a head fitted earlier (a file from --save-heads) instead of training it; repeatable, and combinable with --method for an ensemble. "
        "Still calibrated on --data's validation split. Checkpoints are pickles: load only ones you made.",
    )
    b.add_argument(
        "--save-heads",
        type=Path,
        default=None,
        metavar="DIR",
        help="Keep every head fitted by this run as DIR/<head>.pt, for --head later (re-calibrate, re-export or ensemble without retraining).",
    )
    b.add_argument("--profile", default="paper", help="Hyper-parameter profile: paper (the papers' values, default) or small-data (a few hundred images).")
    b.add_argument(
        "--set", action="append", default=None, metavar="METHOD.FIELD=VALUE", help="Override one hyper-parameter, e.g. gendet.margin=1.5 (repeatable)."
    )
    b.add_argument("--target-fpr", type=float, default=0.01, help="False-positive rate the threshold is calibrated for on validation (default 0.01).")
    b.add_argument("--band-factor", type=float, default=5.0, help="Uncertain band = scores flagged at FPR band-factor x target but not at target (default 5).")
    b.add_argument("--val-fraction", type=float, default=0.2, help="Share of every (generator, label) group held out for validation/calibration (default 0.2).")
    b.add_argument("--generator", action="append", default=None, help="Train on this generator only (repeatable; default all).")
    b.add_argument("--exclude-generator", action="append", default=None, help="Leave this generator out of training (repeatable): leave-one-generator-out.")
    b.add_argument("--embeddings", type=Path, default=None, help="Where to embed an image --data (default: a cache directory under --cache-dir).")
    b.add_argument("--cache-dir", type=Path, default=Path(".aigis/embeddings"), help="Embedding cache for image --data (default .aigis/embeddings).")
    b.add_argument("--name", default="aigis", help="Bundle name recorded in verdicts.")
    b.add_argument("--version", default="0.1.0", help="Bundle version recorded in verdicts.")
    b.add_argument(
        "--no-drift-reference",
        action="store_true",
        help="Do not store the drift reference (validation score distributions, embedding novelty graph) the worker's drift statistics need.",
    )
    b.add_argument("--no-attribution", action="store_true", help="Do not train the generator-attribution head (trained when the data has >= 2 families).")
    b.add_argument(
        "--attribution-coverage",
        type=float,
        default=0.95,
        help="Share of validation images the attribution head must keep attributed; the rest of the probability range is 'unknown' (default 0.95).",
    )
    b.set_defaults(func=cmd_bundle)

    from export import importers

    im = sub.add_parser(
        "import",
        help="serve a published detector's released checkpoint (ufd, c2p-clip)",
        description=importers.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    im_sub = im.add_subparsers(dest="importer_name", required=True, metavar="NAME")
    for importer in importers.all_importers():
        ip = im_sub.add_parser(importer.name, help=importer.summary, description=importer.description, formatter_class=argparse.RawDescriptionHelpFormatter)
        importer.add_arguments(ip)
        ip.set_defaults(func=cmd_import, importer=importer)

    from export import benchmark, embed, evaluate, synth

    sy = sub.add_parser(
        "synth", help="make the synthetic real/fake benchmark dataset", description=synth.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    synth.add_arguments(sy)
    sy.set_defaults(func=cmd_synth)

    em = sub.add_parser(
        "embed", help="embed a dataset with a frozen open_clip encoder", description=embed.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    embed.add_arguments(em)
    em.set_defaults(func=cmd_embed)

    ev = sub.add_parser(
        "eval",
        help="evaluate bundles on a dataset through the worker's runtime",
        description=evaluate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_arguments(ev)
    ev.set_defaults(func=cmd_eval)

    bm = sub.add_parser(
        "benchmark", help="synthetic benchmark end to end, README table", description=benchmark.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    benchmark.add_arguments(bm)
    bm.set_defaults(func=cmd_benchmark)

    d = sub.add_parser("demo", help="end-to-end demo: broker + Redis + one worker + real photos", description="The demo behind `make demo`.")
    d.add_argument("--workdir", type=Path, default=Path(".aigis/demo"), help="Where the demo keeps its bundle and data (reused between runs).")
    d.add_argument("--count", type=int, default=0, help="Limit the number of photographs published (0 = all).")
    d.set_defaults(func=cmd_demo)

    from export.variants import add_parser as add_variant_parser  # `python -m export variant`: int8/fp16/fused bundles (performance issue)

    add_variant_parser(sub)

    from export.drift_benchmark import add_parser as add_drift_benchmark_parser  # drift statistics: false alarms, detection delay

    add_drift_benchmark_parser(sub)

    from export.feedback import add_parser as add_feedback_parser  # moderator decisions -> dataset; primary vs shadow

    add_feedback_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bundle" and args.method is None:
        args.method = [] if args.head else ["linear-probe"]
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
