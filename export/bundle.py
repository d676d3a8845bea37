"""Write a model bundle: backbone + head ONNX files, parity checked, manifest last.

The manifest is written last and atomically, so a directory without
``manifest.json`` is an unfinished bundle and a worker never loads half of one.
Every file is pinned by sha256 in the manifest; the worker re-checks them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from export.clip import ImageEncoder
from export.heads.base import HeadMethod
from export.onnx_io import export_module, external_data_file, parity
from schemas import Backbone, BundleManifest, Calibration, Head, HeadInput, Parity, Preprocess, PreprocessMode
from worker.model.bundle import MANIFEST, BundleError, LoadedBundle, file_sha256

#: Largest PyTorch-vs-ORT difference accepted at export (embeddings and probabilities).
PARITY_TOLERANCE = 1e-3


@dataclass
class HeadSpec:
    """A fitted head and what the manifest should say about it."""

    name: str
    method: HeadMethod
    training: dict[str, Any] = field(default_factory=dict)
    trained: bool = True
    weight: float = 1.0


def _inputs_for(method: HeadMethod) -> tuple[list[HeadInput], list[str]]:
    names = ["embedding" if s == "embedding" else "native_crop" for s in method.inputs]
    specs = [HeadInput(name=n, source=s, crop_size=method.crop_size if s == "native_crop" else None) for n, s in zip(names, method.inputs, strict=True)]
    return specs, names


def parity_pixels(preprocess: Preprocess, n: int = 4, seed: int = 0) -> torch.Tensor:
    """Normalised inputs for the parity check: smooth random images, not white noise."""
    rng = np.random.default_rng(seed)
    s = preprocess.image_size
    low = rng.random((n, 3, 8, 8)).astype(np.float32)
    img = torch.nn.functional.interpolate(torch.from_numpy(low), size=(s, s), mode="bilinear", align_corners=False)
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    return (img - mean) / std


def write_bundle(
    out: Path,
    *,
    encoder: ImageEncoder,
    preprocess: Preprocess,
    embed_dim: int,
    architecture: str,
    pretrained: str | None,
    heads: list[HeadSpec],
    calibration: Calibration,
    name: str = "aigis",
    version: str = "0.1.0",
    metrics: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    finalize: Callable[[Path, BundleManifest], BundleManifest] | None = None,
) -> BundleManifest:
    """Export everything into ``out`` and return the manifest (raises on failed parity).

    ``finalize(out, manifest)``, when given, runs after the graphs are exported
    and before the manifest is written; it may export more files into ``out``
    and returns the manifest to write (e.g. :func:`export.monitoring.finalize_hook`:
    the drift reference and the attribution head).
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)

    pixels = parity_pixels(preprocess)
    backbone_file = "backbone.onnx"
    export_module(encoder, [pixels[:2]], ["pixel_values"], ["embedding"], out / backbone_file)
    bb_diff = parity(encoder, out / backbone_file, [pixels], ["pixel_values"], ["embedding"])
    with torch.no_grad():
        emb = encoder(pixels)

    head_entries: list[Head] = []
    head_diffs: dict[str, float] = {}
    for spec in heads:
        method = spec.method
        inputs, input_names = _inputs_for(method)
        output_names = ["probability", *method.anomaly_outputs]
        module = method.inference_module()
        example = method.example_inputs(embed_dim, batch=2)
        file = f"head-{spec.name}.onnx"
        # A head may ask for external data (a kNN bank too big for one protobuf) and say how its weights are
        # stored (e.g. a float16 bank and its measured fidelity); read from the module so loaded checkpoints keep it.
        export_module(module, example, input_names, output_names, out / file, external_data=getattr(module, "external_data", None))
        export_info = dict(getattr(module, "export_info", None) or {})
        if external_data_file(out / file).is_file():
            export_info["external_data"] = external_data_file(out / file).name
        check = [emb if s == "embedding" else t for s, t in zip(method.inputs, method.example_inputs(embed_dim, batch=len(emb)), strict=True)]
        head_diffs[spec.name] = parity(module, out / file, check, input_names, output_names)
        desc = method.describe()
        head_entries.append(
            Head(
                name=spec.name,
                method=method.name,
                file=file,
                inputs=inputs,
                anomaly_outputs=list(method.anomaly_outputs),
                weight=spec.weight,
                hyperparameters=desc["hyperparameters"],
                training={"paper": desc["paper"], **({"export": export_info} if export_info else {}), **spec.training},
                trained=spec.trained,
            )
        )

    worst = max([bb_diff, *head_diffs.values()])
    par = Parity(
        backbone_max_abs_diff=bb_diff,
        head_max_abs_diff=head_diffs,
        tolerance=PARITY_TOLERANCE,
        samples=len(pixels),
        passed=worst <= PARITY_TOLERANCE,
    )
    if not par.passed:
        raise BundleError(f"ONNX parity failed: max |torch - ort| = {worst:.2e} > {PARITY_TOLERANCE:.0e} ({par.model_dump()})")

    files = {p.name: file_sha256(p) for p in sorted(out.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = BundleManifest(
        name=name,
        version=version,
        created_at=datetime.now(UTC),
        backbone=Backbone(
            architecture=architecture,
            pretrained=pretrained,
            file=backbone_file,
            embed_dim=embed_dim,
            preprocess=preprocess,
            activation=encoder.activation,
            weights=encoder.weights,
        ),
        heads=head_entries,
        calibration=calibration,
        parity=par,
        metrics=metrics or {},
        files=files,
        notes=notes or [],
    )
    if finalize is not None:
        manifest = finalize(out, manifest)
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    LoadedBundle(out)  # the worker's own loader must accept what we wrote
    return manifest


def uncalibrated(source: Literal["placeholder", "paper"] = "placeholder") -> Calibration:
    """0.5, no band, flagged uncalibrated: an untrained head's placeholder, or a published detector's own threshold (``source="paper"``)."""
    return Calibration(threshold=0.5, uncertain_low=0.5, uncertain_high=0.5, target_fpr=None, calibrated=False, threshold_source=source)


def write_placeholder_bundle(
    out: Path,
    architecture: str,
    pretrained: str | None = None,
    *,
    random_weights: bool = False,
    assume_openai: bool | None = None,
    preprocess_mode: PreprocessMode = "clip",
    allow_draft: bool = False,
    name: str = "aigis",
    version: str = "0.1.0",
    seed: int = 0,
    note: str = "head is untrained (random weights): scores carry no meaning",
) -> BundleManifest:
    """A bundle with an untrained linear probe: for tests, speed benchmarks and plumbing checks.

    Same export path as a trained bundle (parity, sha256 pins); the manifest says
    ``trained: false`` and ``calibrated: false`` so no one mistakes its labels
    for a detection result.
    """
    from export.clip import load_encoder
    from export.heads.linear_probe import LinearProbe

    encoder, preprocess, dim = load_encoder(
        architecture,
        pretrained,
        seed=seed,
        random_weights=random_weights,
        assume_openai=assume_openai,
        preprocess_mode=preprocess_mode,
        allow_draft=allow_draft,
    )
    return write_bundle(
        out,
        encoder=encoder,
        preprocess=preprocess,
        embed_dim=dim,
        architecture=architecture,
        pretrained=pretrained,
        heads=[HeadSpec("linear-probe", LinearProbe(dim=dim, seed=seed), {"data": None}, trained=False)],
        calibration=uncalibrated(),
        name=name,
        version=version,
        notes=[note],
    )
