"""open_clip image encoders: the project's tiny config, real checkpoints, preprocessing facts.

``aigis-tiny`` is a 2-layer ViT with 64-d embeddings registered from
``export/model_configs``. Tests and the demo use it with random weights: the
same code path as ``ViT-L-14`` (which real deployments use, 768-d), without
downloading anything. Real weights come from ``--pretrained``: an open_clip tag
(needs the hub, so not on this network) or a local checkpoint file.
"""

from __future__ import annotations

import logging
import warnings
from functools import cache
from pathlib import Path

import open_clip
import torch

from schemas import Preprocess

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
TINY = "aigis-tiny"
DEFAULT_ARCH = "ViT-L-14"


@cache
def register_project_configs() -> list[str]:
    """Make open_clip aware of the project's model configs (idempotent)."""
    open_clip.add_model_config(CONFIG_DIR)
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


class ImageEncoder(torch.nn.Module):
    """``encode_image`` as a module: (N, 3, S, S) normalised pixels -> (N, D) un-normalised embedding.

    Embeddings are left un-normalised (as UniversalFakeDetect feeds its linear
    probe); heads that want cosine geometry normalise inside their own graph.
    """

    def __init__(self, clip_model: torch.nn.Module) -> None:
        super().__init__()
        self.visual: torch.nn.Module = clip_model.visual  # type: ignore[assignment]  # nn.Module.__getattr__ is typed Tensor | Module

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)


def load_encoder(arch: str = DEFAULT_ARCH, pretrained: str | None = None, seed: int = 0) -> tuple[ImageEncoder, Preprocess, int]:
    """Build an image encoder; returns it (eval mode), its preprocessing and embedding dim.

    ``pretrained`` None means random weights (deterministic from ``seed``), which
    is what tests, the demo and speed benchmarks use.
    """
    register_project_configs()
    if arch not in open_clip.list_models():
        raise SystemExit(f"unknown open_clip architecture {arch!r}; try one of: {TINY}, ViT-B-16, ViT-L-14")
    if pretrained and not Path(pretrained).is_file() and pretrained not in open_clip.list_pretrained_tags_by_model(arch):
        raise SystemExit(f"--pretrained {pretrained!r} is neither a checkpoint file nor an open_clip tag for {arch}")
    torch.manual_seed(seed)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns on the root logger that random weights are random
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = open_clip.create_model(arch, pretrained=pretrained or None)
    finally:
        root.setLevel(level)
    model.eval()
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pp.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
    interpolation = pp.get("interpolation", "bicubic") or "bicubic"
    resize_mode = pp.get("resize_mode", "shortest") or "shortest"
    if resize_mode != "shortest":
        raise SystemExit(f"{arch} uses resize_mode={resize_mode!r}; the worker implements 'shortest' only")
    preprocess = Preprocess(image_size=int(size), interpolation=interpolation, mean=mean, std=std)
    encoder = ImageEncoder(model).eval()
    with torch.no_grad():
        dim = int(encoder(torch.zeros(1, 3, preprocess.image_size, preprocess.image_size)).shape[-1])
    return encoder, preprocess, dim
