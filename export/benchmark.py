"""``python -m export benchmark OUT``: the synthetic benchmark end to end, and the README's detector tables.

The headline is **leave-one-generator-out** (LOGO): for each generator family
G in turn, every method is trained on the other three and scored on G's test
images, a generator it has never seen (the question a deployed detector
faces). Steps:

synth (``OUT/data``, format-controlled: real and fake alike re-encoded as
JPEG/WebP at random quality and size, see :mod:`export.synth`) -> the format
leakage check on it (:mod:`export.leakage`: format-only classifiers must sit
at chance, else the benchmark could be won on file format) -> embed the
training split once (views for NTF, native crops for freq) -> per held-out
generator, one bundle per method trained without it (``OUT/bundles/<G>/<method>``,
``--profile``) -> ``export eval`` of those bundles on the whole test split
through the worker's runtime (``OUT/report/without-<G>``): the held-out
generator's column is the unseen result, the other three give the seen
reference. ``--readme README.md`` rewrites the generated parts of the README's
detectors section: the methods table (from the registry) and the LOGO tables,
with the command that produced them.

The data are the project's synthetic generators: a functional benchmark of the
whole train/export/serve/evaluate path, not evidence about real generators.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


#: The LOGO tables, in order: ranking metrics, then accuracy at the papers' 0.5 and at the calibrated threshold.
LOGO_METRICS = ("roc_auc", "ap", "acc_0.5", "real_acc_0.5", "fake_acc_0.5", "acc_cal", "real_acc_cal", "fake_acc_cal", "tpr_at_1pct_fpr")


def _pct(v: float | None, why: str = "n/a") -> str:
    return why if v is None else f"{100 * v:.1f}"


def _mean(vals: Sequence[float | None]) -> float | None:
    """Mean over folds; None (shown as n/a) when any fold lacks the metric, never a mean over fewer."""
    return None if not vals or any(v is None for v in vals) else float(np.mean([v for v in vals if v is not None]))


def logo_rows(folds: dict[str, dict[str, dict[str, dict[str, Any]]]], metric: str, condition: str = "original") -> dict[str, dict[str, float | None]]:
    """Per method: the metric on each held-out generator, the mean over them (unseen) and the mean seen-generator value.

    ``folds[G][method]`` is ``BundleResult.per_condition`` of the bundle trained without G (rows per test generator).
    """
    out: dict[str, dict[str, float | None]] = {}
    seen: dict[str, list[float | None]] = {}
    for held_out, per_method in folds.items():
        for method, per_condition in per_method.items():
            rows = per_condition[condition]
            out.setdefault(method, {})[held_out] = rows[held_out].get(metric)
            seen.setdefault(method, []).append(_mean([rows[g].get(metric) for g in rows if g not in ("mean", held_out)]))
    for method, row in out.items():
        row["unseen"] = _mean([row[g] for g in folds])
        row["seen"] = _mean(seen[method])
    return out


def logo_markdown(folds: dict[str, dict[str, dict[str, dict[str, Any]]]], counts: dict[str, tuple[int, int]], conditions: Sequence[str] = ("original",)) -> str:
    """The LOGO tables: methods as rows, the held-out generator as columns, then the unseen mean beside the seen mean."""
    from export.evaluate import METRIC_NOTES, METRICS

    gens = list(folds)
    lines = [
        "Leave-one-generator-out: each column is a generator family the bundles were **not** trained on (trained on the other "
        "three, scored on its test images: "
        + ", ".join(f"{g} {counts[g][0]} real / {counts[g][1]} fake" for g in gens)
        + "). *unseen* is the mean over those columns; *seen* is the same bundles' mean on the three generators they were "
        "trained on (test images, never trained on), for reference. Values in %.",
        "",
    ]
    for metric in LOGO_METRICS:
        rows = logo_rows(folds, metric)
        note = METRIC_NOTES.get(metric, "")
        if metric == "tpr_at_1pct_fpr":
            note = " (needs >= 100 real test images per generator, else n/a)"
        lines += [f"**{METRICS[metric]}**{note}", "", "| method | " + " | ".join(gens) + " | unseen | seen |", "| --- |" + " ---: |" * (len(gens) + 2)]
        for method, row in rows.items():
            lines.append(f"| {method} | " + " | ".join(_pct(row[g]) for g in gens) + f" | **{_pct(row['unseen'])}** | {_pct(row['seen'])} |")
        lines.append("")
    sweep = [c for c in conditions if c != "original"]
    if sweep:
        lines += [
            "**Robustness on the unseen generator** (GenDet Table 4 degradations; mean over held-out generators: acc@cal / ROC-AUC, %)",
            "",
            "| method | " + " | ".join(["original", *sweep]) + " |",
            "| --- |" + " ---: |" * (len(sweep) + 1),
        ]
        methods = list(next(iter(folds.values())))
        for method in methods:
            cells = []
            for c in ["original", *sweep]:
                acc = _mean([folds[g][method][c][g].get("acc_cal") for g in gens])
                auc = _mean([folds[g][method][c][g].get("roc_auc") for g in gens])
                cells.append(f"{_pct(acc)} / {_pct(auc)}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Per-fold detail (every metric per generator, seen and unseen) is in `report/without-<generator>/report.json` and `report/logo.json`.")
    return "\n".join(lines).rstrip() + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="Work directory: data/, embeddings/, bundles/<held-out>/<method>, report/.")
    p.add_argument("--method", action="append", default=None, help=f"Method to train, repeatable (default all: {', '.join(head_registry.names())}).")
    p.add_argument("--arch", default="aigis-tiny", help="open_clip architecture (default aigis-tiny: runs on a laptop CPU).")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint (or --random-weights).")
    p.add_argument("--random-weights", action="store_true", help="Random encoder weights (deterministic from --seed): the functional benchmark.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the data, the encoder's random weights and training (default 0).")
    p.add_argument("--train-per-class", type=int, default=120, help="Real and fake training images per generator (default 120).")
    p.add_argument("--test-per-class", type=int, default=100, help="Real and fake test images per generator (default 100: TPR@1%%FPR needs >= 100 real).")
    p.add_argument("--profile", default="small-data", help="Hyper-parameter profile for training (default small-data; see export.train.PROFILES).")
    p.add_argument(
        "--holdout", action="append", default=None, help="Generator to hold out, one fold each, repeatable (default: each in turn, the LOGO protocol)."
    )
    p.add_argument(
        "--conditions",
        default="original",
        help="Evaluation conditions, comma-separated (default original; add e.g. resize-112,jpeg-65,blur-3: GenDet's Table 4 sweep on the unseen generator).",
    )
    p.add_argument("--readme", type=Path, default=None, help="Rewrite the generated parts of this README's detectors section.")


def _data(data: Path, cfg: Any, progress: bool, derived: Sequence[Path] = ()) -> dict[str, Any]:
    """The synthetic dataset for ``cfg``: reused when ``synth.json`` says it was made with the same settings, else remade.

    A dataset made by an older version (lossless PNGs, no format control) is never reused by mistake, and when it is
    remade the ``derived`` directories go with it (the embedding cache resumes by chunk number, so it would otherwise
    serve the old images' embeddings for the new ones).
    """
    from export.synth import make_dataset

    want = {"seed": cfg.seed, "image_size": cfg.image_size, "per_class": {"train": cfg.train_per_class, "test": cfg.test_per_class}, "encoding": cfg.encoding}
    meta = data / "synth.json"
    if meta.is_file():
        have = json.loads(meta.read_text())
        if {k: have.get(k) for k in want} == want and have.get("generators") == list(cfg.generators):
            return have
    for stale in (data, *derived):  # other settings, or a run stopped before synth.json: nothing of it may mix in
        if stale.exists():
            shutil.rmtree(stale)
    return make_dataset(data, cfg, progress=progress)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()  # the README's wall time: imports, data, embedding, every fold's training and scoring
    from export.embed import EmbedOptions, embed_dataset
    from export.evaluate import CONDITIONS, RESULTS_END, RESULTS_START, evaluate, replace_between
    from export.leakage import leakage_of
    from export.monitoring import MonitoringOptions
    from export.synth import GENERATORS, SynthConfig
    from export.train import make_method, train_bundle

    methods = args.method or head_registry.names()
    out: Path = args.out
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise SystemExit(f"unknown conditions {unknown}; known: {', '.join(CONDITIONS)}")
    if "original" not in conditions:
        conditions.insert(0, "original")
    holdouts = args.holdout or list(GENERATORS)
    bad = sorted(set(holdouts) - set(GENERATORS))
    if bad:
        raise SystemExit(f"unknown generators {bad}; known: {', '.join(GENERATORS)}")

    data = out / "data"
    emb = out / "embeddings"
    _data(data, SynthConfig(seed=args.seed, train_per_class=args.train_per_class, test_per_class=args.test_per_class), progress=True, derived=[emb])
    leak = leakage_of(data)
    print(leak.markdown())
    built = [make_method(m, args.profile, {}, args.seed) for m in methods]
    crops = sorted({m.crop_size for m in built if "native_crop" in m.inputs and m.crop_size})
    opts = EmbedOptions(
        arch=args.arch, pretrained=args.pretrained, seed=args.seed, random_weights=args.random_weights, views=True, native_crop=crops[0] if crops else None
    )
    embed_dataset(data / "train", emb, opts, progress=True)

    folds: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    counts: dict[str, tuple[int, int]] = {}
    for held_out in holdouts:
        bundles = []
        for m in methods:
            path = out / "bundles" / held_out / m
            train_bundle(
                path,
                data=emb,
                methods=[m],
                arch=args.arch,
                pretrained=args.pretrained,
                random_weights=args.random_weights,
                seed=args.seed,
                profile=args.profile,
                exclude_generators=[held_out],
                name=f"synthetic-{m}-without-{held_out}",
                progress=False,
                # a benchmark bundle is scored, never served: no drift reference or attribution head to build
                monitoring=MonitoringOptions(drift_reference=False, attribution=False, seed=args.seed),
            )
            bundles.append(path)
        results, _ = evaluate(bundles, data / "test", out / "report" / f"without-{held_out}", conditions, labels=methods, progress=True, make_plots=False)
        folds[held_out] = {r.label: r.per_condition for r in results}
        row = results[0].per_condition["original"][held_out]
        counts[held_out] = (row["n_real"], row["n_fake"])
        aucs = ", ".join(f"{r.label} {_pct(r.per_condition['original'][held_out]['roc_auc'])}" for r in results)
        print(f"[benchmark] without {held_out}: unseen ROC-AUC {aucs}")
    md = logo_markdown(folds, counts, conditions)
    (out / "report").mkdir(parents=True, exist_ok=True)
    (out / "report" / "logo.json").write_text(
        json.dumps({"protocol": "leave-one-generator-out", "leakage": leak.as_dict(), "folds": folds, "counts": counts}, indent=2, default=_jsonable) + "\n"
    )
    (out / "report" / "logo.md").write_text(leak.markdown() + "\n" + md)
    print(md)
    elapsed = time.perf_counter() - t0
    if args.readme:
        command = _command(args)
        intro = (
            f"Measured by `{command}` ({elapsed / 60:.1f} min on {platform.machine()} with {_cores()} CPU cores; "
            f"backbone `{args.arch}` with {'weights ' + args.pretrained if args.pretrained else 'random weights'}, "
            f"profile `{args.profile}`, {args.train_per_class} train / {args.test_per_class} test images per class and generator, "
            f"format-controlled data; {len(holdouts)} folds x {len(methods)} methods = {len(holdouts) * len(methods)} bundles). "
            "Every score comes from the ONNX bundle run by the worker's own pipeline.\n\n"
        )
        text = args.readme.read_text()
        text = replace_between(text, METHODS_START, METHODS_END, methods_table())
        text = replace_between(text, RESULTS_START, RESULTS_END, intro + leak.markdown() + "\n" + md)
        args.readme.write_text(text)
        print(f"updated {args.readme}")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, rebuilt from the parsed options (defaults left out), for the README."""
    defaults = {"arch": "aigis-tiny", "pretrained": None, "seed": 0, "train_per_class": 120, "test_per_class": 100, "profile": "small-data"}
    parts = ["python -m export benchmark", shlex.quote(str(args.out))]
    if args.random_weights:
        parts.append("--random-weights")
    for key, default in defaults.items():
        if getattr(args, key) != default:
            parts += [f"--{key.replace('_', '-')}", shlex.quote(str(getattr(args, key)))]
    for key in ("method", "holdout"):
        for v in getattr(args, key) or []:
            parts += [f"--{key}", shlex.quote(v)]
    if args.conditions != "original":
        parts += ["--conditions", shlex.quote(args.conditions)]
    if args.readme:
        parts += ["--readme", shlex.quote(str(args.readme))]
    return " ".join(parts)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
