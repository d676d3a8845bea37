"""``python -m export synth OUT``: a small real/fake dataset made here, in UniversalFakeDetect layout.

No dataset can be downloaded on this network, so the project makes one:

* **real**: crops of the photographs scikit-image ships (:mod:`export.photos`),
  downscaled to the output size (never upscaled: an upscaled "real" image would
  carry interpolation traces) with mild augmentations (flip, brightness,
  contrast, gamma);
* **fake**: crops of the same photographs pushed through one of several
  *generator families* the project implements, each leaving the kind of trace
  the papers talk about:

  - ``tconv``: a GAN-like decoder: 4x downscale, then two stride-2 transposed
    convolutions with a fixed, slightly unbalanced kernel: checkerboard traces;
  - ``upsample-texture``: nearest then bilinear upsampling of a 4x smaller
    image plus a periodic "learned-looking" texture tile modulated by luminance;
  - ``diffusion``: latent-diffusion-like: a 4x smaller latent is re-noised and
    low-passed (a denoising step), decoded bicubically with a faint fixed
    16-px pattern (the decoder's fingerprint) and oversaturated;
  - ``autoencoder``: VQ-autoencoder-like: 8x quantised latent, nearest decode
    with a faint fixed 8-px cell pattern, unsharp-mask halos.

Every family leaves a *fixed* pattern (a GAN's or decoder's weights are the
same for every image it makes), as well as its own blur/upsampling. That
matters for the tests' random-weight backbone: random linear features see a
consistent pattern but average random noise away (a family that only added
random grain was invisible to it).

Layout::

    OUT/train/<generator>/0_real/*.png   OUT/train/<generator>/1_fake/*.png
    OUT/test/<generator>/0_real/*.png    OUT/test/<generator>/1_fake/*.png
    OUT/synth.json                       (what was made, from which photos, with which seed)

Every generator folder has its own real images, as in UniversalFakeDetect, so
leave-one-generator-out is a matter of choosing folders. No leak between
``train`` and ``test``: the source photographs are split between them (colour
and greyscale photos separately), so no test image shares content with a
training image, real or fake. Everything is deterministic from ``--seed``.

This is a *functional* benchmark: it checks that training, export, serving and
evaluation work and that the heads learn what the data offers. It is not
evidence about real generators.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from export.photos import COLOUR, load_rgb, photo_paths

GENERATORS = ("tconv", "upsample-texture", "diffusion", "autoencoder")
SPLITS = ("train", "test")
REAL_DIR, FAKE_DIR = "0_real", "1_fake"


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    image_size: int = 224
    train_per_class: int = 32
    test_per_class: int = 16
    generators: tuple[str, ...] = GENERATORS
    test_fraction: float = 0.34


# -- sources -------------------------------------------------------------------------------------


def split_photos(paths: Sequence[Path], seed: int, test_fraction: float, min_side: int) -> dict[str, list[Path]]:
    """Disjoint train/test photo lists, colour and greyscale split separately so both splits have each."""
    usable = [p for p in paths if min(Image.open(p).size) >= min_side]
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {"train": [], "test": []}
    for group in ([p for p in usable if p.name in COLOUR], [p for p in usable if p.name not in COLOUR]):
        if not group:
            continue
        order = [group[i] for i in rng.permutation(len(group))]
        n_test = max(1, round(len(order) * test_fraction)) if len(order) > 1 else 0
        out["test"].extend(order[:n_test])
        out["train"].extend(order[n_test:])
    if not out["train"] or not out["test"]:
        raise SystemExit(f"need at least two photographs at least {min_side}px on the short side; found {len(usable)}")
    return out


def random_crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A square crop of side in [size, short side], downscaled (never upscaled) to ``size``."""
    w, h = img.size
    short = min(w, h)
    side = int(rng.integers(size, max(size, int(short * 0.8)) + 1))
    left = int(rng.integers(0, w - side + 1))
    top = int(rng.integers(0, h - side + 1))
    crop = img.crop((left, top, left + side, top + side))
    return crop if side == size else crop.resize((size, size), Image.Resampling.LANCZOS)


def mild_augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Flip, brightness, contrast, gamma: what two photos of one scene differ by."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    gamma = float(rng.uniform(0.9, 1.1))
    arr = arr**gamma
    contrast = float(rng.uniform(0.9, 1.1))
    brightness = float(rng.uniform(-0.05, 0.05))
    arr = (arr - arr.mean()) * contrast + arr.mean() + brightness
    return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8))


# -- generator families ----------------------------------------------------------------------------


def _family_rng(seed: int, family: str) -> np.random.Generator:
    """The generator's fixed "weights": the same for every image it makes."""
    digest = hashlib.sha256(f"{seed}:{family}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _to_uint8(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def _downscale(img: Image.Image, factor: int) -> np.ndarray:
    w, h = img.size
    return np.asarray(img.resize((w // factor, h // factor), Image.Resampling.BOX), dtype=np.float32)


def _tconv_up2(arr: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Stride-2 transposed convolution (4x4 kernel, padding 1) per channel, via zero insertion."""
    h, w, c = arr.shape
    up = np.zeros((2 * h, 2 * w, c), dtype=np.float32)
    up[::2, ::2] = arr
    padded = np.pad(up, ((2, 1), (2, 1), (0, 0)), mode="edge")
    out = np.zeros_like(up)
    for dy in range(4):
        for dx in range(4):
            out += kernel[dy, dx] * padded[dy : dy + 2 * h, dx : dx + 2 * w]
    return out


def make_tconv(seed: int) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    frng = _family_rng(seed, "tconv")
    base = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]).astype(np.float32)  # bilinear: no checkerboard
    kernels = []
    for _ in range(2):
        k = base * (1.0 + frng.uniform(-0.35, 0.35, size=(4, 4)).astype(np.float32))
        kernels.append(k / k.sum() * 4.0)  # unbalanced phases -> period-2 pattern

    def gen(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        x = _downscale(img, 4)
        for k in kernels:
            x = _tconv_up2(x, k)
            x = np.where(x > 0, x, 0.1 * x)  # leaky ReLU between layers, as in a decoder
        return _to_uint8(x)

    return gen


def make_upsample_texture(seed: int) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    frng = _family_rng(seed, "upsample-texture")
    tile = frng.normal(0, 1, size=(8, 8, 1)).astype(np.float32)
    tile = (tile - tile.mean()) / tile.std() * 7.0

    def gen(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = img.size
        small = img.resize((w // 4, h // 4), Image.Resampling.BOX)
        mid = small.resize((w // 2, h // 2), Image.Resampling.NEAREST)
        x = np.asarray(mid.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        texture = np.tile(tile, (h // 8 + 1, w // 8 + 1, 1))[:h, :w]
        lum = x.mean(axis=2, keepdims=True) / 255.0
        return _to_uint8(x + texture * (0.4 + lum))

    return gen


def _fixed_tile(frng: np.random.Generator, period: int, smooth: float) -> np.ndarray:
    """A zero-mean, unit-std periodic pattern: the fixed fingerprint a decoder's upsampling weights leave."""
    tile = ndimage.gaussian_filter(frng.normal(0, 1, size=(period, period)), smooth, mode="wrap").astype(np.float32)
    return (tile - tile.mean()) / tile.std()


def _tiled(tile: np.ndarray, h: int, w: int) -> np.ndarray:
    p = tile.shape[0]
    return np.tile(tile, (h // p + 1, w // p + 1))[:h, :w, None]


def make_diffusion(seed: int) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    """Latent-diffusion-like: 4x latent, re-noise, partial denoise, bicubic decode with a fixed 16-px decoder pattern, colour boost."""
    tile = _fixed_tile(_family_rng(seed, "diffusion"), 16, 1.0)

    def gen(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = img.size
        latent = _downscale(img, 4)
        latent = latent + rng.normal(0, 4.0, size=latent.shape).astype(np.float32)  # re-noise
        latent = ndimage.gaussian_filter(latent, sigma=(0.7, 0.7, 0))  # a denoising step: low-pass
        x: np.ndarray = np.asarray(_to_uint8(latent).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
        x = x * (1.0 + 0.05 * _tiled(tile, h, w))
        mean = x.mean(axis=2, keepdims=True)
        return _to_uint8(mean + (x - mean) * 1.25)  # samplers oversaturate

    return gen


def make_autoencoder(seed: int) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    """VQ-autoencoder-like: 8x quantised latent, nearest decode with a fixed 8-px cell pattern, unsharp halos."""
    tile = _fixed_tile(_family_rng(seed, "autoencoder"), 8, 0.7)

    def gen(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = img.size
        latent = np.round(_downscale(img, 8) / 8.0) * 8.0  # quantised bottleneck
        x = np.asarray(_to_uint8(latent).resize((w, h), Image.Resampling.NEAREST), dtype=np.float32)
        x = ndimage.gaussian_filter(x, sigma=(0.5, 0.5, 0)) * (1.0 + 0.04 * _tiled(tile, h, w))
        blurred = ndimage.gaussian_filter(x, sigma=(1.5, 1.5, 0))
        return _to_uint8(x + 1.2 * (x - blurred))  # unsharp mask: decoder halos

    return gen


FAMILIES: dict[str, Callable[[int], Callable[[Image.Image, np.random.Generator], Image.Image]]] = {
    "tconv": make_tconv,
    "upsample-texture": make_upsample_texture,
    "diffusion": make_diffusion,
    "autoencoder": make_autoencoder,
}


# -- the dataset ---------------------------------------------------------------------------------------


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def make_dataset(out: Path, cfg: SynthConfig, progress: bool = False) -> dict:
    """Write the dataset under ``out`` and return its description (also written to synth.json)."""
    unknown = sorted(set(cfg.generators) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"unknown generator families {unknown}; known: {', '.join(FAMILIES)}")
    photos = split_photos(photo_paths(), cfg.seed, cfg.test_fraction, cfg.image_size)
    images = {split: [load_rgb(p) for p in paths] for split, paths in photos.items()}
    counts = {"train": cfg.train_per_class, "test": cfg.test_per_class}
    total = sum(counts.values()) * 2 * len(cfg.generators)
    bar = _bar(total, progress)
    for split in SPLITS:
        for gi, family in enumerate(cfg.generators):
            gen = FAMILIES[family](cfg.seed)
            rng = np.random.default_rng([cfg.seed, SPLITS.index(split), gi])
            pool = images[split]
            for label_dir in (REAL_DIR, FAKE_DIR):
                folder = out / split / family / label_dir
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(counts[split]):
                    src = int(rng.integers(len(pool)))
                    crop = random_crop(pool[src], cfg.image_size, rng)
                    img = mild_augment(crop, rng) if label_dir == REAL_DIR else gen(crop, rng)
                    (folder / f"{family}-{label_dir[2:]}-{i:05d}.png").write_bytes(_png(img))
                    bar.update(1)
    bar.close()
    desc = {
        "layout": "UniversalFakeDetect: <split>/<generator>/0_real|1_fake/*.png",
        "seed": cfg.seed,
        "image_size": cfg.image_size,
        "per_class": counts,
        "generators": list(cfg.generators),
        "photos": {split: [p.name for p in paths] for split, paths in photos.items()},
        "note": "functional benchmark made by export.synth; not evidence about real generators",
    }
    (out / "synth.json").write_text(json.dumps(desc, indent=2) + "\n")
    return desc


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="synth", unit="img", disable=not enabled)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="Output directory (train/ and test/ are created inside).")
    p.add_argument("--seed", type=int, default=0, help="Everything is deterministic from this seed (default 0).")
    p.add_argument(
        "--image-size", type=int, default=224, help="Side of every image in pixels (default 224: the CLIP input size, so the backbone sees native pixels)."
    )
    p.add_argument("--train-per-class", type=int, default=32, help="Real and fake images per generator in train/ (default 32).")
    p.add_argument("--test-per-class", type=int, default=16, help="Real and fake images per generator in test/ (default 16).")
    p.add_argument(
        "--generator",
        action="append",
        choices=sorted(FAMILIES),
        default=None,
        help="Generator family to include, repeatable (default: all four).",
    )


def run(args: argparse.Namespace) -> int:
    cfg = SynthConfig(
        seed=args.seed,
        image_size=args.image_size,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        generators=tuple(args.generator or GENERATORS),
    )
    desc = make_dataset(args.out, cfg, progress=True)
    n = sum(desc["per_class"].values()) * 2 * len(desc["generators"])
    print(
        f"wrote {n} images to {args.out} (generators: {', '.join(desc['generators'])}; photos train {desc['photos']['train']}, test {desc['photos']['test']})"
    )
    return 0
