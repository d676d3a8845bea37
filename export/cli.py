"""``python -m export``: the PyTorch side of aigis.

python -m export bundle OUT ...   train (or load) heads, export backbone + heads, write the manifest
python -m export demo             the end-to-end demo behind `make demo`
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from export import heads as head_registry


def cmd_bundle(args: argparse.Namespace) -> int:
    from export.bundle import HeadSpec, uncalibrated, write_bundle
    from export.clip import load_encoder

    encoder, preprocess, dim = load_encoder(args.arch, args.pretrained, seed=args.seed)
    specs = []
    for method_name in args.method:
        cls = head_registry.get(method_name)
        if args.data is None:
            if method_name != "linear-probe":
                raise SystemExit(f"--data is required to build a {method_name} head (only linear-probe has an untrained placeholder)")
            method = cls(dim=dim, seed=args.seed)
            specs.append(HeadSpec(method_name, method, {"data": None}, trained=False))
        else:
            raise SystemExit("training from --data arrives with the detectors issue")
    notes = ["head is untrained (random weights): scores carry no meaning"] if args.data is None else []
    manifest = write_bundle(
        args.out,
        encoder=encoder,
        preprocess=preprocess,
        embed_dim=dim,
        architecture=args.arch,
        pretrained=args.pretrained,
        heads=specs,
        calibration=uncalibrated(),
        name=args.name,
        version=args.version,
        notes=notes,
    )
    print(f"wrote bundle {args.out} ({manifest.backbone.architecture}, heads: {', '.join(h.name for h in manifest.heads)})")
    print(f"parity: backbone {manifest.parity.backbone_max_abs_diff:.2e}, heads {manifest.parity.head_max_abs_diff}" if manifest.parity else "")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from export.demo import run_demo

    return run_demo(workdir=args.workdir, count=args.count)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("bundle", help="build a model bundle (manifest + ONNX files)", description="Build a model bundle directory the worker can load.")
    b.add_argument("out", type=Path, help="Output directory (created; an existing manifest is replaced).")
    b.add_argument("--arch", default="ViT-L-14", help="open_clip architecture (default ViT-L-14; aigis-tiny for tests and the demo).")
    b.add_argument("--pretrained", default=None, help="open_clip pretrained tag or local checkpoint path (default: random weights).")
    b.add_argument(
        "--method",
        action="append",
        default=None,
        help=f"Head method, repeatable for an ensemble. Known: {', '.join(head_registry.names())}.",
    )
    b.add_argument("--data", type=Path, default=None, help="Dataset in UniversalFakeDetect layout to train the heads on.")
    b.add_argument("--name", default="aigis", help="Bundle name recorded in verdicts.")
    b.add_argument("--version", default="0.1.0", help="Bundle version recorded in verdicts.")
    b.add_argument("--seed", type=int, default=0, help="Seed for random weights and training.")
    b.set_defaults(func=cmd_bundle)

    d = sub.add_parser("demo", help="end-to-end demo: broker + Redis + one worker + real photos", description="The demo behind `make demo`.")
    d.add_argument("--workdir", type=Path, default=Path(".aigis/demo"), help="Where the demo keeps its bundle and data (reused between runs).")
    d.add_argument("--count", type=int, default=0, help="Limit the number of photographs published (0 = all).")
    d.set_defaults(func=cmd_demo)

    from export.variants import add_parser as add_variant_parser  # `python -m export variant`: int8/fp16/fused bundles (performance issue)

    add_variant_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "method", None) is None and args.command == "bundle":
        args.method = ["linear-probe"]
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
