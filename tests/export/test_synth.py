"""The synthetic benchmark: UniversalFakeDetect layout, deterministic from the seed, no content shared between splits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from export.datasets import list_dataset, summary
from export.synth import GENERATORS, SynthConfig, make_dataset


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_layout_counts_and_determinism(tmp_path: Path) -> None:
    cfg = SynthConfig(seed=3, image_size=64, train_per_class=2, test_per_class=1)
    make_dataset(tmp_path / "a", cfg)
    make_dataset(tmp_path / "b", cfg)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    make_dataset(tmp_path / "c", SynthConfig(seed=4, image_size=64, train_per_class=2, test_per_class=1))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")

    train = summary(list_dataset(tmp_path / "a" / "train"))
    test = summary(list_dataset(tmp_path / "a" / "test"))
    assert train == {g: {"real": 2, "fake": 2} for g in GENERATORS}
    assert test == {g: {"real": 1, "fake": 1} for g in GENERATORS}
    for p in (tmp_path / "a").rglob("*.png"):
        with Image.open(p) as img:
            assert img.size == (64, 64) and img.mode == "RGB"


def test_train_and_test_use_disjoint_photographs(tmp_path: Path) -> None:
    make_dataset(tmp_path, SynthConfig(seed=0, image_size=64, train_per_class=1, test_per_class=1, generators=("tconv",)))
    desc = json.loads((tmp_path / "synth.json").read_text())
    assert desc["photos"]["train"] and desc["photos"]["test"]
    assert not set(desc["photos"]["train"]) & set(desc["photos"]["test"])


def test_fakes_carry_their_generators_fixed_pattern(tmp_path: Path) -> None:
    """tconv's unbalanced transposed-conv kernel leaves a period-2 (checkerboard) peak in the spectrum that reals lack."""
    make_dataset(tmp_path, SynthConfig(seed=0, image_size=128, train_per_class=6, test_per_class=1, generators=("tconv",)))

    def nyquist_share(folder: Path) -> float:
        shares = []
        for p in sorted(folder.glob("*.png")):
            g = np.asarray(Image.open(p).convert("L"), dtype=np.float64)
            spec = np.abs(np.fft.fft2(g - g.mean()))
            shares.append((spec[64, :].sum() + spec[:, 64].sum()) / spec.sum())
        return float(np.median(shares))

    root = tmp_path / "train" / "tconv"
    assert nyquist_share(root / "1_fake") > 2 * nyquist_share(root / "0_real")
