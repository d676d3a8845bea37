"""Format leakage: can real and fake be told apart from the *file* alone, without looking at the pixels?

A known shortcut in AI-image detection: real images are camera or web JPEGs,
fakes are the generator's PNGs (or JPEGs at another quality, or of another
size), so a detector can score well by reading the container, the JPEG
quantisation tables or the image size, and then fails on the first fake that
was saved as a JPEG (Grommelt et al., "Fake or JPEG? Revealing Common Biases in
Generated Image Detection Datasets", 2024). This module measures that leak:
classifiers that see only format and compression metadata, trained on one
split and scored (ROC-AUC) on the other. A format-controlled dataset puts them
at chance.

Features (:func:`format_features`): file extension (one-hot), JPEG luma and
chroma quality estimates from the quantisation tables (the IJG scaling
inverted; 0 for other formats), JPEG chroma subsampling and progressive flag,
WebP lossy/lossless flag, width, height.

File size is reported apart (``content_cues``), not among the format features:
at one quality and size, the number of bytes an encoder needs is a measure of
the *pixels'* detail, so a smoother image (most generators' upsamplers) is a
smaller file whatever the format. That is a content cue a detector is meant to
learn, not a format one; no re-encoding can remove it without changing the
images, and the report shows how strong it is rather than hiding it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from export.datasets import Item
from export.metrics import roc_auc

#: The IJG (libjpeg) standard luminance and chrominance quantisation tables (quality 50), in natural order.
_STD_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)  # fmt: skip
_STD_CHROMA = np.array([17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99]
                       + [99] * 32, dtype=np.float64)  # fmt: skip

FORMAT_FEATURES = (
    *("ext_jpg", "ext_png", "ext_webp", "ext_other"),
    *("jpeg_q_luma", "jpeg_q_chroma", "jpeg_subsampling", "jpeg_progressive", "webp_lossless", "width", "height"),
)
CONTENT_FEATURES = ("bytes_per_pixel",)


def jpeg_quality(table: Sequence[int], reference: np.ndarray) -> float:
    """The IJG quality (1-100) whose scaling of ``reference`` best matches ``table`` (the usual estimate)."""
    q = np.asarray(table, dtype=np.float64)
    best, best_err = 50.0, np.inf
    for quality in range(1, 101):
        scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
        expected = np.clip(np.floor((reference * scale + 50.0) / 100.0), 1, 255)
        err = float(np.abs(np.sort(expected) - np.sort(q)).sum())  # sorted: zig-zag and natural order compare alike
        if err < best_err:
            best, best_err = float(quality), err
    return best


def file_features(data: bytes, suffix: str) -> dict[str, float]:
    """Format/compression metadata of one file, and its bytes per pixel (a content cue, kept apart)."""
    suffix = suffix.lower()
    ext = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}.get(suffix, "other")
    out = {f"ext_{k}": float(ext == k) for k in ("jpg", "png", "webp", "other")}
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        q_luma = q_chroma = sub = prog = 0.0
        if img.format == "JPEG":
            tables = getattr(img, "quantization", None) or {}
            if 0 in tables:
                q_luma = jpeg_quality(tables[0], _STD_LUMA)
            if 1 in tables:
                q_chroma = jpeg_quality(tables[1], _STD_CHROMA)
            from PIL import JpegImagePlugin

            sub = float(JpegImagePlugin.get_sampling(img))
            prog = float(bool(img.info.get("progressive") or img.info.get("progression")))
    webp_lossless = float(suffix == ".webp" and b"VP8L" in data[12:16])
    out.update(
        jpeg_q_luma=q_luma, jpeg_q_chroma=q_chroma, jpeg_subsampling=sub, jpeg_progressive=prog, webp_lossless=webp_lossless, width=float(w), height=float(h)
    )
    out["bytes_per_pixel"] = len(data) / float(w * h)
    return out


def features(items: Sequence[Item]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(feature matrix, labels, generators) for ``items``; columns are FORMAT_FEATURES then CONTENT_FEATURES."""
    rows = [file_features(it.path.read_bytes(), it.path.suffix) for it in items]
    x = np.array([[r[k] for k in (*FORMAT_FEATURES, *CONTENT_FEATURES)] for r in rows], dtype=np.float64)
    return x, np.array([it.label for it in items]), [it.generator for it in items]


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = train.mean(axis=0), train.std(axis=0)
    sd[sd == 0] = 1.0
    return (train - mu) / sd, (test - mu) / sd


def logistic_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, l2: float = 1e-2, steps: int = 500) -> np.ndarray:
    """L2-regularised logistic regression (gradient descent, standardised features): a linear format detector."""
    a, b = _standardise(x_train, x_test)
    a, b = np.c_[a, np.ones(len(a))], np.c_[b, np.ones(len(b))]
    w = np.zeros(a.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        w -= 0.5 * (a.T @ (p - y_train) / len(a) + l2 * w)
    return b @ w


def knn_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, k: int | None = None) -> np.ndarray:
    """Share of fakes among the k nearest training files (standardised features): catches non-linear format cues.

    Every training file as near as the k-th one votes (ties included): files with the same metadata get the same
    score, so identical metadata cannot separate the classes by the order the files were listed in.
    """
    a, b = _standardise(x_train, x_test)
    k = min(len(a), k or max(1, round(float(np.sqrt(len(a))))))
    d = ((b[:, None, :] - a[None, :, :]) ** 2).sum(axis=2)
    radius = np.partition(d, k - 1, axis=1)[:, k - 1 : k]
    near = d <= radius + 1e-9
    return (near * y_train[None, :]).sum(axis=1) / near.sum(axis=1)


@dataclass
class Leakage:
    """ROC-AUCs on the test split, pooled and per generator (0.5 = chance; AUC < 0.5 separates as well, inverted).

    ``format``: the format-only classifiers (logistic, kNN) and every single
    format feature; ``content``: bytes per pixel, which follows the pixels'
    detail (see the module docstring), reported apart.
    """

    format: dict[str, dict[str, float]]
    content: dict[str, dict[str, float]]
    n_train: int
    n_test: int

    @property
    def worst(self) -> float:
        """The largest distance from chance of any format-only classifier or format feature, pooled or on one generator."""
        return max(abs(a - 0.5) for group in self.format.values() for a in group.values())

    @property
    def worst_content(self) -> float:
        return max(abs(a - 0.5) for group in self.content.values() for a in group.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "content": self.content,
            "max_format_distance_from_chance": self.worst,
            "max_content_distance_from_chance": self.worst_content,
            "n_train": self.n_train,
            "n_test": self.n_test,
        }

    def markdown(self) -> str:
        """One line for reports: the format classifiers' pooled AUCs, the worst format cue, the file-size (content) cue."""
        pooled = self.format["all"]
        return (
            f"Format leakage (`export.leakage`, trained on the train split's files, ROC-AUC on the test split's; 50 = chance): "
            f"classifiers that read only format metadata (extension, JPEG quantisation-table quality, chroma subsampling, "
            f"WebP lossless flag, width, height): logistic {100 * pooled['logistic']:.1f}, kNN {100 * pooled['knn']:.1f}; "
            f"farthest from chance of any format classifier or feature, pooled or per generator: {100 * self.worst:.1f} points. "
            f"File size per pixel, which measures the pixels' detail rather than the format (a content cue, not removable by "
            f"re-encoding): AUC {100 * self.content['all']['bytes_per_pixel']:.1f} pooled, "
            + ", ".join(f"{g} {100 * v['bytes_per_pixel']:.1f}" for g, v in self.content.items() if g != "all")
            + ".\n"
        )


def _auc(s: np.ndarray, y: np.ndarray) -> float:
    v = roc_auc(s, y)
    return 0.5 if v is None else v


def format_leakage(train: Sequence[Item], test: Sequence[Item]) -> Leakage:
    """Train format-only classifiers on ``train``, score ``test``: how well does the file format alone separate the classes?"""
    xa, ya, _ = features(train)
    xb, yb, gens = features(test)
    nf = len(FORMAT_FEATURES)
    fa, fb = xa[:, :nf], xb[:, :nf]
    scores = {"logistic": logistic_scores(fa, ya, fb), "knn": knn_scores(fa, ya, fb)}
    g = np.array(gens)
    fmt: dict[str, dict[str, float]] = {}
    content: dict[str, dict[str, float]] = {}
    for group in ["all", *sorted(set(gens))]:
        m = np.ones(len(g), dtype=bool) if group == "all" else g == group
        fmt[group] = {name: _auc(s[m], yb[m]) for name, s in scores.items()}
        fmt[group].update({name: _auc(fb[m, j], yb[m]) for j, name in enumerate(FORMAT_FEATURES)})
        content[group] = {name: _auc(xb[m, nf + j], yb[m]) for j, name in enumerate(CONTENT_FEATURES)}
    return Leakage(fmt, content, len(train), len(test))


def leakage_of(dataset: Path) -> Leakage:
    """:func:`format_leakage` of a synth-layout dataset (``dataset/train`` vs ``dataset/test``)."""
    from export.datasets import list_dataset

    return format_leakage(list_dataset(dataset / "train"), list_dataset(dataset / "test"))
