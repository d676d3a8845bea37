"""``python -m export eval BUNDLE [BUNDLE...] DATASET``: the papers' evaluation, run by the code that serves.

Every image is scored by the worker's own :class:`~worker.pipeline.batch.BatchProcessor`
on a :class:`~worker.model.bundle.LoadedBundle` (decode, preprocessing, ONNX Runtime,
log-odds fusion, threshold policy: exactly what a verdict would say), never by
the PyTorch modules that were trained.

Per generator (the first folder under DATASET) and the mean over generators:
AP, ROC-AUC, accuracy, real-acc and fake-acc both at 0.5 (the papers' fixed
threshold, so the numbers compare with theirs) and at the bundle's calibrated
threshold (what the worker serves; every table says which), FPR and FNR at the
calibrated threshold, TPR at 1% FPR (only with at
least 100 real images: fewer cannot resolve 1%, and the cell says so), the
share the worker labels ``uncertain``, and an oracle accuracy (best threshold
chosen on the test data itself, labelled as such: an upper bound, not an
operating point). A metric that cannot be computed shows the reason.

Robustness sweeps as GenDet's Table 4 (from GenImage): resize the shortest side
to 112 and 64 (bicubic), JPEG quality 65 and 30, Gaussian blur sigma 3 and 5
(Pillow's GaussianBlur radius is the standard deviation).

Writes ``report.md`` (bundles side by side per metric, like the papers'
tables), ``report.json``, ``roc-<bundle>.png`` and ``hist-<bundle>.png`` into
``--out``; ``--readme FILE`` also writes the results between the detectors
section's generated-results markers.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from export.datasets import Item, list_dataset
from export.metrics import average_precision, oracle_accuracy, rates_at, roc_auc, roc_curve, tpr_at_fpr, why_not

CONDITIONS: dict[str, str] = {
    "original": "as stored",
    "resize-112": "shortest side resized to 112 (bicubic)",
    "resize-64": "shortest side resized to 64 (bicubic)",
    "jpeg-65": "JPEG quality 65",
    "jpeg-30": "JPEG quality 30",
    "blur-3": "Gaussian blur sigma 3",
    "blur-5": "Gaussian blur sigma 5",
}
SWEEP = tuple(c for c in CONDITIONS if c != "original")
RESULTS_START = "<!-- detectors:results:start -->"
RESULTS_END = "<!-- detectors:results:end -->"


# -- perturbations ------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def perturb(data: bytes, condition: str) -> bytes:
    """The image bytes after one of GenDet Table 4's degradations (lossless PNG except for JPEG)."""
    if condition == "original":
        return data
    with Image.open(io.BytesIO(data)) as src:
        img = src.convert("RGB")
    kind, _, value = condition.partition("-")
    if kind == "resize":
        side = int(value)
        w, h = img.size
        scale = side / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
        return _encode(img)
    if kind == "jpeg":
        return _encode(img, "JPEG", quality=int(value))
    if kind == "blur":
        return _encode(img.filter(ImageFilter.GaussianBlur(radius=float(value))))
    raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")


# -- scoring through the worker -------------------------------------------------------------------------


@dataclass
class Scored:
    """Scores of one bundle on one condition; rows follow ``items`` (NaN where the worker dead-lettered)."""

    scores: np.ndarray
    labels: list[str]
    dead_letters: dict[str, int] = field(default_factory=dict)


def score_items(bundle_path: Path, items: Sequence[Item], condition: str, max_batch: int = 64, threads: int = 2, progress: bool = False) -> Scored:
    """Score ``items`` (after ``condition``) with the worker's BatchProcessor: the serving path."""
    from tqdm import tqdm

    from worker.ingest.wire import InputRecord
    from worker.model.bundle import LoadedBundle
    from worker.pipeline.batch import BatchProcessor

    bundle = LoadedBundle(bundle_path)
    scores = np.full(len(items), np.nan)
    labels: list[str] = [""] * len(items)
    dead: dict[str, int] = {}
    with ThreadPoolExecutor(threads) as pool:
        proc = BatchProcessor.offline(bundle, pool, max_batch)
        bar = tqdm(total=len(items), desc=f"eval {bundle_path.name} {condition}", unit="img", disable=not progress, leave=False)
        for lo in range(0, len(items), max_batch):
            chunk = items[lo : lo + max_batch]
            payloads = list(pool.map(lambda it: perturb(it.path.read_bytes(), condition), chunk))
            records = [InputRecord("eval", 0, lo + i, None, it.rel.encode(), data) for i, (it, data) in enumerate(zip(chunk, payloads, strict=True))]
            for i, outcome in enumerate(proc.process(records)):
                if outcome.verdict is not None:
                    scores[lo + i] = outcome.verdict.score
                    labels[lo + i] = outcome.verdict.label.value
                else:
                    assert outcome.dead_letter is not None
                    code = outcome.dead_letter.error_code.value
                    dead[code] = dead.get(code, 0) + 1
            bar.update(len(chunk))
        bar.close()
    return Scored(scores, labels, dead)


# -- metrics -------------------------------------------------------------------------------------------------

METRICS: dict[str, str] = {
    "ap": "AP",
    "roc_auc": "ROC-AUC",
    "acc_0.5": "acc@0.5",
    "acc_cal": "acc@cal",
    "real_acc_0.5": "real-acc@0.5",
    "fake_acc_0.5": "fake-acc@0.5",
    "real_acc_cal": "real-acc@cal",
    "fake_acc_cal": "fake-acc@cal",
    "fpr": "FPR",
    "fnr": "FNR",
    "tpr_at_1pct_fpr": "TPR@1%FPR",
    "uncertain": "uncertain",
    "oracle_acc": "oracle acc†",
}


#: The accuracy tables, the papers' fixed 0.5 threshold beside the bundle's calibrated one (1% FPR on validation reals).
ACCURACY_KEYS = ("acc_0.5", "real_acc_0.5", "fake_acc_0.5", "acc_cal", "real_acc_cal", "fake_acc_cal")
METRIC_NOTES: dict[str, str] = {
    "acc_0.5": " (threshold 0.5, as the papers report)",
    "real_acc_0.5": " (threshold 0.5, as the papers report: share of real images called real)",
    "fake_acc_0.5": " (threshold 0.5, as the papers report: share of fakes called fake)",
    "acc_cal": " (the bundle's calibrated threshold: what the worker serves)",
    "real_acc_cal": " (calibrated threshold: 1 - FPR)",
    "fake_acc_cal": " (calibrated threshold: TPR)",
    "oracle_acc": " (best threshold chosen on the test data: an upper bound, not an operating point)",
}


def group_metrics(scores: np.ndarray, y: np.ndarray, worker_labels: list[str], threshold: float) -> dict[str, Any]:
    """All metrics for one group of scored images (rows with NaN scores were dead-lettered and are excluded)."""
    ok = ~np.isnan(scores)
    s, y = scores[ok], y[ok]
    n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
    at_cal = rates_at(s, y, threshold)
    at_half = rates_at(s, y, 0.5)  # the papers' operating point (UniversalFakeDetect, NPR, ...): no calibration
    out: dict[str, Any] = {
        "n_real": n_real,
        "n_fake": n_fake,
        "unscored": int((~ok).sum()),
        "ap": average_precision(s, y),
        "roc_auc": roc_auc(s, y),
        "acc_0.5": at_half["acc"],
        "acc_cal": at_cal["acc"],
        "real_acc_0.5": at_half["real_acc"],
        "fake_acc_0.5": at_half["fake_acc"],
        "real_acc_cal": at_cal["real_acc"],
        "fake_acc_cal": at_cal["fake_acc"],
        "fpr": at_cal["fpr"],
        "fnr": at_cal["fnr"],
        "tpr_at_1pct_fpr": tpr_at_fpr(s, y, 0.01),
        "uncertain": float(np.mean([lab == "uncertain" for lab, k in zip(worker_labels, ok, strict=True) if k])) if ok.any() else None,
        "oracle_acc": oracle_accuracy(s, y),
    }
    out["why"] = {k: why_not(k.replace("_1pct", ""), n_real, n_fake) for k in METRICS if out[k] is None}
    return out


def mean_row(per_generator: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean over generators; a metric missing for any generator is reported as such, not averaged over fewer."""
    rows = list(per_generator.values())
    out: dict[str, Any] = {
        "n_real": sum(r["n_real"] for r in rows),
        "n_fake": sum(r["n_fake"] for r in rows),
        "unscored": sum(r["unscored"] for r in rows),
        "why": {},
    }
    for k in METRICS:
        vals = [r[k] for r in rows]
        have = [v for v in vals if v is not None]
        if len(have) == len(vals) and vals:
            out[k] = float(np.mean(have))
        else:
            out[k] = None
            out["why"][k] = f"n/a (missing for {len(vals) - len(have)} of {len(vals)} generators)"
    return out


@dataclass
class BundleResult:
    label: str
    path: Path
    methods: list[str]
    threshold: float
    calibrated: bool
    per_condition: dict[str, dict[str, dict[str, Any]]]
    scores: dict[str, np.ndarray]
    dead_letters: dict[str, dict[str, int]]


def evaluate_bundle(
    bundle_path: Path, items: Sequence[Item], conditions: Sequence[str], label: str | None = None, max_batch: int = 64, threads: int = 2, progress: bool = False
) -> BundleResult:
    from worker.model.bundle import read_manifest

    manifest, _ = read_manifest(bundle_path)
    cal = manifest.calibration
    y = np.array([it.label for it in items])
    gens = np.array([it.generator for it in items])
    per_condition: dict[str, dict[str, dict[str, Any]]] = {}
    scores: dict[str, np.ndarray] = {}
    dead: dict[str, dict[str, int]] = {}
    for cond in conditions:
        scored = score_items(bundle_path, items, cond, max_batch, threads, progress)
        rows = {}
        for g in sorted(set(gens.tolist())):
            m = gens == g
            rows[g] = group_metrics(scored.scores[m], y[m], [lab for lab, k in zip(scored.labels, m, strict=True) if k], cal.threshold)
        rows["mean"] = mean_row(rows)
        per_condition[cond] = rows
        scores[cond] = scored.scores
        dead[cond] = scored.dead_letters
    return BundleResult(label or bundle_path.name, bundle_path, [h.method for h in manifest.heads], cal.threshold, cal.calibrated, per_condition, scores, dead)


# -- reports -------------------------------------------------------------------------------------------------


def _cell(row: dict[str, Any], key: str, pct: bool = True) -> str:
    v = row.get(key)
    if v is None:
        return row.get("why", {}).get(key, "n/a")
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def markdown(results: Sequence[BundleResult], dataset: Path, conditions: Sequence[str]) -> str:
    """The papers' layout: one table per metric, bundles as rows, generators (+ mean) as columns; then robustness."""
    lines: list[str] = []
    gens = [g for g in results[0].per_condition["original" if "original" in conditions else conditions[0]] if g != "mean"]
    cond0 = "original" if "original" in conditions else conditions[0]
    first = results[0].per_condition[cond0]
    counts = ", ".join(f"{g} {first[g]['n_real']}/{first[g]['n_fake']}" for g in gens)
    lines.append(f"Dataset `{dataset}` (real/fake per generator: {counts}); condition `{cond0}`; values in %.")
    lines.append("")
    for key in ("ap", "roc_auc", *ACCURACY_KEYS, "tpr_at_1pct_fpr", "oracle_acc"):
        lines.append(f"**{METRICS[key]}**" + METRIC_NOTES.get(key, ""))
        lines.append("")
        lines.append("| bundle | " + " | ".join(gens) + " | mean |")
        lines.append("| --- | " + " | ".join("---:" for _ in gens) + " | ---: |")
        for r in results:
            rows = r.per_condition[cond0]
            lines.append(f"| {r.label} | " + " | ".join(_cell(rows[g], key) for g in gens) + f" | {_cell(rows['mean'], key)} |")
        lines.append("")
    sweep = [c for c in conditions if c != cond0]
    if sweep:
        lines.append("**Robustness** (GenDet Table 4 degradations; mean over generators: acc@cal / ROC-AUC, %)")
        lines.append("")
        lines.append("| bundle | " + " | ".join([cond0, *sweep]) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in [cond0, *sweep]) + " |")
        for r in results:
            cells = [f"{_cell(r.per_condition[c]['mean'], 'acc_cal')} / {_cell(r.per_condition[c]['mean'], 'roc_auc')}" for c in [cond0, *sweep]]
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
        lines.append("")
    for r in results:
        dead = {c: d for c, d in r.dead_letters.items() if d}
        if dead:
            lines.append(f"`{r.label}`: images the worker dead-lettered (excluded from the metrics): {dead}")
        if not r.calibrated:
            lines.append(f"`{r.label}` is not calibrated: acc@cal uses its placeholder threshold {r.threshold}.")
    lines.append("")
    lines.append("Per-bundle detail (all metrics per generator) is in `report.json`.")
    return "\n".join(lines).rstrip() + "\n"


def plots(results: Sequence[BundleResult], items: Sequence[Item], out: Path, condition: str = "original") -> list[Path]:
    """ROC curves per generator and score histograms (real vs fake), one PNG each per bundle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.array([it.label for it in items])
    gens = np.array([it.generator for it in items])
    written = []
    for r in results:
        s = r.scores[condition]
        fig, ax = plt.subplots(figsize=(5, 5))
        for g in sorted(set(gens.tolist())):
            m = (gens == g) & ~np.isnan(s)
            if (y[m] == 0).any() and (y[m] == 1).any():
                fpr, tpr = roc_curve(s[m], y[m])
                ax.plot(fpr, tpr, label=f"{g} (AUC {roc_auc(s[m], y[m]):.2f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"ROC: {r.label}", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=8)
        path = out / f"roc-{r.label}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ok = ~np.isnan(s)
        bins = np.linspace(0, 1, 41).tolist()
        ax.hist(s[ok & (y == 0)], bins=bins, alpha=0.6, label="real")
        ax.hist(s[ok & (y == 1)], bins=bins, alpha=0.6, label="fake")
        ax.axvline(r.threshold, color="k", ls="--", lw=1, label=f"threshold {r.threshold:.3f}")
        ax.set(xlabel="P(AI-generated)", ylabel="images", title=f"scores: {r.label}")
        ax.legend(fontsize=8)
        path = out / f"hist-{r.label}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def to_json(results: Sequence[BundleResult], dataset: Path, conditions: Sequence[str]) -> dict[str, Any]:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return x

    return {
        "dataset": str(dataset),
        "conditions": {c: CONDITIONS[c] for c in conditions},
        "scored_by": "worker.pipeline.batch.BatchProcessor on worker.model.bundle.LoadedBundle (ONNX Runtime)",
        "bundles": [
            {
                "label": r.label,
                "path": str(r.path),
                "methods": r.methods,
                "threshold": r.threshold,
                "calibrated": r.calibrated,
                "dead_letters": r.dead_letters,
                "results": clean(r.per_condition),
            }
            for r in results
        ],
    }


def replace_between(text: str, start: str, end: str, body: str) -> str:
    """Replace what lies between two marker lines (markers kept); refuse when they are missing."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0 or j < i:
        raise SystemExit(f"markers {start} ... {end} not found in the README")
    return text[: i + len(start)] + "\n" + body.rstrip() + "\n" + text[j:]


def evaluate(
    bundles: Sequence[Path],
    dataset: Path,
    out: Path,
    conditions: Sequence[str] = tuple(CONDITIONS),
    labels: Sequence[str] | None = None,
    max_batch: int = 64,
    threads: int = 2,
    progress: bool = False,
    make_plots: bool = True,
) -> tuple[list[BundleResult], str]:
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise SystemExit(f"unknown conditions {unknown}; known: {', '.join(CONDITIONS)}")
    items = list_dataset(dataset)
    labels = list(labels) if labels else [b.name for b in bundles]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"bundle labels must be unique, got {labels}; pass --label")
    results = [evaluate_bundle(b, items, conditions, lab, max_batch, threads, progress) for b, lab in zip(bundles, labels, strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(results, dataset, conditions)
    # generator attribution, for bundles with an attribution head (export/attribution_eval.py); not part of the returned
    # markdown, which is the README's detectors section
    from export.attribution_eval import attribution_report

    att_md, att_json = attribution_report(bundles, labels, items, out, make_plots, max_batch, threads)
    (out / "report.md").write_text(md + ("\n" + att_md if att_md else ""))
    doc = to_json(results, dataset, conditions)
    if att_json:
        doc["attribution"] = att_json
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    if make_plots:
        plots(results, items, out, "original" if "original" in conditions else conditions[0])
    return results, md


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths", nargs="+", type=Path, metavar="BUNDLE... DATASET", help="One or more bundle directories, then the dataset (UniversalFakeDetect layout)."
    )
    p.add_argument("--out", type=Path, default=Path("eval-report"), help="Report directory (default eval-report/).")
    p.add_argument("--label", action="append", default=None, help="Name of each bundle in the tables, in order (default: directory names).")
    p.add_argument(
        "--conditions",
        default=",".join(CONDITIONS),
        help=f"Comma-separated conditions (default all: {', '.join(CONDITIONS)}); 'original' alone skips the robustness sweep.",
    )
    p.add_argument("--max-batch", type=int, default=64, help="Images per inference batch (default 64).")
    p.add_argument("--threads", type=int, default=2, help="Decode/preprocess threads (default 2).")
    p.add_argument("--no-plots", action="store_true", help="Skip the PNG plots.")
    p.add_argument("--readme", type=Path, default=None, help="Also write the tables into this README between the detectors results markers.")


def run(args: argparse.Namespace, intro: Callable[[], str] | None = None) -> int:
    if len(args.paths) < 2:
        raise SystemExit("give at least one bundle and then the dataset: python -m export eval BUNDLE [BUNDLE...] DATASET")
    *bundles, dataset = args.paths
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    _, md = evaluate(bundles, dataset, args.out, conditions, args.label, args.max_batch, args.threads, progress=True, make_plots=not args.no_plots)
    print(md)
    print(f"wrote {args.out}/report.md, report.json" + ("" if args.no_plots else " and PNG plots"))
    if args.readme:
        body = (intro() if intro else "") + md
        args.readme.write_text(replace_between(args.readme.read_text(), RESULTS_START, RESULTS_END, body))
        print(f"updated {args.readme}")
    return 0
