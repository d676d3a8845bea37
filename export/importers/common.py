"""What every importer shares: reading released files, the released head, writing the bundle and its head checkpoint."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from export.bundle import HeadSpec, uncalibrated, write_bundle
from export.clip import ImageEncoder
from export.heads.base import EmbeddingSet, FitReport, HeadMethod
from export.heads.checkpoint import save_head
from schemas import BundleManifest, Preprocess
from worker.model.bundle import file_sha256


class ReleasedProbe(nn.Module):
    """A released linear classifier as a head graph: ``sigmoid(fc(x))``, or on the L2-normalised embedding with ``normalize``."""

    def __init__(self, fc: nn.Linear, normalize: bool) -> None:
        super().__init__()
        self.fc = fc
        self.normalize = normalize

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embedding, dim=-1) if self.normalize else embedding
        return torch.sigmoid(self.fc(x)).squeeze(-1)


class ReleasedHead(HeadMethod):
    """A head whose weights the paper's authors trained and released: exported as is, never refit here."""

    name = "released"
    paper = ""

    def __init__(self, method: str, paper: str, module: nn.Module, released: dict[str, Any]) -> None:
        super().__init__()
        self.name = method  # type: ignore[misc]  # the registry name LoadedHead resolves when the checkpoint is read back
        self.paper = paper  # type: ignore[misc]
        self.module = module.eval()
        self.released = released

    def fit(self, train: EmbeddingSet, val: EmbeddingSet | None = None, progress: bool = False) -> FitReport:
        raise RuntimeError(f"{self.name} was released by the paper's authors; it is imported, not trained here")

    def inference_module(self) -> nn.Module:
        return self.module

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "paper": self.paper, "hyperparameters": {"released": self.released}}


def require_file(path: Path, flag: str) -> Path:
    if not path.is_file():
        raise SystemExit(f"{flag} {path}: no such file")
    return path


def read_linear(path: Path, flag: str, weight_key: str = "weight", bias_key: str = "bias", state: dict[str, torch.Tensor] | None = None) -> nn.Linear:
    """An ``nn.Linear`` from a released state dict (``torch.load(weights_only=True)``: tensors only, no code)."""
    if state is None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SystemExit(f"{flag} {path} is not a readable state dict of tensors: {exc}") from None
    if not isinstance(state, dict) or weight_key not in state or bias_key not in state:
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise SystemExit(f"{flag} {path} should hold {weight_key!r} and {bias_key!r} (an nn.Linear state dict); it holds {keys}")
    weight, bias = state[weight_key].float(), state[bias_key].float()
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or weight.shape[0] != 1:
        raise SystemExit(f"{flag} {path}: expected a binary classifier weight (1, D) and bias (1,), got {tuple(weight.shape)} and {tuple(bias.shape)}")
    fc = nn.Linear(weight.shape[1], 1)
    with torch.no_grad():
        fc.weight.copy_(weight)
        fc.bias.copy_(bias)
    return fc


def add_output_arguments(p: argparse.ArgumentParser, default_name: str) -> None:
    p.add_argument("out", type=Path, help="Bundle directory to write (created; an existing manifest is replaced).")
    p.add_argument(
        "--save-head",
        type=Path,
        default=None,
        metavar="PATH",
        help="Where to write the head as a checkpoint for `bundle --head` recalibration (default: OUT.head.pt beside OUT).",
    )
    p.add_argument("--name", default=default_name, help=f"Bundle name recorded in verdicts (default {default_name}).")
    p.add_argument("--version", default="1.0.0", help="Bundle version recorded in verdicts (default 1.0.0).")


def head_path(args: argparse.Namespace) -> Path:
    out: Path = args.out
    return args.save_head or out.with_name(out.name + ".head.pt")


def write_imported(
    args: argparse.Namespace,
    *,
    encoder: ImageEncoder,
    preprocess: Preprocess,
    dim: int,
    architecture: str,
    pretrained: str,
    head: ReleasedHead,
    released_files: dict[str, Path],
    paper_threshold_note: str,
    recalibrate_hint: str | None,
) -> BundleManifest:
    """Export the bundle (paper's threshold, uncalibrated) and the head checkpoint; print what was done and what to do next."""
    from export.embed import encoder_fingerprint

    pins = {flag: {"file": p.name, "sha256": file_sha256(p)} for flag, p in released_files.items()}
    training = {"released": head.released, "files": pins}
    notes = [paper_threshold_note]
    if recalibrate_hint:
        notes.append(recalibrate_hint)
    manifest = write_bundle(
        args.out,
        encoder=encoder,
        preprocess=preprocess,
        embed_dim=dim,
        architecture=architecture,
        pretrained=pretrained,
        heads=[HeadSpec(head.name, head, training)],
        calibration=uncalibrated("paper"),
        name=args.name,
        version=args.version,
        notes=notes,
    )
    context = {
        "encoder_sha256": encoder_fingerprint(encoder),
        "embed_dim": dim,
        "arch": architecture,
        "pretrained": pretrained,
        "weights": encoder.weights.model_dump(mode="json"),
        "activation": encoder.activation,
        "preprocess_mode": preprocess.mode,
        "profile": "released",
        "data": {"source": head.released.get("trained_on"), "embeddings": None, "split": None},
        "imported": f"{head.paper}; files " + ", ".join(f"{v['file']} (sha256 {v['sha256'][:12]})" for v in pins.values()),
    }
    print(f"wrote bundle {args.out} ({architecture}, {encoder.activation}, preprocess {preprocess.mode}, weights {encoder.weights.label})")
    par = manifest.parity
    if par is not None:
        print(f"parity: backbone {par.backbone_max_abs_diff:.2e}, head {par.head_max_abs_diff}")
    print(paper_threshold_note)
    if recalibrate_hint:  # only where `embed --pretrained` can rebuild the encoder, else a head checkpoint is of no use
        fit = FitReport(epochs=0, final_loss=math.nan, notes=["released by the paper's authors; not trained here"])
        saved = save_head(head, fit, head_path(args), context)
        print(f"head checkpoint for recalibration: {saved}")
        print(recalibrate_hint)
    return manifest
