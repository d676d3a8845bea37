"""The synthetic benchmark: UniversalFakeDetect layout, deterministic from the seed, no content shared between splits,
and no format cue: real and fake go through one random re-encoding, which format-only classifiers cannot tell apart."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.datasets import list_dataset, summary
from export.leakage import file_features, leakage_of
from export.synth import GENERATORS, SynthConfig, make_dataset


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


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
    formats = {}
    for it in list_dataset(tmp_path / "a" / "train"):
        with Image.open(it.path) as img:
            w, h = img.size
            assert w == h and round(0.6 * 64) <= w <= 64 and img.mode == "RGB" and img.format in ("JPEG", "WEBP")
            formats.setdefault(it.label, []).append((img.format, img.size))
    assert sorted(formats[0]) == sorted(formats[1])  # the real and the fake images got the same formats and sizes


@pytest.mark.parametrize("quality", [30, 65, 80, 95])
def test_jpeg_quality_is_read_back_from_the_quantisation_tables(quality: int) -> None:
    img = Image.fromarray(np.random.default_rng(quality).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    f = file_features(buf.getvalue(), ".jpg")
    assert f["jpeg_q_luma"] == quality and f["jpeg_q_chroma"] == quality and f["ext_jpg"] == 1.0 and f["width"] == 48


def _make(root: Path, encoding: str) -> Path:
    make_dataset(root, SynthConfig(seed=1, image_size=96, train_per_class=12, test_per_class=12, encoding=encoding))
    return root


def test_format_only_classifiers_are_at_chance_on_the_controlled_output(tmp_path: Path) -> None:
    """Reals and fakes share one re-encoding: extension, JPEG quality, subsampling, size say nothing about the label."""
    leak = leakage_of(_make(tmp_path, "controlled"))
    feats = [file_features(it.path.read_bytes(), it.path.suffix) for it in list_dataset(tmp_path / "test")]
    assert {(f["ext_jpg"], f["ext_webp"]) for f in feats} == {(1.0, 0.0), (0.0, 1.0)}  # both formats are really there
    assert len({f["jpeg_q_luma"] for f in feats}) > 5 and len({f["width"] for f in feats}) > 5  # and qualities and sizes vary
    assert leak.n_test == 2 * 12 * len(GENERATORS)
    assert leak.worst <= 0.05, leak.as_dict()["format"]  # 0.5 +- 0.05, pooled and on every generator


def test_the_leakage_check_catches_a_format_shortcut(tmp_path: Path) -> None:
    """The scraped-dataset shortcut (reals JPEG, fakes PNG): the same check separates the classes from metadata alone."""
    leak = leakage_of(_make(tmp_path, "leaky"))
    assert leak.format["all"]["logistic"] >= 0.95 and leak.format["all"]["knn"] >= 0.95
    assert leak.worst >= 0.45


def test_old_png_output_has_no_format_cue_and_file_size_is_reported_as_a_content_cue(tmp_path: Path) -> None:
    """The old lossless output: every file a PNG of one size, so format features are at chance; PNG bytes per pixel
    still follow each generator's smoothing (a content cue: the pixels' detail), which the check reports apart."""
    old = leakage_of(_make(tmp_path, "png"))
    assert old.worst <= 0.05
    assert old.worst_content >= 0.2, old.content
    assert "File size per pixel" in old.markdown() and "logistic 50.0" in old.markdown()


def test_train_and_test_use_disjoint_photographs(tmp_path: Path) -> None:
    make_dataset(tmp_path, SynthConfig(seed=0, image_size=64, train_per_class=1, test_per_class=1, generators=("tconv",)))
    desc = json.loads((tmp_path / "synth.json").read_text())
    assert desc["photos"]["train"] and desc["photos"]["test"]
    assert not set(desc["photos"]["train"]) & set(desc["photos"]["test"])


def test_fakes_carry_their_generators_fixed_pattern(tmp_path: Path) -> None:
    """tconv's unbalanced transposed-conv kernel leaves a period-2 (checkerboard) peak in the spectrum that reals lack."""
    # the generator's own output, stored losslessly: this checks the family, not the storage
    make_dataset(tmp_path, SynthConfig(seed=0, image_size=128, train_per_class=6, test_per_class=1, generators=("tconv",), encoding="png"))

    def nyquist_share(folder: Path) -> float:
        shares = []
        for p in sorted(folder.glob("*.png")):
            g = np.asarray(Image.open(p).convert("L"), dtype=np.float64)
            spec = np.abs(np.fft.fft2(g - g.mean()))
            shares.append((spec[64, :].sum() + spec[:, 64].sum()) / spec.sum())
        return float(np.median(shares))

    root = tmp_path / "train" / "tconv"
    assert nyquist_share(root / "1_fake") > 2 * nyquist_share(root / "0_real")
