"""Benchmark: embedding speed with UFD's training augmentation (``export embed --augment K``).

``python -m export embed DATA OUT --augment K`` decodes every training image
once and embeds it plus K augmented copies (random crop, flip, blur with p 0.5,
JPEG with p 0.5: :mod:`export.augment`). This times :func:`export.embed.embed_dataset`
itself (the encoder load included, the interpreter's imports not: one warm-up
run pays them first) for each preprocessing mode and K, on synthetic
256 x 256 images (``export.synth``: 100 per class and family, 800 in all; 8 per
class with ``--quick``), and reports images/s (training images through the
command) and embeddings/s (images x (K + 1)).

With the tiny random-weights encoder the cost is the augmentation (resize,
blur, JPEG round trip) in the decode threads; with ViT-L/14 the encoder's K + 1
forward passes per image dominate instead, so these rows are the augmentation's
own ceiling, not a ViT-L/14 estimate.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bench.artifacts import CACHE
from bench.options import Options
from bench.results import BenchResult
from bench.stats import summarize
from schemas import PreprocessMode

MODES: tuple[PreprocessMode, ...] = ("ufd", "clip")
COPIES = (0, 1, 4)
ARCH = "aigis-tiny"


def _dataset(per_class: int) -> Path:
    """The synthetic training split, made once per size and kept in the bench cache."""
    from export.synth import SynthConfig, make_dataset

    root = CACHE / "augment" / f"data-{per_class}"
    if not (root / "synth.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        make_dataset(root, SynthConfig(train_per_class=per_class, test_per_class=1, image_size=256))
    return root / "train"


def _embed_seconds(train: Path, out: Path, mode: PreprocessMode, copies: int) -> float:
    from export.embed import EmbedOptions, embed_dataset

    shutil.rmtree(out, ignore_errors=True)  # embed resumes from chunks already there: start empty every time
    opts = EmbedOptions(arch=ARCH, random_weights=True, preprocess=mode, augment=copies)
    t0 = time.perf_counter()
    embed_dataset(train, out, opts)
    return time.perf_counter() - t0


def run_augment(opts: Options) -> BenchResult:
    r = BenchResult("augment", "Embedding with --augment K: images/s by preprocessing mode and K", opts.quick)
    per_class = 8 if opts.quick else 100
    reps = 1 if opts.quick else max(1, min(opts.reps, 3))
    train = _dataset(per_class)
    n = sum(1 for p in train.rglob("*") if p.is_file())
    out = CACHE / "augment" / "emb"
    r.config.update(arch=ARCH, weights="random", images=n, image_size=256, modes=list(MODES), copies=list(COPIES), reps=reps)
    _embed_seconds(train, out, "clip", 0)  # warm-up: torch, open_clip and the decode path imported and compiled once
    for mode in MODES:
        for k in COPIES:
            rates = [n / _embed_seconds(train, out, mode, k) for _ in range(reps)]
            s = summarize(rates)
            r.add(mode=mode, augment=k, images=n, images_per_s=s, embeddings_per_s=s["median"] * (k + 1))
            print(f"  {mode:<5} K={k}: {s['median']:7.1f} images/s, {s['median'] * (k + 1):7.1f} embeddings/s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    r.note(
        f"{ARCH} with random weights: the encoder is nearly free, so this is the decode + augmentation cost (resize, blur, JPEG round trip) "
        "on the decode threads; with ViT-L/14 the K + 1 forward passes per image dominate"
    )
    return r.finish()
