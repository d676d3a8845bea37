"""``python -m export embed DATASET OUT``: frozen open_clip embeddings of a dataset, sharded and resumable.

What the heads train on must be what the worker will compute when it serves,
so every image goes through the worker's own code: :func:`worker.ingest.decode.decode_image`
(EXIF orientation, RGB conversion, limits), :func:`worker.ingest.preprocess.clip_input`
(the ``--preprocess`` mode: ``clip``, open_clip's eval transform, or ``ufd``,
UniversalFakeDetect's native-resolution centre crop) and, for heads that read pixels,
:func:`worker.ingest.preprocess.native_crop`. Only the encoder itself runs in PyTorch
(on the GPU when there is one); ONNX-vs-PyTorch parity is checked at export.

Weights: ``--pretrained TAG_OR_CHECKPOINT`` for a real detector (OpenAI's
weights always run with QuickGELU, see :mod:`export.clip`), or
``--random-weights`` for plumbing tests; without either the command refuses.

``--augment K`` also embeds K copies of every image through UniversalFakeDetect's
training augmentation (:mod:`export.augment`: resize, blur p=0.5, JPEG p=0.5,
random crop, flip). ``python -m export bundle`` trains heads on the copies of
the training split only; validation (calibration) never sees an augmented image.

Output directory::

    meta.json                      backbone, encoder weights fingerprint, options (all shards must agree)
    chunks/s{i}of{n}-c{k}.npz      embeddings (N, D) float32, labels, generators, paths,
                                   views (N, 2, D) for --views (NaN rows for fakes),
                                   augmented (N, K, D) for --augment K,
                                   native (N, 3, S, S) uint8 for --native-crop S
    s{i}of{n}.index.csv            path, label, generator, chunk: written when shard i is complete
    s{i}of{n}.done.json            completion marker; loading refuses a set with a shard missing

Resumable: a chunk file is written atomically once its images are embedded,
and a rerun skips every chunk already on disk. ``--shard i/n`` embeds every
n-th chunk of the sorted file list starting at i, so n machines can split the
work and their output directories can be merged by copying.

Draft-mode JPEG decoding (Pillow's DCT-domain downscale) mirrors the worker:
on when no native crop is asked for, off otherwise (the worker turns it off
for bundles that have a pixel-reading head). The two differ only for JPEGs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from export.augment import AugmentSpec, augmented_input, copy_rng
from export.clip import ImageEncoder, activation_of, load_encoder
from export.datasets import Item, list_dataset
from export.heads.base import EmbeddingSet
from schemas import Preprocess, PreprocessMode, Weights
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.preprocess import clip_input, native_crop

FORMAT = 1
META = "meta.json"
#: Options that must match between runs writing into the same directory.
_FIXED = (
    "format",
    "arch",
    "pretrained",
    "seed",
    "encoder_sha256",
    "dim",
    "preprocess",
    "views",
    "native_crop",
    "chunk_size",
    "shards",
    "files_total",
    "view_seed",
    "augment",
    "augment_seed",
    "augment_spec",
)


@dataclass(frozen=True)
class EmbedOptions:
    arch: str = "ViT-L-14"
    pretrained: str | None = None
    seed: int = 0
    #: Random encoder weights are used only when asked for (tests, demo, speed benchmarks).
    random_weights: bool = False
    #: A --pretrained checkpoint whose contents cannot show whether it is OpenAI's: True (QuickGELU), False (not OpenAI's), None (undeclared).
    assume_openai: bool | None = None
    preprocess: PreprocessMode = "clip"
    #: JPEG draft decoding (clip mode): faster, not the paper's pixels; the bundle records it and serves the same.
    allow_draft: bool = False
    #: Augmented copies per image (UFD's training augmentation); 0 = none.
    augment: int = 0
    augment_seed: int = 0
    batch_size: int = 64
    chunk_size: int = 512
    views: bool = False
    view_seed: int = 0
    native_crop: int | None = None
    shard: tuple[int, int] = (0, 1)
    device: str = "auto"
    workers: int = 2


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """sha256 over the encoder's weights and activation: embeddings and the bundle's backbone must come from the same ones.

    The activation is part of it because the same weights under GELU and
    QuickGELU are two different encoders (OpenAI's need QuickGELU).
    """
    digest = hashlib.sha256()
    digest.update(f"activation={activation_of(encoder)};".encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def augment_view(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random augmentation for NTF's two views: resized crop (60-100% area), flip, colour jitter."""
    w, h = img.size
    area = w * h * rng.uniform(0.6, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, round(np.sqrt(area * aspect))))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    out = img.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(out, dtype=np.float32)
    arr = (arr - arr.mean()) * rng.uniform(0.8, 1.2) + arr.mean() * rng.uniform(0.8, 1.2)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def _view_rng(rel: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{rel}".encode()).digest()[:8], "little"))


@dataclass
class EncoderInputs:
    """What one training file feeds the encoder: the worker's CLIP pixels, NTF's two augmented views, a native-resolution crop."""

    pixels: np.ndarray
    views: np.ndarray | None
    native: np.ndarray | None
    augmented: np.ndarray | None = None


def encoder_inputs(item: Item, pre: Preprocess, opts: EmbedOptions, limits: DecodeLimits) -> EncoderInputs:
    """The worker's decode and preprocessing for one file (plus NTF's views for real images)."""
    draft = pre.image_size if (pre.allow_draft and opts.native_crop is None) else None
    decoded = decode_image(item.path.read_bytes(), limits, draft)
    pixels = clip_input(decoded.image, pre)
    views = None
    if opts.views and item.label == 0:
        rng = _view_rng(item.rel, opts.view_seed)
        views = np.stack([clip_input(augment_view(decoded.image, rng), pre) for _ in range(2)])
    native = None
    if opts.native_crop:
        native = np.round(native_crop(decoded.image, opts.native_crop) * 255.0).astype(np.uint8)
    augmented = None
    if opts.augment:
        augmented = np.stack([augmented_input(decoded.image, pre, copy_rng(item.rel, j, opts.augment_seed)) for j in range(opts.augment)])
    return EncoderInputs(pixels, views, native, augmented)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _encode(encoder: ImageEncoder, pixels: np.ndarray, device: torch.device, batch: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for lo in range(0, len(pixels), batch):
            out.append(encoder(torch.from_numpy(pixels[lo : lo + batch]).to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _chunk_name(shard: tuple[int, int], k: int) -> str:
    return f"s{shard[0]}of{shard[1]}-c{k:05d}.npz"


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    path = out / META
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), meta.get(k)) for k in _FIXED if old.get(k) != meta.get(k)}
        if diff:
            raise SystemExit(f"{out} holds embeddings made with other settings {diff}; use another output directory")
        return
    tmp = out / f".{META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, path)


def embed_dataset(root: Path, out: Path, opts: EmbedOptions, progress: bool = False) -> dict[str, Any]:
    """Embed this shard of ``root`` into ``out`` (skipping chunks already there); returns the meta."""
    from tqdm import tqdm

    i, n = opts.shard
    if not (n >= 1 and 0 <= i < n):
        raise SystemExit(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")
    items = list_dataset(root)
    if opts.augment < 0:
        raise SystemExit(f"--augment takes a number of copies >= 0, got {opts.augment}")
    encoder, pre, dim = load_encoder(
        opts.arch,
        opts.pretrained,
        seed=opts.seed,
        random_weights=opts.random_weights,
        assume_openai=opts.assume_openai,
        preprocess_mode=opts.preprocess,
        allow_draft=opts.allow_draft,
    )
    device = _device(opts.device)
    encoder = encoder.to(device)
    meta = {
        "format": FORMAT,
        "dataset": str(Path(root).resolve()),
        "arch": opts.arch,
        "pretrained": opts.pretrained,
        "seed": opts.seed,
        "encoder_sha256": encoder_fingerprint(encoder),
        "weights": encoder.weights.model_dump(mode="json"),
        "activation": encoder.activation,
        "dim": dim,
        "preprocess": pre.model_dump(mode="json"),
        "views": opts.views,
        "view_seed": opts.view_seed,
        "native_crop": opts.native_crop,
        "augment": opts.augment,
        "augment_seed": opts.augment_seed,
        "augment_spec": AugmentSpec().model_dump(mode="json") if opts.augment else None,
        "chunk_size": opts.chunk_size,
        "shards": n,
        "files_total": len(items),
    }
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    _write_meta(out, meta)

    chunks = [items[lo : lo + opts.chunk_size] for lo in range(0, len(items), opts.chunk_size)]
    mine = [(k, c) for k, c in enumerate(chunks) if k % n == i]
    todo = [(k, c) for k, c in mine if not (out / "chunks" / _chunk_name(opts.shard, k)).is_file()]
    todo_ids = {k for k, _ in todo}
    limits = DecodeLimits()
    done = sum(len(c) for k, c in mine if k not in todo_ids)
    desc = f"embed {i}/{n}" + (f" (+{opts.augment} augmented copies each)" if opts.augment else "")
    bar = tqdm(total=sum(len(c) for _, c in mine), initial=done, desc=desc, unit="img", disable=not progress)
    with ThreadPoolExecutor(max(1, opts.workers)) as pool:
        for k, chunk in todo:
            prepared: list[EncoderInputs] = []
            for lo in range(0, len(chunk), opts.batch_size):
                batch = list(pool.map(lambda it: encoder_inputs(it, pre, opts, limits), chunk[lo : lo + opts.batch_size]))
                prepared.extend(batch)
                bar.update(len(batch))
            emb = _encode(encoder, np.stack([p.pixels for p in prepared]), device, opts.batch_size)
            arrays: dict[str, np.ndarray] = {
                "embeddings": emb.astype(np.float32),
                "labels": np.array([it.label for it in chunk], dtype=np.int8),
                "generators": np.array([it.generator for it in chunk]),
                "paths": np.array([it.rel for it in chunk]),
            }
            if opts.views:
                views = np.full((len(chunk), 2, dim), np.nan, dtype=np.float32)
                rows = [j for j, p in enumerate(prepared) if p.views is not None]
                if rows:
                    flat = _encode(encoder, np.concatenate([prepared[j].views for j in rows]), device, opts.batch_size)
                    views[rows] = flat.reshape(len(rows), 2, dim)
                arrays["views"] = views
            if opts.native_crop:
                arrays["native"] = np.stack([p.native for p in prepared])  # type: ignore[misc]  # native_crop: every p.native is set
            if opts.augment:
                flat = _encode(encoder, np.concatenate([p.augmented for p in prepared]), device, opts.batch_size)
                arrays["augmented"] = flat.reshape(len(chunk), opts.augment, dim).astype(np.float32)
            path = out / "chunks" / _chunk_name(opts.shard, k)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **cast("dict[str, Any]", arrays))  # numpy's stub types **kwds as allow_pickle's bool
            os.replace(tmp, path)
    bar.close()

    with (out / f"s{i}of{n}.index.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "generator", "chunk"])
        for k, chunk in mine:
            for it in chunk:
                w.writerow([it.rel, it.label, it.generator, _chunk_name(opts.shard, k)])
    (out / f"s{i}of{n}.done.json").write_text(json.dumps({"shard": [i, n], "chunks": len(mine), "rows": sum(len(c) for _, c in mine)}) + "\n")
    return meta


def is_embedding_dir(path: Path) -> bool:
    return (Path(path) / META).is_file()


def load_embeddings(path: Path, generators: set[str] | None = None) -> tuple[EmbeddingSet, dict[str, Any]]:
    """All shards of an embedding directory as one :class:`EmbeddingSet` (sorted by path).

    Refuses an incomplete set: every shard's completion marker must be there,
    and the row count must match the number of files the dataset had.
    """
    path = Path(path)
    if not is_embedding_dir(path):
        raise SystemExit(f"{path} is not an embedding directory (no {META}); make one with `python -m export embed DATASET {path}`")
    meta = json.loads((path / META).read_text())
    n = int(meta["shards"])
    missing = [f"{i}/{n}" for i in range(n) if not (path / f"s{i}of{n}.done.json").is_file()]
    if missing:
        raise SystemExit(f"{path}: shard(s) {', '.join(missing)} not finished; run `python -m export embed ... --shard I/{n}` for them")
    parts: dict[str, list[np.ndarray]] = {}
    for f in sorted((path / "chunks").glob(f"s*of{n}-c*.npz")):
        with np.load(f) as z:
            for key in z.files:
                parts.setdefault(key, []).append(z[key])
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    rows = len(arrays.get("labels", []))
    if rows != meta["files_total"]:
        raise SystemExit(f"{path}: {rows} embedded rows but the dataset had {meta['files_total']} files; the directory is incomplete or mixed")
    order = np.argsort(arrays["paths"], kind="stable")
    if generators is not None:
        order = np.array([j for j in order if arrays["generators"][j] in generators], dtype=np.int64)
        if len(order) == 0:
            raise SystemExit(f"{path}: no rows for generators {sorted(generators)}; present: {sorted(set(arrays['generators'].tolist()))}")
    native = arrays.get("native")
    arrays.pop("augmented", None)  # training-only rows: see load_augmented
    data = EmbeddingSet(
        embeddings=arrays["embeddings"][order],
        labels=arrays["labels"][order].astype(np.int64),
        generators=[str(g) for g in arrays["generators"][order]],
        paths=[str(p) for p in arrays["paths"][order]],
        views=arrays["views"][order] if "views" in arrays else None,
        native=None if native is None else native[order].astype(np.float32) / np.float32(255.0),
    )
    return data, meta


def load_augmented(path: Path, data: EmbeddingSet) -> np.ndarray | None:
    """The --augment copies of ``data``'s rows, (len(data), K, D) aligned to ``data.paths``; None if the set has none.

    Kept apart from :func:`load_embeddings` so that only training code asks
    for them (validation, calibration and evaluation never see augmented rows).
    """
    path = Path(path)
    meta = json.loads((path / META).read_text())
    if not meta.get("augment"):
        return None
    rows: dict[str, np.ndarray] = {}
    for f in sorted((path / "chunks").glob(f"s*of{int(meta['shards'])}-c*.npz")):
        with np.load(f) as z:
            for p, a in zip(z["paths"], z["augmented"], strict=True):
                rows[str(p)] = a
    missing = [p for p in data.paths if p not in rows]
    if missing:
        raise SystemExit(f"{path}: no augmented copies for {len(missing)} rows (e.g. {missing[0]}); the directory is incomplete")
    return np.stack([rows[p] for p in data.paths]).astype(np.float32)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="Dataset root in UniversalFakeDetect layout (<generator>/0_real|1_fake/...).")
    p.add_argument("out", type=Path, help="Output directory (created; rerun to resume).")
    add_weights_arguments(p)
    p.add_argument(
        "--preprocess",
        choices=("clip", "ufd"),
        default="clip",
        help="Preprocessing mode, recorded in the bundle and served by the worker: clip (open_clip's eval transform: resize the shortest side, "
        "centre crop; default) or ufd (UniversalFakeDetect's test transform: 224 centre crop at native resolution, no resize).",
    )
    add_draft_argument(p)
    p.add_argument("--batch-size", type=int, default=64, help="Images per encoder forward pass (default 64).")
    p.add_argument("--chunk-size", type=int, default=512, help="Images per resumable output chunk (default 512).")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="Embed shard I of N (I/N, default 0/1): every N-th chunk starting at I.")
    p.add_argument("--views", action="store_true", help="Also embed two random augmentations of every real image (the NTF head needs them).")
    p.add_argument("--view-seed", type=int, default=0, help="Seed of the view augmentations (default 0).")
    p.add_argument("--native-crop", type=int, default=None, metavar="S", help="Also store the S x S native-resolution centre crop (the freq head needs it).")
    p.add_argument(
        "--augment",
        type=int,
        default=0,
        metavar="K",
        help="Also embed K augmented copies of every image with UniversalFakeDetect's training augmentation (resize, blur p=0.5 sigma 0-3, "
        "JPEG p=0.5 quality 30-100, random crop, flip). Heads train on the copies of the training split; validation is never augmented. Default 0.",
    )
    p.add_argument("--augment-seed", type=int, default=0, help="Seed of the augmentation draws (default 0).")
    p.add_argument("--device", default="auto", help="torch device for the encoder (default: cuda if available, else cpu).")
    p.add_argument("--workers", type=int, default=2, help="Decode/preprocess threads (default 2).")


def add_draft_argument(p: argparse.ArgumentParser, default: bool | None = False) -> None:
    p.add_argument(
        "--allow-draft",
        action="store_true",
        default=default,
        help="clip mode: decode JPEGs with libjpeg's DCT downscale (never below the crop size) before the resize, here and in the worker "
        "(recorded in the bundle). 3-4x faster decode of 12 MP photos, but not the pixels of the paper's transform (scores move by ~1e-4 to 5e-4). "
        "Default off (bundle: as its --data embeddings were made).",
    )


def add_weights_arguments(
    p: argparse.ArgumentParser,
    default_arch: str | None = "ViT-L-14",
    arch_help: str = "open_clip architecture (default ViT-L-14, 768-d, what the papers use; aigis-tiny for tests and the demo).",
) -> None:
    """--arch, --pretrained, --random-weights, --openai-weights, --seed: shared by embed, bundle and benchmark."""
    p.add_argument("--arch", default=default_arch, help=arch_help)
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="TAG_OR_CHECKPOINT",
        help="Encoder weights: an open_clip tag (e.g. openai; needs the hub) or a checkpoint file (e.g. OpenAI's ViT-L-14.pt). "
        "OpenAI's weights are recognised and always run with QuickGELU.",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="Use random encoder weights (deterministic from --seed): for tests, demos and speed benchmarks only; scores then mean nothing.",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--openai-weights",
        dest="openai_weights",
        action="store_const",
        const=True,
        default=None,
        help="The --pretrained checkpoint is OpenAI's CLIP in a layout that does not show it (e.g. converted on the HF hub): run it with QuickGELU.",
    )
    who.add_argument(
        "--not-openai-weights",
        dest="openai_weights",
        action="store_const",
        const=False,
        help="The --pretrained checkpoint is not OpenAI's (e.g. LAION's, trained with GELU): run the config's activation. One of the two is "
        "required for a checkpoint of an architecture OpenAI released when the file itself cannot show it.",
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the random encoder weights with --random-weights (and of training in bundle).")


def options_from(args: argparse.Namespace) -> EmbedOptions:
    return EmbedOptions(
        arch=args.arch,
        pretrained=args.pretrained,
        seed=args.seed,
        random_weights=args.random_weights,
        assume_openai=args.openai_weights,
        preprocess=args.preprocess,
        allow_draft=args.allow_draft,
        augment=args.augment,
        augment_seed=args.augment_seed,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        views=args.views,
        view_seed=args.view_seed,
        native_crop=args.native_crop,
        shard=args.shard,
        device=args.device,
        workers=args.workers,
    )


def run(args: argparse.Namespace) -> int:
    meta = embed_dataset(args.dataset, args.out, options_from(args), progress=True)
    i, n = args.shard
    extra = f", {meta['augment']} augmented copies each" if meta["augment"] else ""
    print(
        f"embedded shard {i}/{n} of {meta['files_total']} files from {args.dataset} into {args.out} "
        f"({meta['arch']}, {meta['dim']}-d, weights {Weights.model_validate(meta['weights']).label}, preprocess {meta['preprocess']['mode']}{extra})"
    )
    return 0
