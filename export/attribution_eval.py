"""Evaluation of a bundle's generator-attribution head: confusion matrix, per-family accuracy, open-set rate.

Images are decoded and preprocessed by the worker's own
:func:`~worker.pipeline.images.prepare_image` (with the limits of
:meth:`~worker.pipeline.batch.BatchProcessor.offline`) and scored by
:meth:`~worker.model.bundle.LoadedBundle.score` (ONNX Runtime), i.e. what the
worker computes for a verdict's ``attribution``; ``unknown`` is decided by
:meth:`schemas.Attribution.from_probabilities`, the rule verdicts use.

* **known families** (classes the head was trained on, ``real`` included):
  top-1 accuracy per family (the most probable class, threshold ignored),
  the share the threshold sends to ``unknown``, and the accuracy of the
  attributed ones;
* **families left out of training** (in the dataset, not in the head's
  classes; leave-one-generator-out with ``bundle --exclude-generator``): the
  **open-set rate**, the share labelled ``unknown`` rather than forced onto a
  known family, and where the rest went.

Beside the verdict's rule, the same counts for a **candidate rule** the worker
does not apply yet: ``unknown`` also when the image's embedding novelty
distance (``anomaly["monitor.novelty"]``, the bundle's Mahalanobis graph)
exceeds the drift reference's threshold (the validation p99). Lee et al. (2018)
use exactly this distance to nearest class mean as a classifier's
out-of-distribution detector; the top softmax probability is no such
detector (a linear model is often most confident far from its data). Reported
as ``with_novelty`` (JSON) and in parentheses in the table, for bundles with
both graphs.

Writes ``attribution-<bundle>.json`` and ``confusion-<bundle>.png`` (rows: true
family, columns: attributed class and ``unknown``, row-normalised colours,
counts printed). :func:`attribution_report` is what ``python -m export eval``
appends to its report; ``python -m export drift-benchmark --readme`` writes
:func:`markdown` between the README's attribution markers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.datasets import Item

ATTRIBUTION_START = "<!-- attribution:results:start -->"
ATTRIBUTION_END = "<!-- attribution:results:end -->"
REAL = "real"
UNKNOWN = "unknown"


@dataclass
class AttributionResult:
    label: str
    path: Path
    classes: list[str]
    threshold: float
    rows: list[str]
    counts: np.ndarray  # (len(rows), len(classes) + 1): true family x (attributed class..., unknown)
    top1: dict[str, int] = field(default_factory=dict)  # per true known family: images whose most probable class is right
    per_family: dict[str, dict[str, Any]] = field(default_factory=dict)
    unseen: dict[str, dict[str, Any]] = field(default_factory=dict)
    known_accuracy: float | None = None
    known_unknown_rate: float = 0.0
    unscored: int = 0
    # the candidate rule (top probability below the threshold, or novelty beyond the drift reference's p99); None without a novelty graph
    novelty_threshold: float | None = None
    known_unknown_rate_with_novelty: float | None = None
    unseen_unknown_rate_with_novelty: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "path": str(self.path),
            "classes": self.classes,
            "unknown_threshold": self.threshold,
            "known_accuracy": self.known_accuracy,
            "known_unknown_rate": self.known_unknown_rate,
            "per_family": self.per_family,
            "unseen": self.unseen,
            "unscored": self.unscored,
            "with_novelty": None
            if self.novelty_threshold is None
            else {
                "rule": "unknown when the top probability is below unknown_threshold or monitor.novelty is above the drift reference's threshold",
                "novelty_threshold": self.novelty_threshold,
                "known_unknown_rate": self.known_unknown_rate_with_novelty,
                "unseen_unknown_rate": self.unseen_unknown_rate_with_novelty,
            },
            "confusion": {"rows": self.rows, "columns": [*self.classes, UNKNOWN], "counts": self.counts.tolist()},
            "scored_by": "worker prepare_image + LoadedBundle.score (ONNX Runtime); unknown by schemas.Attribution.from_probabilities",
        }


def true_family(item: Item) -> str:
    return REAL if item.label == 0 else item.generator


def attribution_probabilities(bundle_path: Path, items: Sequence[Item], max_batch: int = 64, threads: int = 2) -> tuple[list[str], np.ndarray]:
    """(classes, probabilities (N, K)) for every item; NaN rows where the worker could not decode the image."""
    classes, probs, _ = attribution_scores(bundle_path, items, max_batch, threads)
    return classes, probs


def attribution_scores(bundle_path: Path, items: Sequence[Item], max_batch: int = 64, threads: int = 2) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(classes, probabilities (N, K), novelty distances (N,) or None without a novelty graph); NaN where not decoded."""
    from schemas.monitoring import NOVELTY_KEY
    from worker.errors import InputError
    from worker.model.bundle import LoadedBundle
    from worker.pipeline.batch import BatchProcessor
    from worker.pipeline.images import prepare_image
    from worker.pipeline.items import Prepared

    bundle = LoadedBundle(bundle_path)
    att = bundle.manifest.attribution
    if att is None:
        raise SystemExit(f"{bundle_path} has no attribution head (bundles get one when trained on >= 2 generator families)")
    probs = np.full((len(items), len(att.classes)), np.nan)
    novelty = np.full(len(items), np.nan)
    with ThreadPoolExecutor(threads) as pool:
        proc = BatchProcessor.offline(bundle, pool, max_batch)
        models = proc.models.current()

        def prep(item: Item) -> Prepared | None:
            try:
                return prepare_image(item.path.read_bytes(), models, proc.settings.decode_limits, False)
            except InputError:
                return None

        for lo in range(0, len(items), max_batch):
            prepared = list(pool.map(prep, items[lo : lo + max_batch]))
            decoded = {i: p for i, p in enumerate(prepared) if p is not None}
            ok = list(decoded)
            if not ok:
                continue
            pixels = np.stack([p.pixels for p in decoded.values()])
            natives = [p.native for p in decoded.values() if p.native is not None]  # every image has one when the bundle reads it
            assert not bundle.native_crop_size or len(natives) == len(ok)
            native = np.stack(natives) if bundle.native_crop_size else None
            batch = bundle.score(pixels, native)
            for j, i in enumerate(ok):
                probs[lo + i] = [batch.attribution[c][j] for c in att.classes]
                if NOVELTY_KEY in batch.anomaly:
                    novelty[lo + i] = batch.anomaly[NOVELTY_KEY][j]
    has_novelty = bundle.manifest.drift is not None and bundle.manifest.drift.novelty is not None
    return list(att.classes), probs, novelty if has_novelty else None


def evaluate_attribution(
    bundle_path: Path, items: Sequence[Item], out: Path | None = None, label: str | None = None, max_batch: int = 64, threads: int = 2, plot: bool = True
) -> AttributionResult:
    """Score ``items`` with the bundle's attribution head and summarise (files into ``out`` when given)."""
    from schemas import Attribution
    from worker.model.bundle import read_manifest

    classes, probs, novelty = attribution_scores(bundle_path, items, max_batch, threads)  # refuses a bundle without the head
    manifest, _ = read_manifest(bundle_path)
    assert manifest.attribution is not None  # attribution_scores refused a bundle without the head
    threshold = manifest.attribution.unknown_threshold
    nv = manifest.drift.novelty if manifest.drift is not None else None
    truth = [true_family(it) for it in items]
    unseen_fams = sorted({t for t in truth if t not in classes})
    rows = [*classes, *unseen_fams]
    cols = {c: i for i, c in enumerate([*classes, UNKNOWN])}
    counts = np.zeros((len(rows), len(classes) + 1), dtype=np.int64)
    top1: dict[str, int] = {}
    unscored = 0
    for t, p in zip(truth, probs, strict=True):
        if np.isnan(p).any():
            unscored += 1
            continue
        verdict = Attribution.from_probabilities(dict(zip(classes, p.tolist(), strict=True)), threshold)
        counts[rows.index(t), cols[verdict.family]] += 1
        if classes[int(np.argmax(p))] == t:
            top1[t] = top1.get(t, 0) + 1
    res = AttributionResult(label or bundle_path.name, bundle_path, classes, threshold, rows, counts, top1, unscored=unscored)
    known_n = known_right = known_unknown = 0
    for i, fam in enumerate(rows):
        n = int(counts[i].sum())
        if not n:
            continue
        unknown = int(counts[i, -1])
        if fam in classes:
            attributed = n - unknown
            res.per_family[fam] = {
                "images": n,
                "accuracy": top1.get(fam, 0) / n,
                "unknown_rate": unknown / n,
                "accuracy_attributed": (int(counts[i, classes.index(fam)]) / attributed) if attributed else None,
            }
            known_n, known_right, known_unknown = known_n + n, known_right + top1.get(fam, 0), known_unknown + unknown
        else:
            res.unseen[fam] = {
                "images": n,
                "unknown_rate": unknown / n,
                "attributed_to": {c: int(counts[i, j]) / n for j, c in enumerate(classes) if counts[i, j]},
            }
    res.known_accuracy = known_right / known_n if known_n else None
    res.known_unknown_rate = known_unknown / known_n if known_n else 0.0
    if novelty is not None and nv is not None:
        scored = ~np.isnan(probs).any(axis=1)
        either = (np.nan_to_num(probs.max(axis=1, initial=0.0), nan=0.0) < threshold) | (np.nan_to_num(novelty, nan=0.0) > nv.threshold)
        families = np.array(truth)
        known = scored & np.isin(families, classes)
        res.novelty_threshold = nv.threshold
        res.known_unknown_rate_with_novelty = float(either[known].mean()) if known.any() else None
        res.unseen_unknown_rate_with_novelty = {f: float(either[scored & (families == f)].mean()) for f in res.unseen}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"attribution-{res.label}.json").write_text(json.dumps(res.to_json(), indent=2) + "\n")
        if plot:
            confusion_png(res, out / f"confusion-{res.label}.png")
    return res


def confusion_png(res: AttributionResult, path: Path) -> Path:
    """Row-normalised confusion matrix with counts: true family down, attributed class (and unknown) across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [*res.classes, UNKNOWN]
    norm = res.counts / np.maximum(res.counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2, 0.8 * len(res.rows) + 1.8))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(res.rows)):
        for j in range(len(cols)):
            ax.text(j, i, str(res.counts[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
    labels = [r if r in res.classes else f"{r} (unseen)" for r in res.rows]
    ax.set_yticks(range(len(res.rows)), labels, fontsize=8)
    ax.set(xlabel="attributed", ylabel="true family", title=f"attribution: {res.label} (unknown below {res.threshold:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def markdown(results: Sequence[AttributionResult]) -> str:
    """One table: per-family top-1 accuracy of known families, the known families' unknown share, and the open-set rate of unseen ones."""
    if not results:
        return ""
    fams = [*sorted({f for r in results for f in r.rows if f != REAL}), REAL]
    lines = [
        "**Attribution** (top-1 accuracy per family, %; *unseen*: the family was left out of training and the cell is its open-set rate, "
        "the share labelled `unknown` instead of a known family; in parentheses, the same with the candidate rule that also says `unknown` "
        "when the embedding's novelty distance is beyond the drift reference's p99, which the worker does not apply yet)",
        "",
        "| bundle | " + " | ".join(fams) + " | known mean | known → unknown |",
        "| --- | " + " | ".join("---:" for _ in fams) + " | ---: | ---: |",
    ]
    for r in results:
        cells = []
        for f in fams:
            if f in r.per_family:
                cells.append(_pct(r.per_family[f]["accuracy"]))
            elif f in r.unseen:
                unseen_nv = r.unseen_unknown_rate_with_novelty.get(f)
                cells.append(f"*unseen: {_pct(r.unseen[f]['unknown_rate'])}*" + (f" ({_pct(unseen_nv)})" if unseen_nv is not None else ""))
            else:
                cells.append("–")
        with_nv = f" ({_pct(r.known_unknown_rate_with_novelty)})" if r.known_unknown_rate_with_novelty is not None else ""
        lines.append(f"| {r.label} | " + " | ".join(cells) + f" | {_pct(r.known_accuracy)} | {_pct(r.known_unknown_rate)}{with_nv} |")
    lines.append("")
    return "\n".join(lines) + "\n"


def attribution_report(
    bundles: Sequence[Path], labels: Sequence[str], items: Sequence[Item], out: Path, plot: bool = True, max_batch: int = 64, threads: int = 2
) -> tuple[str, list[dict[str, Any]]]:
    """Markdown section and JSON entries for the bundles that have an attribution head ('' and [] when none has)."""
    from worker.model.bundle import read_manifest

    results = [
        evaluate_attribution(b, items, out, lab, max_batch, threads, plot)
        for b, lab in zip(bundles, labels, strict=True)
        if read_manifest(b)[0].attribution is not None
    ]
    return markdown(results), [r.to_json() for r in results]


__all__ = [
    "ATTRIBUTION_END",
    "ATTRIBUTION_START",
    "AttributionResult",
    "attribution_probabilities",
    "attribution_report",
    "attribution_scores",
    "confusion_png",
    "evaluate_attribution",
    "markdown",
]
