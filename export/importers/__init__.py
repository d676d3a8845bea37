"""``python -m export import NAME OUT ...``: a published detector's released checkpoint, served as a bundle.

A paper that releases its trained weights can be served as the authors ran it:
the importer rebuilds the paper's inference (backbone, activation,
preprocessing, head) from the released files, exports it like any bundle
(ONNX, parity checks, sha256 pins) and records the paper's own threshold,
marked uncalibrated (``calibration.threshold_source: paper``). Where the
encoder can be rebuilt from a checkpoint file by ``embed --pretrained`` (ufd),
it also writes the head as a checkpoint, so that

    python -m export embed DATA EMB --pretrained CKPT --preprocess MODE
    python -m export bundle OUT2 --data EMB --head OUT.head.pt --pretrained CKPT

recalibrates it for your target false-positive rate on your own validation
images without retraining anything.

Importers (one module each in export/importers/; a module that defines ``IMPORTER``
is found by itself, so a new published detector is one more file):

  ufd       UniversalFakeDetect (Ojha et al., CVPR 2023): the released linear probe
            on OpenAI's CLIP ViT-L/14, ufd preprocessing, threshold 0.5
  c2p-clip  C2P-CLIP (Tan et al., 2024): the released fine-tuned CLIP ViT-L/14
            image encoder and its classifier, clip preprocessing (bilinear), 0.5

Run ``python -m export import NAME --help`` for where each one's files come from.
"""

from __future__ import annotations

import argparse
import importlib
from abc import ABC, abstractmethod
from typing import ClassVar


def importer_modules() -> list[str]:
    """Modules of this package that define ``IMPORTER`` (helpers such as ``common`` do not), in name order."""
    import pkgutil

    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg]
    return [n for n in sorted(names) if hasattr(importlib.import_module(f"{__name__}.{n}"), "IMPORTER")]


class Importer(ABC):
    """One published detector: its command-line arguments and how to build its bundle."""

    name: ClassVar[str]
    summary: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this importer's arguments (the output directory is the first positional)."""

    @abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Build the bundle; return the exit code."""


def all_importers() -> list[Importer]:
    return [importlib.import_module(f"{__name__}.{module}").IMPORTER for module in importer_modules()]


def get(name: str) -> Importer:
    for importer in all_importers():
        if importer.name == name:
            return importer
    raise SystemExit(f"unknown importer {name!r}; known: {', '.join(i.name for i in all_importers())}")
