"""The one interface every detector head implements, and the data it trains on.

A head method is a class with a registry ``name``, a pydantic ``Config`` whose
defaults are the paper's hyper-parameters, ``fit`` (PyTorch training on
precomputed embeddings, plus native-resolution crops for heads that need
pixels) and ``inference_module`` (a ``torch.nn.Module`` whose forward maps the
head's declared inputs to ``probability`` (P(AI-generated), shape (N,)) and any
anomaly outputs). Export to ONNX, parity checks and manifests are shared code
in :mod:`export.bundle`; a head file only holds its method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict


class HeadConfig(BaseModel):
    """Base for per-method hyper-parameters (defaults = the paper's)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0


@dataclass
class EmbeddingSet:
    """Training/evaluation data for heads: one row per image.

    ``labels``: 0 real, 1 fake (AI-generated). ``views``: for methods that need
    two augmented views per image (NTF), shape (N, 2, D), filled where available
    (rows without views hold NaN). ``native``: (N, 3, S, S) float32 centre crops
    in [0, 1] for heads that read pixels.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    generators: list[str]
    paths: list[str] = field(default_factory=list)
    views: np.ndarray | None = None
    native: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.embeddings)
        if len(self.labels) != n or len(self.generators) != n:
            raise ValueError("embeddings, labels and generators must have the same length")

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def subset(self, idx: np.ndarray | list[int]) -> EmbeddingSet:
        idx = np.asarray(idx, dtype=np.int64)
        return EmbeddingSet(
            self.embeddings[idx],
            self.labels[idx],
            [self.generators[i] for i in idx],
            [self.paths[i] for i in idx] if self.paths else [],
            None if self.views is None else self.views[idx],
            None if self.native is None else self.native[idx],
        )


@dataclass
class FitReport:
    """What training did, for the manifest and the logs."""

    epochs: int
    final_loss: float
    #: per-epoch numbers, and the stopping rule's action where a head has one
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class HeadMethod(ABC):
    """One detector method from the papers."""

    name: ClassVar[str]
    paper: ClassVar[str]
    Config: ClassVar[type[HeadConfig]] = HeadConfig
    #: Inputs of the exported graph, in order: "embedding" and/or "native_crop".
    inputs: ClassVar[tuple[str, ...]] = ("embedding",)
    #: Outputs after "probability" that the worker exposes as anomaly signals.
    anomaly_outputs: ClassVar[tuple[str, ...]] = ()
    #: Native crop side for heads that read pixels: a class default that an instance may set from its config (freq)
    #: or its checkpoint (LoadedHead), so not a ClassVar.
    crop_size: int | None = None
    #: Whether ``bundle`` fits it on the training split's ``--augment`` copies too (heads that learn weights do).
    fits_augmented: ClassVar[bool] = True

    def __init__(self, config: HeadConfig | None = None, **overrides: Any) -> None:
        self.config = self.Config.model_validate({**(config.model_dump() if config else {}), **overrides})

    @abstractmethod
    def fit(self, train: EmbeddingSet, val: EmbeddingSet | None = None, progress: bool = False) -> FitReport:
        """Train on ``train`` (``val`` for early stopping where the method uses it)."""

    @abstractmethod
    def inference_module(self) -> torch.nn.Module:
        """Module: forward(*inputs) -> probability (N,) or (probability, *anomaly_outputs)."""

    def example_inputs(self, dim: int, batch: int = 2) -> list[torch.Tensor]:
        """Dummy inputs for export tracing and parity checks."""
        g = torch.Generator().manual_seed(0)
        out: list[torch.Tensor] = []
        for source in self.inputs:
            if source == "embedding":
                out.append(torch.randn(batch, dim, generator=g))
            else:
                assert self.crop_size, f"{self.name} reads native crops but declares no crop_size"
                out.append(torch.rand(batch, 3, self.crop_size, self.crop_size, generator=g))
        return out

    def predict_proba(self, data: EmbeddingSet, batch: int = 4096) -> np.ndarray:
        """P(AI-generated) with the PyTorch module (the reference ONNX is checked against)."""
        module = self.inference_module().eval()
        probs = []
        with torch.no_grad():
            for lo in range(0, len(data), batch):
                feeds = []
                for source in self.inputs:
                    arr = data.embeddings if source == "embedding" else data.native
                    if arr is None:
                        raise ValueError(f"{self.name} needs {source} data")
                    feeds.append(torch.from_numpy(np.asarray(arr[lo : lo + batch], dtype=np.float32)))
                out = module(*feeds)
                out = out[0] if isinstance(out, (tuple, list)) else out
                probs.append(out.reshape(-1).cpu().numpy())
        return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "paper": self.paper, "hyperparameters": self.config.model_dump()}
