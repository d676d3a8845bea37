"""Fitted heads saved to disk and loaded back, so a bundle can be rebuilt without retraining.

Why: training is the slow part (GenDet's rotations, NTF's two stages) while
calibration and export are cheap. With a saved head one can re-calibrate for
another target FPR, re-export against the same backbone, or combine heads
trained at different times into one ensemble, all without fitting again.

A checkpoint holds the method's inference module (the exact ``torch.nn.Module``
that export traces, pickled whole: each method builds a differently shaped
graph, e.g. the kNN bank's size depends on the data), the method's name,
hyper-parameters, input/output declarations, the fit report and the training
context (encoder fingerprint, embedding width, data summary). Loading runs
``torch.load(weights_only=False)``, i.e. unpickling: load only checkpoints you
made yourself, as with any PyTorch model file.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from export.heads.base import EmbeddingSet, FitReport, HeadMethod

FORMAT = "aigis-head/1"


class LoadedHead(HeadMethod):
    """A head fitted earlier and read from a checkpoint: exports like the original, refuses to fit."""

    name = "loaded"
    paper = ""

    def __init__(self, payload: dict[str, Any]) -> None:
        from export import heads as head_registry

        cls = head_registry.get(payload["method"])
        self.method_class = cls
        # Instance attributes shadow the class-level declarations the export code reads.
        self.name = cls.name  # type: ignore[misc]
        self.paper = cls.paper  # type: ignore[misc]
        self.inputs = tuple(payload["inputs"])  # type: ignore[misc]
        self.anomaly_outputs = tuple(payload["anomaly_outputs"])  # type: ignore[misc]
        self.crop_size = payload["crop_size"]
        self.config = cls.Config.model_validate(payload["config"])
        self.module = payload["module"].eval()
        self.fit_report = FitReport(**payload["fit"])
        self.context: dict[str, Any] = payload["context"]

    def fit(self, train: EmbeddingSet, val: EmbeddingSet | None = None, progress: bool = False) -> FitReport:
        raise RuntimeError(f"{self.name} head was loaded from a checkpoint; it is already fitted")

    def inference_module(self) -> torch.nn.Module:
        return self.module


def save_head(method: HeadMethod, report: FitReport, path: Path, context: dict[str, Any]) -> Path:
    """Write ``method`` (already fitted) to ``path``; ``context`` must name ``encoder_sha256`` and ``embed_dim``."""
    missing = {"encoder_sha256", "embed_dim"} - set(context)
    if missing:
        raise ValueError(f"checkpoint context lacks {sorted(missing)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "method": method.name,
        "config": method.config.model_dump(mode="json"),
        "inputs": list(method.inputs),
        "anomaly_outputs": list(method.anomaly_outputs),
        "crop_size": method.crop_size,
        "module": method.inference_module().eval(),
        "fit": asdict(report),
        "context": context,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_head(path: Path) -> LoadedHead:
    """Read a checkpoint written by :func:`save_head`, with a clear error for anything else."""
    if not path.is_file():
        raise SystemExit(f"head checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SystemExit(f"{path} is not a readable head checkpoint: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SystemExit(f"{path} is not an aigis head checkpoint (expected format {FORMAT!r})")
    return LoadedHead(payload)


__all__ = ["FORMAT", "LoadedHead", "load_head", "save_head"]
