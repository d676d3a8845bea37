"""UFD's training augmentation (export/augment.py) and `embed --augment K` / training on the copies.

The reference for one draw is UFD's own chain written with torchvision and scipy the way its
data/datasets.py does (TF.resize, gaussian_filter per channel into uint8, Pillow JPEG, crop, hflip,
ToTensor, Normalize), with the same random choices.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.augment import AugmentSpec, Draw, apply, augmented_input, copy_rng, draw, working_scale
from export.clip import TINY, load_encoder
from export.embed import EmbedOptions, embed_dataset, load_augmented, load_embeddings
from export.photos import load_rgb, photo_paths
from export.synth import SynthConfig, make_dataset
from export.train import train_bundle, with_augmented

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(scope="module")
def pre():  # type: ignore[no-untyped-def]
    return {mode: load_encoder(TINY, None, random_weights=True, preprocess_mode=mode)[1] for mode in ("clip", "ufd")}


def _ufd_reference(img: Image.Image, d: Draw, load_size: int = 256, crop: int = 224) -> np.ndarray:
    """UFD's train transform (rz_func, data_augment, RandomCrop, RandomHorizontalFlip, ToTensor, Normalize) with fixed choices."""
    import torchvision.transforms.functional as TF
    from scipy.ndimage import gaussian_filter
    from torchvision import transforms

    img = TF.resize(img, load_size, interpolation=transforms.InterpolationMode.BILINEAR)
    arr = np.array(img)
    if d.blur_sigma is not None:
        for c in range(3):
            gaussian_filter(arr[:, :, c], output=arr[:, :, c], sigma=d.blur_sigma)
    if d.jpeg_quality is not None:
        out = BytesIO()
        Image.fromarray(arr).save(out, format="jpeg", quality=d.jpeg_quality)
        arr = np.array(Image.open(out))
    img = TF.crop(Image.fromarray(arr), d.top, d.left, crop, crop)
    if d.flip:
        img = TF.hflip(img)
    return transforms.Normalize(MEAN, STD)(transforms.ToTensor()(img)).numpy()


@pytest.mark.parametrize(
    "d",
    [
        Draw(blur_sigma=None, jpeg_quality=None, top=0, left=0, flip=False),
        Draw(blur_sigma=1.7, jpeg_quality=None, top=13, left=20, flip=True),
        Draw(blur_sigma=None, jpeg_quality=31, top=32, left=5, flip=False),
        Draw(blur_sigma=2.9, jpeg_quality=100, top=7, left=9, flip=True),
    ],
    ids=["crop", "blur+flip", "jpeg", "blur+jpeg+flip"],
)
def test_one_draw_matches_ufds_chain(d: Draw, pre) -> None:  # type: ignore[no-untyped-def]
    img = load_rgb(photo_paths()[1])  # chelsea.png, 451 x 300: resized to 385 x 256 first
    ours = apply(img, pre["ufd"], d, AugmentSpec())
    from worker.ingest.preprocess import normalize

    got = normalize(np.asarray(ours), pre["ufd"])
    assert np.max(np.abs(got - _ufd_reference(img, d))) < 1e-5


def test_draws_follow_ufds_distributions() -> None:
    spec = AugmentSpec()
    rng = np.random.default_rng(0)
    draws = [draw((300, 256), 224, rng, spec) for _ in range(4000)]
    sigmas = [d.blur_sigma for d in draws if d.blur_sigma is not None]
    qualities = [d.jpeg_quality for d in draws if d.jpeg_quality is not None]
    assert 0.47 < len(sigmas) / len(draws) < 0.53 and 0.47 < len(qualities) / len(draws) < 0.53
    assert 0 <= min(sigmas) < 0.1 and 2.9 < max(sigmas) < 3.0
    assert min(qualities) == 30 and max(qualities) == 100
    assert 0.47 < np.mean([d.flip for d in draws]) < 0.53
    assert {d.top for d in draws} == set(range(33)) and {d.left for d in draws} == set(range(77))


def test_working_scale_per_mode(pre) -> None:  # type: ignore[no-untyped-def]
    img = Image.new("RGB", (600, 400))
    assert working_scale(img, pre["ufd"], AugmentSpec()).size == (384, 256)  # UFD's loadSize
    assert working_scale(img, pre["ufd"], AugmentSpec(load_size=0)).size == (600, 400)  # native
    assert working_scale(img, pre["clip"], AugmentSpec()).size == (336, 224)  # the clip mode's own resize


def test_copies_are_reproducible_and_differ(pre) -> None:  # type: ignore[no-untyped-def]
    img = load_rgb(photo_paths()[0])
    a = augmented_input(img, pre["ufd"], copy_rng("g/0_real/x.png", 0, 0))
    assert np.array_equal(a, augmented_input(img, pre["ufd"], copy_rng("g/0_real/x.png", 0, 0)))
    assert not np.array_equal(a, augmented_input(img, pre["ufd"], copy_rng("g/0_real/x.png", 1, 0)))
    assert a.shape == (3, 224, 224) and a.dtype == np.float32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aug-synth")
    make_dataset(root, SynthConfig(seed=3, image_size=96, train_per_class=10, test_per_class=1, generators=("tconv", "diffusion")))
    return root / "train"


def test_embed_augment_stores_k_copies_resumably_and_sharded(dataset: Path, tmp_path: Path, pre) -> None:  # type: ignore[no-untyped-def]
    opts = EmbedOptions(arch=TINY, random_weights=True, preprocess="ufd", augment=2, chunk_size=8)
    embed_dataset(dataset, tmp_path / "a", opts)
    data, meta = load_embeddings(tmp_path / "a")
    aug = load_augmented(tmp_path / "a", data)
    assert meta["augment"] == 2 and meta["augment_spec"]["blur_prob"] == 0.5 and meta["preprocess"]["mode"] == "ufd"
    assert aug is not None and aug.shape == (len(data), 2, data.dim)

    # the stored copies are the encoder's embeddings of exactly those augmented inputs
    encoder, ufd, _ = load_encoder(TINY, None, random_weights=True, preprocess_mode="ufd")
    img = Image.open(dataset / data.paths[3]).convert("RGB")
    with torch.no_grad():
        want = encoder(torch.from_numpy(np.stack([augmented_input(img, ufd, copy_rng(data.paths[3], j, 0)) for j in range(2)]))).numpy()
    assert np.max(np.abs(aug[3] - want)) < 1e-5
    assert not np.allclose(aug[3, 0], data.embeddings[3])

    # sharded the same, and a rerun recomputes nothing
    for i in (1, 0):
        embed_dataset(dataset, tmp_path / "s", EmbedOptions(arch=TINY, random_weights=True, preprocess="ufd", augment=2, chunk_size=8, shard=(i, 2)))
    sdata, _ = load_embeddings(tmp_path / "s")
    assert np.allclose(load_augmented(tmp_path / "s", sdata), aug, atol=1e-6)  # type: ignore[arg-type]
    chunk = sorted((tmp_path / "s" / "chunks").glob("*.npz"))[0]
    before = chunk.stat().st_mtime_ns
    embed_dataset(dataset, tmp_path / "s", EmbedOptions(arch=TINY, random_weights=True, preprocess="ufd", augment=2, chunk_size=8, shard=(0, 2)))
    assert chunk.stat().st_mtime_ns == before
    with pytest.raises(SystemExit, match="other settings"):
        embed_dataset(dataset, tmp_path / "s", EmbedOptions(arch=TINY, random_weights=True, preprocess="ufd", augment=3, chunk_size=8, shard=(0, 2)))


def test_heads_train_on_copies_of_the_training_split_only(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    embed_dataset(dataset, tmp_path / "e", EmbedOptions(arch=TINY, random_weights=True, preprocess="ufd", augment=2))
    manifest = train_bundle(
        tmp_path / "b",
        data=tmp_path / "e",
        methods=["linear-probe", "knn"],
        arch=TINY,
        pretrained=None,
        random_weights=True,
        profile="small-data",
        progress=True,
    )
    out = capsys.readouterr().out
    summary = manifest.heads[0].training["data"]
    n_train = sum(sum(c.values()) for c in summary["train"].values())
    n_val = sum(sum(c.values()) for c in summary["validation"].values())
    assert n_train + n_val == 40 and summary["augmented_copies_per_training_image"] == 2
    assert f"fitting linear-probe on {3 * n_train} embeddings" in out and f"{2 * n_train} of them augmented copies" in out
    # UFD's nearest-neighbour bank is the training images themselves, not their augmented copies
    assert f"fitting knn on {n_train} embeddings" in out
    knn = next(h for h in manifest.heads if h.name == "knn")
    assert any("unaugmented rows only" in n for n in knn.training["fit"]["notes"]), knn.training["fit"]
    assert manifest.calibration.validation["n_real"] + manifest.calibration.validation["n_fake"] == n_val  # validation: originals only
    assert manifest.backbone.preprocess.mode == "ufd"  # served as embedded
    raw = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert raw["backbone"]["preprocess"]["allow_draft"] is False

    with pytest.raises(SystemExit, match="--preprocess ufd"):
        train_bundle(tmp_path / "c", data=tmp_path / "e", methods=["linear-probe"], arch=TINY, pretrained=None, random_weights=True, preprocess_mode="clip")

    data, _ = load_embeddings(tmp_path / "e")
    part = data.subset([0, 5])
    grown = with_augmented(part, load_augmented(tmp_path / "e", part))  # type: ignore[arg-type]
    assert len(grown) == 6 and grown.paths[2:] == [
        f"{part.paths[0]}#augment0",
        f"{part.paths[0]}#augment1",
        f"{part.paths[1]}#augment0",
        f"{part.paths[1]}#augment1",
    ]
    assert grown.labels.tolist() == [*part.labels.tolist(), part.labels[0], part.labels[0], part.labels[1], part.labels[1]]
