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

**Format control.** Every image, real or fake, is then stored through one
random re-encoding (:class:`Reencode`): JPEG or WebP at a random quality
65-95, and for half of them a random 0.6-1x resize (bilinear, bicubic or
Lanczos) first. The draws come from a stream that does not depend on the label
(the real and the fake folder of a generator replay the same sequence), so
format, quality, chroma subsampling and image size are distributed
identically for both classes and no head can win on file format or
compression, a known shortcut in this field (reals are camera JPEGs, fakes
the generator's PNGs). :mod:`export.leakage` measures what is left:
classifiers that read only the file's format metadata sit at chance on this
output. ``--encoding png`` writes the old lossless PNGs.

Layout::

    OUT/train/<generator>/0_real/*.jpg|webp   OUT/train/<generator>/1_fake/*.jpg|webp
    OUT/test/<generator>/0_real/*.jpg|webp    OUT/test/<generator>/1_fake/*.jpg|webp
    OUT/synth.json                       (what was made, from which photos, with which seed and encoding)

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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from export.photos import COLOUR, load_rgb, photo_paths

GENERATORS = ("tconv", "upsample-texture", "diffusion", "autoencoder")
SPLITS = ("train", "test")
REAL_DIR, FAKE_DIR = "0_real", "1_fake"


#: ``SynthConfig.encoding`` values: ``controlled`` (default) re-encodes every image, real or fake, with the same random
#: recipe; ``png`` is the old lossless output (no format difference, but its file sizes follow the pixels' detail);
#: ``leaky`` is the shortcut as it is found in scraped datasets (reals JPEG, fakes PNG), so the leakage check can show it
#: catches one. Only ``controlled`` is a benchmark that cannot be won on format.
ENCODINGS = ("controlled", "png", "leaky")


@dataclass(frozen=True)
class Reencode:
    """The one random re-encoding every image goes through, real or fake alike (format control).

    Real images in the field are JPEGs from cameras and websites, fakes are
    often the generator's PNGs: a head can then tell them apart by format or
    compression alone, a shortcut that says nothing about generators (Grommelt
    et al., "Fake or JPEG?", 2024). Drawing the format, the quality and the
    resize from one distribution for both classes leaves no format cue; the
    leakage check (:func:`export.synth.format_leakage`) measures that.
    """

    formats: tuple[str, ...] = ("JPEG", "WEBP")
    quality: tuple[int, int] = (65, 95)
    resize_prob: float = 0.5
    scale: tuple[float, float] = (0.6, 1.0)


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    image_size: int = 224
    train_per_class: int = 32
    test_per_class: int = 16
    generators: tuple[str, ...] = GENERATORS
    test_fraction: float = 0.34
    encoding: str = "controlled"
    reencode: Reencode = Reencode()


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


EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


def reencode(img: Image.Image, recipe: Reencode, rng: np.random.Generator) -> tuple[bytes, str, dict]:
    """``img`` after ``recipe``'s random resize and lossy encoding: (bytes, file extension, what was done).

    The random draws do not depend on the image or its label, so real and fake
    images share one distribution of formats, qualities and sizes.
    """
    fmt = recipe.formats[int(rng.integers(len(recipe.formats)))]
    quality = int(rng.integers(recipe.quality[0], recipe.quality[1] + 1))
    resized = bool(rng.random() < recipe.resize_prob)
    scale = float(rng.uniform(*recipe.scale))
    filt = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)[int(rng.integers(3))]
    if resized:
        w, h = img.size
        img = img.resize((max(8, round(w * scale)), max(8, round(h * scale))), filt)
    buf = io.BytesIO()
    img.save(buf, fmt, quality=quality)
    return buf.getvalue(), EXTENSIONS[fmt], {"format": fmt, "quality": quality, "size": list(img.size)}


def _encoded(img: Image.Image, cfg: SynthConfig, rng: np.random.Generator, real: bool) -> tuple[bytes, str]:
    if cfg.encoding == "png" or (cfg.encoding == "leaky" and not real):
        return _png(img), ".png"
    if cfg.encoding == "leaky":  # camera/web reals: JPEG at the formats' usual qualities
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(75, 96)))
        return buf.getvalue(), ".jpg"
    data, ext, _ = reencode(img, cfg.reencode, rng)
    return data, ext


def make_dataset(out: Path, cfg: SynthConfig, progress: bool = False) -> dict:
    """Write the dataset under ``out`` and return its description (also written to synth.json)."""
    unknown = sorted(set(cfg.generators) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"unknown generator families {unknown}; known: {', '.join(FAMILIES)}")
    if cfg.encoding not in ENCODINGS:
        raise SystemExit(f"unknown encoding {cfg.encoding!r}; known: {', '.join(ENCODINGS)}")
    photos = split_photos(photo_paths(), cfg.seed, cfg.test_fraction, cfg.image_size)
    images = {split: [load_rgb(p) for p in paths] for split, paths in photos.items()}
    counts = {"train": cfg.train_per_class, "test": cfg.test_per_class}
    total = sum(counts.values()) * 2 * len(cfg.generators)
    bar = _bar(total, progress)
    for split in SPLITS:
        for gi, family in enumerate(cfg.generators):
            gen = FAMILIES[family](cfg.seed)
            rng = np.random.default_rng([cfg.seed, SPLITS.index(split), gi])
            # the re-encoding's own stream, the same sequence for the real and the fake folder: both classes get the
            # very same list of (format, quality, resize) draws, so no format statistic differs even by chance
            pool = images[split]
            for label_dir in (REAL_DIR, FAKE_DIR):
                folder = out / split / family / label_dir
                folder.mkdir(parents=True, exist_ok=True)
                enc_rng = np.random.default_rng([cfg.seed, SPLITS.index(split), gi, 101])
                for i in range(counts[split]):
                    src = int(rng.integers(len(pool)))
                    crop = random_crop(pool[src], cfg.image_size, rng)
                    img = mild_augment(crop, rng) if label_dir == REAL_DIR else gen(crop, rng)
                    data, ext = _encoded(img, cfg, enc_rng, label_dir == REAL_DIR)
                    (folder / f"{family}-{label_dir[2:]}-{i:05d}{ext}").write_bytes(data)
                    bar.update(1)
    bar.close()
    desc = {
        "layout": "UniversalFakeDetect: <split>/<generator>/0_real|1_fake/*.{" + ("png" if cfg.encoding == "png" else "jpg,webp,png") + "}",
        "seed": cfg.seed,
        "image_size": cfg.image_size,
        "encoding": cfg.encoding,
        "reencode": None if cfg.encoding == "png" else asdict(cfg.reencode),
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
        "--encoding",
        choices=ENCODINGS,
        default="controlled",
        help="How images are stored (default controlled: real and fake alike get a random JPEG/WebP quality 65-95 and, half of them, "
        "a random 0.6-1x resize, so no format cue separates them); png: lossless, as before; leaky: reals JPEG, fakes PNG "
        "(the shortcut of scraped datasets, for the leakage check only).",
    )
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
        encoding=args.encoding,
    )
    desc = make_dataset(args.out, cfg, progress=True)
    n = sum(desc["per_class"].values()) * 2 * len(desc["generators"])
    gens = ", ".join(desc["generators"])
    photos = f"photos train {desc['photos']['train']}, test {desc['photos']['test']}"
    print(f"wrote {n} images to {args.out} (encoding {desc['encoding']}; generators: {gens}; {photos})")
    return 0
