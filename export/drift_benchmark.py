"""``python -m export drift-benchmark OUT``: false alarms and detection delay of the worker's drift statistics.

On the synthetic benchmark (:mod:`export.synth`), with the worker's own code
from image bytes to drift reports:

1. **data**: the training split (``OUT/data``, as ``export benchmark`` makes
   it), and a **stream pool** (``OUT/stream``): fresh crops and augmentations
   of the *training* photographs, never seen in training, for every family
   and for real images: a stream from the distribution the bundle was trained
   on. A second pool (``OUT/stream-new-photos``) is made from the test
   photographs: the same families on scenes the bundle never saw.
2. **bundles**: one trained on every family (``bundles/all``) and one per
   family G trained without it (``bundles/without-G``,
   ``--exclude-generator G``: a generator that ships after the model).
   Each carries its drift reference (``export/monitoring.py``).
3. **scores**: every pool image through :func:`worker.score.score_files`
   (the worker's :class:`~worker.pipeline.batch.BatchProcessor`, ONNX Runtime),
   once per bundle, cached in ``OUT/scores``.
4. **false alarms**: streams of known families and real images (every bundle;
   the full pool at its 50% fake share, and at 20%) fed, in random order, in
   batches of 32, into :class:`worker.ops.drift.DriftMonitor` with the
   worker's default ``--drift-*`` settings; every ``alarm`` report counts.
5. **detection delay**: for bundle ``without-G``, a window's worth of known
   images, then G's fakes mixed in at a stated share; the number of images
   from the first G image to the first alarm (median and range over
   ``--repeats`` random orders), and which statistic fired.

``--readme README.md`` rewrites the README's generated drift results and the
attribution table (per-family accuracy of ``bundles/all``, open-set rate of
each left-out family, on ``OUT/data/test``). Every stage is cached and
resumable: a rerun skips what is on disk (``--until`` stops after a stage, to
keep runs short on a shared machine).

The data are synthetic and the backbone is the tiny random-weight config: a
functional benchmark of the monitoring path, not evidence about real
generators (README, Drift).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np

DRIFT_START = "<!-- drift:results:start -->"
DRIFT_END = "<!-- drift:results:end -->"
STAGES = ("data", "bundles", "scores", "streams")
BATCH = 32


# -- stream pools ---------------------------------------------------------------------------------------------


def make_pool(out: Path, photos: str, per_class: int, seed: int, image_size: int = 224, families: Sequence[str] | None = None, progress: bool = True) -> Path:
    """Fresh crops of the ``photos`` ('train' or 'test') photographs, real and per family, in UniversalFakeDetect layout.

    Uses :mod:`export.synth`'s own photo split, crops, augmentation and
    generator families, with random streams of their own (never the ones the
    dataset's splits used), so no pool image is a training image.
    """
    from tqdm import tqdm

    from export.photos import load_rgb, photo_paths
    from export.synth import FAKE_DIR, FAMILIES, GENERATORS, REAL_DIR, SynthConfig, _png, mild_augment, random_crop, split_photos

    done = out / "pool.json"
    families = list(families or GENERATORS)
    desc = {"photos": photos, "per_class": per_class, "seed": seed, "image_size": image_size, "families": families}
    if done.is_file() and json.loads(done.read_text()) == desc:
        return out
    split = split_photos(photo_paths(), seed, SynthConfig().test_fraction, image_size)
    images = [load_rgb(p) for p in split[photos]]
    bar = tqdm(total=per_class * 2 * len(families), desc=f"pool {out.name}", unit="img", disable=not progress)
    for gi, family in enumerate(families):
        gen = FAMILIES[family](seed)
        for li, label_dir in enumerate((REAL_DIR, FAKE_DIR)):
            folder = out / family / label_dir
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                path = folder / f"{family}-{label_dir[2:]}-{i:05d}.png"
                if not path.is_file():  # one random stream per image: a rerun resumes where the last one stopped
                    rng = np.random.default_rng([seed, 17 if photos == "train" else 18, gi, li, i])
                    crop = random_crop(images[int(rng.integers(len(images)))], image_size, rng)
                    img = mild_augment(crop, rng) if label_dir == REAL_DIR else gen(crop, rng)
                    tmp = path.with_suffix(".tmp")
                    tmp.write_bytes(_png(img))
                    tmp.replace(path)
                bar.update(1)
    bar.close()
    done.write_text(json.dumps(desc) + "\n")
    return out


# -- scores -------------------------------------------------------------------------------------------------------


@dataclass
class Scored:
    """One bundle's verdict signals for every image of a pool, in list_dataset order."""

    family: np.ndarray  # 'real' for real images, else the generator folder
    score: np.ndarray
    heads: dict[str, np.ndarray]
    anomaly: dict[str, np.ndarray]

    def observations(self, rows: np.ndarray):
        from worker.ops.drift import Observation

        return [
            Observation(float(self.score[i]), {k: float(v[i]) for k, v in self.heads.items()}, {k: float(v[i]) for k, v in self.anomaly.items()}, at=0.0)
            for i in rows
        ]


def score_pool(bundle: Path, pool: Path, cache: Path, progress: bool = True) -> Scored:
    """Every image of ``pool`` through the worker's pipeline (worker.score.score_files), cached as npz."""
    from tqdm import tqdm

    from export.datasets import list_dataset
    from worker.model.bundle import LoadedBundle
    from worker.score import score_files

    loaded = LoadedBundle(bundle)
    path = cache / f"{bundle.name}--{pool.name}--{loaded.sha256[:12]}.npz"
    items = list_dataset(pool)
    family = np.array(["real" if it.label == 0 else it.generator for it in items])
    if path.is_file():
        z = np.load(path)
        return Scored(family, z["score"], {k[5:]: z[k] for k in z.files if k.startswith("head:")}, {k[8:]: z[k] for k in z.files if k.startswith("anomaly:")})
    score = np.full(len(items), np.nan)
    heads: dict[str, np.ndarray] = {}
    anomaly: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(items), desc=f"score {bundle.name} on {pool.name}", unit="img", disable=not progress)
    step = 512
    for lo in range(0, len(items), step):
        outcomes = score_files(loaded, [it.path for it in items[lo : lo + step]], max_batch=64)
        for i, o in enumerate(outcomes, start=lo):
            v = o.verdict
            if v is None:
                continue
            score[i] = v.score
            for k, x in v.head_scores.items():
                heads.setdefault(k, np.full(len(items), np.nan))[i] = x
            for k, x in v.anomaly.items():
                anomaly.setdefault(k, np.full(len(items), np.nan))[i] = x
        bar.update(len(outcomes))
    bar.close()
    cache.mkdir(parents=True, exist_ok=True)
    arrays = {"score": score, **{f"head:{k}": v for k, v in heads.items()}, **{f"anomaly:{k}": v for k, v in anomaly.items()}}
    np.savez(path, **cast("dict[str, Any]", arrays))  # numpy types **kwds as allow_pickle
    return Scored(family, score, heads, anomaly)


# -- streams ------------------------------------------------------------------------------------------------------


def run_stream(monitor, scored: Scored, order: np.ndarray) -> list[tuple[int, Any]]:
    """Feed ``order`` (row indices) in batches of 32; returns (images streamed when it fired, report) for every alarm."""
    fired = []
    for lo in range(0, len(order), BATCH):
        chunk = order[lo : lo + BATCH]
        for r in monitor.observe_scores(scored.observations(chunk), now=0.0):
            if r.status.value == "alarm":
                fired.append((lo + len(chunk), r))
    return fired


def _monitor(bundle: Path, settings: Any):
    from schemas import BundleRef
    from worker.model.bundle import read_manifest
    from worker.ops.drift import DriftMonitor

    manifest, sha = read_manifest(bundle)
    m = DriftMonitor.for_bundle(manifest, BundleRef(name=manifest.name, version=manifest.version, sha256=sha), settings)
    if m is None:
        raise SystemExit(f"{bundle} has no drift reference")
    return m


def false_alarms(bundle: Path, scored: Scored, rows: np.ndarray, fake_share: float | None, orders: int, seed: int, label: str, settings: Any) -> dict[str, Any]:
    """Stream the given rows (subsampled to ``fake_share`` when set) in ``orders`` random orders; count alarms."""
    rng = np.random.default_rng(seed)
    real = rows[scored.family[rows] == "real"]
    fake = rows[scored.family[rows] != "real"]
    streamed, alarms = 0, 0
    by: dict[str, Any] = {}
    distinct = 0
    first: list[dict[str, Any] | None] = []
    for _ in range(orders):
        if fake_share is None:
            chosen = rows
        else:  # keep every real image, as many fakes as the share asks (or every fake and fewer reals)
            n_fake = min(len(fake), round(len(real) * fake_share / (1 - fake_share)))
            n_real = min(len(real), round(n_fake * (1 - fake_share) / fake_share)) if n_fake == len(fake) else len(real)
            chosen = np.concatenate([rng.choice(real, n_real, replace=False), rng.choice(fake, n_fake, replace=False)])
        distinct = max(distinct, len(chosen))
        order = rng.permutation(chosen)
        fired = run_stream(_monitor(bundle, settings), scored, order)
        streamed += len(order)
        alarms += len(fired)
        first.append({"at": fired[0][0], "statistic": f"{fired[0][1].statistic.value}:{fired[0][1].signal}"} if fired else None)
        for _, r in fired:
            key = f"{r.statistic.value}:{r.signal}"
            by[key] = by.get(key, 0) + 1
    share = float((scored.family[chosen] != "real").mean())
    return {
        "bundle": bundle.name,
        "stream": label,
        "fake_share": share,
        "distinct": distinct,
        "orders": orders,
        "streamed": streamed,
        "alarms": alarms,
        "by": by,
        "first": first,
    }


def detection(bundle: Path, scored: Scored, unseen: str, share: float, warmup: int, repeats: int, seed: int, settings: Any) -> dict[str, Any]:
    """Known images for ``warmup``, then the unseen family at ``share``: images (and unseen images) until the first alarm."""
    rng = np.random.default_rng(seed)
    known = np.nonzero(scored.family != unseen)[0]
    new = np.nonzero(scored.family == unseen)[0]
    runs = []
    for _ in range(repeats):
        k = rng.permutation(known)
        n = rng.permutation(new)
        head, tail = k[:warmup], k[warmup:]
        mixed, ki, ni = [], 0, 0
        while ki < len(tail) and ni < len(n):
            if rng.random() < share:
                mixed.append(n[ni])
                ni += 1
            else:
                mixed.append(tail[ki])
                ki += 1
        order = np.concatenate([head, np.array(mixed, dtype=np.int64)])
        fired = run_stream(_monitor(bundle, settings), scored, order)
        before = [f for f in fired if f[0] <= warmup]
        after = [f for f in fired if f[0] > warmup]
        if after:
            at, report = after[0]
            delay = at - warmup
            runs.append(
                {
                    "delay": delay,
                    "unseen_seen": int(np.isin(order[warmup:at], new).sum()),
                    "statistic": f"{report.statistic.value}:{report.signal}",
                    "warmup_alarms": len(before),
                }
            )
        else:
            runs.append({"delay": None, "streamed_after_onset": len(mixed), "warmup_alarms": len(before)})
    return {"bundle": bundle.name, "unseen": unseen, "share": share, "warmup": warmup, "runs": runs}


# -- report -------------------------------------------------------------------------------------------------------


def _median_range(values: list[int]) -> str:
    if not values:
        return "–"
    return f"{int(np.median(values)):,} ({min(values):,}–{max(values):,})"


def poisson_upper(k: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a Poisson mean after ``k`` events (chi-square, Wilson-Hilferty: ~1%)."""
    from worker.ops.drift import chi2_quantile

    return chi2_quantile(confidence, 2 * k + 2) / 2


def censored_summary(runs: Sequence[dict[str, Any]]) -> str:
    """Median (min–max) delay over every run, a run that never fired counting as longer than what it streamed.

    A run without an alarm is right-censored at ``streamed_after_onset``: its delay is more than that. The
    median of the bounds is a lower bound of the true median (the median is monotone in each value), and it is
    exact when every censored run sorts above the middle; otherwise the cell says ``>``. So a cell never shows the
    median of the runs that fired as if the others had not been run.
    """
    bounds = sorted(
        ((r["delay"], False) if r["delay"] is not None else (r["streamed_after_onset"], True) for r in runs),
        key=lambda b: (b[0], b[1]),
    )
    n = len(bounds)
    if not n:
        return "–"
    misses = sum(c for _, c in bounds)
    middle = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
    median = int(np.mean([bounds[i][0] for i in middle]))
    exact = all(i > max(middle) for i, (_, c) in enumerate(bounds) if c)
    lo = bounds[0]
    hi = max(b[0] for b in bounds)
    text = f"{'' if exact else '>'}{median:,} ({'>' if lo[1] else ''}{lo[0]:,}–{'>' if misses else ''}{hi:,})"
    if misses:
        text += f"; {misses}/{n} did not fire"
    return text


def markdown(fa: list[dict[str, Any]], det: list[dict[str, Any]], content: dict[str, Any] | None, settings: dict[str, Any], intro: str) -> str:
    lines = [intro, ""]
    total_streamed = sum(r["streamed"] for r in fa)
    total_alarms = sum(r["alarms"] for r in fa)
    lines.append(
        f"**False alarms**: {total_alarms} in {total_streamed:,} streamed verdicts = **{total_alarms / total_streamed * 1e4:.2f} per 10,000 images** "
        f"(one-sided 95% Poisson upper bound {poisson_upper(total_alarms) / total_streamed * 1e4:.2f}; "
        "known families and real images only; each stream a random order of the pool). The stable streams are new crops of the *training "
        "photographs*: the scenes the bundle was trained on, so this is the rate when only the generators are known, not the scenes; a live "
        "stream's scenes change, and "
        + (
            f"on **new scenes** (the test photographs, known families) the rate is **{content['alarms'] / content['streamed'] * 1e4:.2f} per 10,000** "
            f"({content['alarms']} in {content['streamed']:,}: {content['distinct']:,} images × {content['orders']} orders; below)."
            if content is not None and content.get("streamed")
            else "new scenes were not measured in this run (`--new-photos-per-class 0`)."
        )
    )
    lines.append("")
    lines.append("| bundle | stream | fake share | images (distinct × orders) | alarms | per 10,000 | which |")
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for r in fa:
        which = ", ".join(f"{k} {v}" for k, v in sorted(r["by"].items())) or "–"
        lines.append(
            f"| {r['bundle']} | {r['stream']} | {r['fake_share']:.0%} | {r['distinct']:,} × {r['orders']} | {r['alarms']} | "
            f"{r['alarms'] / r['streamed'] * 1e4:.2f} | {which} |"
        )
    lines.append("")
    shares = sorted({d["share"] for d in det})
    lines.append(
        "**Detection delay**: bundle trained without family G, a window of known images, then G's fakes mixed in at the stated share; "
        "images from G's first image to the first alarm, median (min–max) over random orders, and how many of them were G's (median over "
        "the runs that fired, said so when some did not); the statistic that fired first (most often). A run that never fired counts "
        "as longer than the images it streamed: its cell says how many did not fire and shows `>` where the median or the maximum is only a lower bound."
    )
    lines.append("")
    lines.append("| unseen family | " + " | ".join(f"share {s:.0%}" for s in shares) + " | first statistic |")
    lines.append("| --- | " + " | ".join("---:" for _ in shares) + " | --- |")
    for fam in sorted({d["unseen"] for d in det}):
        cells: list[str] = []
        stats: dict[str, Any] = {}
        for s in shares:
            d = next(x for x in det if x["unseen"] == fam and x["share"] == s)
            unseen = [r["unseen_seen"] for r in d["runs"] if r["delay"] is not None]
            if unseen:
                cell = f"{censored_summary(d['runs'])}; {int(np.median(unseen))} unseen" + (" in those that fired" if len(unseen) < len(d["runs"]) else "")
            else:
                cell = f"{len(d['runs'])}/{len(d['runs'])} did not fire in {min(r['streamed_after_onset'] for r in d['runs']):,}+ images"
            cells.append(cell)
            for r in d["runs"]:
                if r["delay"] is not None:
                    stats[r["statistic"]] = stats.get(r["statistic"], 0) + 1
        first = max(stats, key=lambda k: stats[k]) if stats else "–"
        lines.append(f"| {fam} | " + " | ".join(cells) + f" | {first} |")
    lines.append("")
    if content is not None:
        firsts = [f for f in content["first"] if f is not None]
        ats = ", ".join(f"{f['at']:,}" for f in firsts)
        which = ", ".join(sorted({f["statistic"] for f in firsts}))
        lines.append(
            f"**New scenes** (not a new generator): the pool made from the test photographs (scenes absent from training, known families, "
            f"{content['distinct']:,} images) through `bundles/all`, {content['orders']} random orders: {content['alarms']} alarm(s) in "
            f"{content['streamed']:,} verdicts ({content['alarms'] / content['streamed'] * 1e4:.2f} per 10,000); "
            + (f"first alarm after {ats} images ({which}); {len(content['first']) - len(firsts)} order(s) without one. " if firsts else "no alarm. ")
            + "Whether that is a false alarm is the operator's call: the scenes did shift, the generators did not."
        )
        lines.append("")
    lines.append("Settings: " + ", ".join(f"`--drift-{k.replace('_', '-')}` {v}" for k, v in settings.items()) + "; batches of 32 fresh verdicts.")
    return "\n".join(lines).rstrip() + "\n"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "drift-benchmark",
        help="false alarms and detection delay of the drift statistics on synthetic streams",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, help="Work directory (data, stream pools, bundles, scores, report).")
    p.add_argument("--method", action="append", default=None, help="Detector head(s) of the bundles (default gendet: its discrepancy is monitored too).")
    p.add_argument("--arch", default="aigis-tiny", help="open_clip architecture (default aigis-tiny, random weights).")
    p.add_argument("--seed", type=int, default=0, help="Seed of data, weights, training and stream orders (default 0).")
    p.add_argument("--train-per-class", type=int, default=120, help="Training images per class and family (default 120, as export benchmark).")
    p.add_argument("--test-per-class", type=int, default=50, help="Test images per class and family, for the attribution table (default 50).")
    p.add_argument("--stream-per-class", type=int, default=1000, help="Stream-pool images per class and family (default 1000: 8,000 images).")
    p.add_argument("--new-photos-per-class", type=int, default=250, help="Images per class and family of the new-scenes pool (default 250; 0 = skip).")
    p.add_argument("--unseen", action="append", default=None, help="Family to leave out and stream as the new generator (repeatable; default all).")
    p.add_argument(
        "--share", action="append", type=float, default=None, help="Share of the stream the unseen family takes (repeatable; default 5%%, 10%%, 20%%)."
    )
    p.add_argument("--repeats", type=int, default=5, help="Random orders per detection cell (default 5).")
    p.add_argument("--orders", type=int, default=2, help="Random orders per false-alarm stream (default 2).")
    p.add_argument("--profile", default="small-data", help="Training profile (default small-data).")
    p.add_argument("--drift-window-images", type=int, default=None, help="Drift window in images (default: the worker's default).")
    p.add_argument("--drift-min-images", type=int, default=None, help="Images before the first judgement (default: the worker's default).")
    p.add_argument("--until", choices=STAGES, default=None, help="Stop after this stage (the rest runs on the next call; everything is cached).")
    p.add_argument("--readme", type=Path, default=None, help="Rewrite the README's generated drift results and attribution table.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from export.attribution_eval import ATTRIBUTION_END, ATTRIBUTION_START, evaluate_attribution
    from export.attribution_eval import markdown as attribution_markdown
    from export.datasets import list_dataset
    from export.embed import EmbedOptions, embed_dataset
    from export.evaluate import replace_between
    from export.synth import GENERATORS, SynthConfig, make_dataset
    from export.train import make_method, train_bundle
    from worker.app import drift_settings
    from worker.config import WorkerConfig

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    timing_file = out / "timings.json"
    timings: dict[str, float] = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    t0 = time.perf_counter()

    def stage_done(name: str) -> bool:
        """Record the stage's compute time (summed over runs: stages are cached) and say whether to stop here."""
        nonlocal t0
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        timing_file.write_text(json.dumps(timings) + "\n")
        t0 = time.perf_counter()
        return args.until == name

    methods = args.method or ["gendet"]
    unseen = args.unseen or list(GENERATORS)
    shares = sorted(args.share or [0.05, 0.1, 0.2])

    # 1. data
    data = out / "data"
    if not (data / "synth.json").is_file():
        # lossless, like the stream pools below: a storage change between training and stream data would be a shift of its own
        cfg = SynthConfig(seed=args.seed, train_per_class=args.train_per_class, test_per_class=args.test_per_class, encoding="png")
        make_dataset(data, cfg, progress=True)
    pool = make_pool(out / "stream", "train", args.stream_per_class, args.seed)
    new_pool = make_pool(out / "stream-new-photos", "test", args.new_photos_per_class, args.seed) if args.new_photos_per_class else None
    if stage_done("data"):
        return 0

    # 2. bundles
    built = [make_method(m, args.profile, {}, args.seed) for m in methods]
    crops = sorted({m.crop_size for m in built if "native_crop" in m.inputs and m.crop_size})
    emb = out / "embeddings"
    embed_dataset(
        data / "train",
        emb,
        EmbedOptions(arch=args.arch, seed=args.seed, random_weights=True, views=any(m == "ntf" for m in methods), native_crop=crops[0] if crops else None),
    )
    bundles = {"all": out / "bundles" / "all", **{g: out / "bundles" / f"without-{g}" for g in unseen}}
    for key, path in bundles.items():
        if (path / "manifest.json").is_file():
            continue
        print(f"[drift-benchmark] bundle {path.name}")
        train_bundle(
            path,
            data=emb,
            methods=methods,
            arch=args.arch,
            pretrained=None,
            random_weights=True,  # a functional benchmark of the drift statistics, on the tiny random-weight config
            seed=args.seed,
            profile=args.profile,
            exclude_generators=None if key == "all" else [key],
            name=f"drift-{path.name}",
        )
    if stage_done("bundles"):
        return 0

    # 3. scores
    scores = {key: score_pool(path, pool, out / "scores") for key, path in bundles.items()}
    new_scores = score_pool(bundles["all"], new_pool, out / "scores") if new_pool is not None else None
    if stage_done("scores"):
        return 0

    # 4. false alarms, 5. detection delay, with the worker's drift settings (window options overridable)
    overrides = {"drift_window_images": args.drift_window_images, "drift_min_images": args.drift_min_images}
    worker_cfg = WorkerConfig(**{k: v for k, v in overrides.items() if v is not None})
    drift = drift_settings(worker_cfg)
    assert drift is not None  # drift_monitor is on by default
    every = np.arange(len(scores["all"].family))
    fa = [
        false_alarms(bundles["all"], scores["all"], every, None, args.orders, args.seed, "all families + real", drift),
        false_alarms(bundles["all"], scores["all"], every, 0.2, args.orders, args.seed + 1, "all families + real, 20% fake", drift),
    ]
    det = []
    for g in unseen:
        s = scores[g]
        known = np.nonzero(s.family != g)[0]
        fa.append(false_alarms(bundles[g], s, known, None, args.orders, args.seed + 2, f"without {g}", drift))
        for share in shares:
            det.append(detection(bundles[g], s, g, share, drift.window_images, args.repeats, args.seed + 3, drift))
    content = None
    if new_scores is not None:
        every_new = np.arange(len(new_scores.family))
        content = false_alarms(bundles["all"], new_scores, every_new, None, args.orders, args.seed + 4, "new scenes (test photographs)", drift)

    # attribution table: bundles/all per family, each left-out family's open-set rate, on the test split
    items = list_dataset(data / "test")
    att = [evaluate_attribution(bundles["all"], items, out / "attribution", "all")]
    att += [evaluate_attribution(bundles[g], items, out / "attribution", f"without-{g}") for g in unseen]

    settings = {k: getattr(worker_cfg, f"drift_{k}") for k in ("window_images", "window_s", "min_images", "eval_every", "alpha", "psi_min", "rate_min_excess")}
    stage_done("streams")
    elapsed = sum(timings.values())
    command = (
        "python -m export " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["drift-benchmark"] else "python -m export drift-benchmark"
    )
    intro = (
        f"Measured on {datetime.now(UTC).date().isoformat()} by `{command}` "
        f"({elapsed / 60:.0f} min over all stages, cached between runs, on {platform.machine()}; "
        f"backbone `{args.arch}` with random weights, "
        f"heads {', '.join(methods)} (profile `{args.profile}`, {args.train_per_class} training images per class and family), "
        f"stream pool of {len(scores['all'].family):,} images: new crops of the training photographs. Every verdict comes from the worker's pipeline "
        "(`worker.score.score_files`), every report from `worker.ops.drift.DriftMonitor`."
    )
    md = markdown(fa, det, content, settings, intro)
    att_md = attribution_markdown(att) + (
        f"\nMeasured by the same command on `{data / 'test'}` ({args.test_per_class} images per class and family, test photographs); "
        "`unknown` below each bundle's threshold (set on its validation split against each of its families left out in turn, "
        "at most the threshold that keeps 95% of validation images attributed: `attribution.training.open_set` in its manifest). "
        f"Confusion matrices: `{out / 'attribution'}/confusion-*.png`.\n"
    )
    report = {"false_alarms": fa, "detection": det, "new_scenes": content, "settings": settings, "attribution": [a.to_json() for a in att]}
    (out / "drift-report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "drift-report.md").write_text(md + "\n" + att_md)
    print(md)
    print(att_md)
    if args.readme:
        text = args.readme.read_text()
        text = replace_between(text, DRIFT_START, DRIFT_END, md)
        text = replace_between(text, ATTRIBUTION_START, ATTRIBUTION_END, att_md)
        args.readme.write_text(text)
        print(f"updated {args.readme}")
    return 0


__all__ = ["DRIFT_END", "DRIFT_START", "add_parser", "censored_summary", "detection", "false_alarms", "make_pool", "markdown", "run", "score_pool"]
