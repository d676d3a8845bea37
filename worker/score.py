"""``python -m worker score``: score image files once, without Kafka or Redis.

Runs the exact code the streaming worker runs (:class:`~worker.pipeline.batch.BatchProcessor`),
so it doubles as the offline reference in the streaming-overhead benchmark and
as a quick way to try a bundle on a folder of images. Provenance is read and
applied as the worker does (``--provenance-policy``, ``--provenance-trust-anchors``);
``--json`` prints each verdict whole, its ``provenance`` block included.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from schemas.provenance import Provenance, ProvenancePolicy, SignalStatus
from worker.ingest.provenance import TrustList, TrustListError
from worker.ingest.wire import InputRecord
from worker.model.bundle import LoadedBundle
from worker.pipeline.batch import BatchProcessor
from worker.pipeline.outcomes import Outcome

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


def expand(paths: Sequence[Path]) -> list[Path]:
    """Files as given; directories expand to the images inside (recursively, sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def score_files(
    bundle: LoadedBundle,
    files: Sequence[Path],
    max_batch: int = 32,
    decode_threads: int = 2,
    *,
    provenance_policy: ProvenancePolicy = ProvenancePolicy.decide,
    trust_anchors: Path | None = None,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(decode_threads) as pool:
        proc = BatchProcessor.offline(bundle, pool, max_batch, provenance_policy=provenance_policy, trust_anchors=trust_anchors)
        for lo in range(0, len(files), max_batch):
            chunk = files[lo : lo + max_batch]
            records = [InputRecord("files", 0, lo + i, None, str(f).encode(), f.read_bytes()) for i, f in enumerate(chunk)]
            outcomes.extend(proc.process(records))
    return outcomes


def provenance_summary(p: Provenance) -> str:
    """One short cell: every signal that was found or unreadable, ``kind:strength`` (``*`` marks the decisive ones)."""
    cells = []
    for s in p.signals:
        if s.status is SignalStatus.found:
            cells.append(f"{s.kind.value}:{s.strength.value}{'*' if s.kind in p.decisive else ''}")
        elif s.status is SignalStatus.unreadable:
            cells.append(f"{s.kind.value}:unreadable")
    return ", ".join(cells) or ("-" if p.signals else f"(policy {p.policy.value})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="Image files or directories (searched recursively).")
    parser.add_argument("--bundle", type=Path, required=True, help="Model bundle directory.")
    parser.add_argument("--max-batch", type=int, default=32, help="Images per inference batch (default 32).")
    parser.add_argument("--decode-threads", type=int, default=2, help="Decode/preprocess threads (default 2).")
    parser.add_argument("--providers", default="CUDAExecutionProvider,CPUExecutionProvider", help="ONNX Runtime providers in preference order.")
    parser.add_argument("--json", action="store_true", help="Print one JSON verdict / dead letter per line (provenance block included) instead of a table.")
    parser.add_argument(
        "--provenance-policy",
        type=ProvenancePolicy,
        choices=list(ProvenancePolicy),
        default=ProvenancePolicy.decide,
        help="off | annotate | decide (default decide), as the worker's option.",
    )
    parser.add_argument("--provenance-trust-anchors", type=Path, help="PEM file of C2PA trust anchors (default: none trusted).")
    args = parser.parse_args(argv)

    from worker.ops.logs import configure

    configure("warning", "console")  # stdout is for the results (one JSON verdict a line with --json); logs go to stderr
    files = expand(args.files)
    if not files:
        parser.error("no image files found")
    if args.provenance_trust_anchors is not None:
        try:
            TrustList.from_file(args.provenance_trust_anchors)
        except TrustListError as exc:
            parser.error(str(exc))
    bundle = LoadedBundle(args.bundle, [p for p in args.providers.split(",") if p])
    t0 = time.perf_counter()
    outcomes = score_files(
        bundle, files, args.max_batch, args.decode_threads, provenance_policy=args.provenance_policy, trust_anchors=args.provenance_trust_anchors
    )
    elapsed = time.perf_counter() - t0
    if args.json:
        for o in outcomes:
            sys.stdout.write(o.value().decode() + "\n")
    else:
        print(f"{'file':<48} {'label':<13} {'score':>7}  {'decided_by':<10}  provenance")
        for o in outcomes:
            name = (o.record.key or b"").decode()[-48:]
            if o.verdict:
                v = o.verdict
                print(f"{name:<48} {v.label.value:<13} {v.score:>7.4f}  {v.decided_by.value:<10}  {provenance_summary(v.provenance)}")
            else:
                assert o.dead_letter is not None
                print(f"{name:<48} {'ERROR ' + o.dead_letter.error_code.value:<13}  {o.dead_letter.message[:60]}")
        if not bundle.manifest.calibration.calibrated:
            print("note: this bundle's head is not calibrated; labels carry no meaning.")
    print(f"{len(files)} images in {elapsed:.2f}s ({len(files) / elapsed:.1f}/s)", file=sys.stderr)
    return 0
