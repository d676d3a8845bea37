"""Load a model bundle (manifest + ONNX files), verify it, and score batches.

Every file's sha256 is checked against the manifest before a session is
created: a bundle altered after export, or half-copied onto a node, is refused
rather than served. The bundle's identity is the sha256 of ``manifest.json``
(which pins every file), and verdicts and cache keys refer to it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from schemas import BundleManifest, BundleRef, Head
from worker.model.scores import ScoreBatch, fuse_log_odds
from worker.model.sessions import OnnxModel

MANIFEST = "manifest.json"
FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)


class BundleError(RuntimeError):
    """The bundle cannot be served (missing file, checksum mismatch, bad manifest)."""


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle_dir: Path) -> tuple[BundleManifest, str]:
    """Parse and validate ``manifest.json``; returns it with its own sha256."""
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: no {MANIFEST}")
    raw = path.read_bytes()
    try:
        manifest = BundleManifest.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise BundleError(f"{path} is not a valid bundle manifest: {exc}") from exc
    return manifest, hashlib.sha256(raw).hexdigest()


def verify_files(bundle_dir: Path, manifest: BundleManifest) -> None:
    """Refuse the bundle unless every listed file exists with the recorded sha256."""
    problems = []
    for name, expected in manifest.files.items():
        path = (bundle_dir / name).resolve()
        if bundle_dir.resolve() not in path.parents:
            problems.append(f"{name}: path escapes the bundle directory")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif (actual := file_sha256(path)) != expected:
            problems.append(f"{name}: sha256 {actual[:12]}… does not match manifest {expected[:12]}…")
    if problems:
        raise BundleError(f"bundle {bundle_dir} failed verification: " + "; ".join(problems))


class LoadedBundle:
    """A verified bundle with live ONNX Runtime sessions."""

    def __init__(
        self,
        path: Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        io_binding: bool | None = None,
        spinning: bool = True,
    ) -> None:
        self.path = Path(path)
        self.manifest, self.sha256 = read_manifest(self.path)
        verify_files(self.path, self.manifest)
        self.ref = BundleRef(name=self.manifest.name, version=self.manifest.version, sha256=self.sha256)
        bb = self.manifest.backbone
        self.preprocess = bb.preprocess
        # ONNX Runtime 1.31's CPU NCHWc layout pass segfaults on fp16 graphs (seen on the
        # tiny and ViT-B bundles); it only ever helps CPU fp32 convolutions, so fp16
        # bundles load without it and a CPU fallback stays a slow path, not a crash.
        disabled = FP16_DISABLED_OPTIMIZERS if bb.precision == "fp16" else ()
        self.backbone = OnnxModel(self.path / bb.file, providers, intra_op_threads, io_binding, disabled, spinning)
        self.heads: list[tuple[Head, OnnxModel]] = [
            (h, OnnxModel(self.path / h.file, providers, intra_op_threads, io_binding, disabled, spinning)) for h in self.manifest.heads
        ]
        # Graphs beside the detector heads, never fused into the score: the drift monitor's novelty distance
        # (rides in the anomaly map, so it is cached with the score) and the attribution head (P(family)).
        novelty = self.manifest.drift.novelty if self.manifest.drift is not None else None
        self.novelty: tuple[str, str, OnnxModel] | None = None
        if novelty is not None:
            graph = OnnxModel(self.path / novelty.file, providers, intra_op_threads, io_binding, disabled, spinning)
            self.novelty = (novelty.input_name, novelty.output_name, graph)
        self.novelty_key = novelty.anomaly_key if novelty else None
        att = self.manifest.attribution
        self.attribution = OnnxModel(self.path / att.file, providers, intra_op_threads, io_binding, disabled, spinning) if att is not None else None
        # The embedding stays on the device between backbone and heads only when every session binds IO on one device.
        self.io_binding = all(m.io_binding and m.device == self.backbone.device for m in self.sessions)
        self.native_crop_size = self.manifest.native_crop_size

    @property
    def sessions(self) -> list[OnnxModel]:
        """Every ONNX Runtime session this bundle holds (backbone, heads, novelty graph, attribution head)."""
        extra = [m for m in (self.novelty[2] if self.novelty else None, self.attribution) if m is not None]
        return [self.backbone, *(m for _, m in self.heads), *extra]

    @property
    def weights_label(self) -> str:
        """Where the backbone's weights came from (``random``, ``tag:openai``, ``checkpoint:FILE@sha256:...``), for metrics and logs."""
        weights = self.manifest.backbone.weights
        return weights.label if weights is not None else "unrecorded"

    @property
    def providers(self) -> list[str]:
        return self.backbone.providers

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        bb = self.manifest.backbone
        return self.backbone.run({bb.input_name: pixels}, [bb.output_name])[bb.output_name]

    def score_embeddings(self, embeddings: np.ndarray | ort.OrtValue, native: np.ndarray | None = None) -> ScoreBatch:
        """Run every head on precomputed embeddings (and native crops where a head asks)."""
        head_probs: dict[str, np.ndarray] = {}
        anomaly: dict[str, np.ndarray] = {}
        for head, model in self.heads:
            feeds: dict[str, np.ndarray] = {}
            for inp in head.inputs:
                if inp.source == "embedding":
                    feeds[inp.name] = embeddings
                else:
                    if native is None:
                        raise BundleError(f"head {head.name} needs native crops but none were given")
                    feeds[inp.name] = native
            names = [head.probability_output, *head.anomaly_outputs]
            out = model.run_bound(feeds, names) if self.io_binding else model.run(feeds, names)
            head_probs[head.name] = np.asarray(out[head.probability_output], dtype=np.float64).reshape(-1)
            for name in head.anomaly_outputs:
                anomaly[f"{head.name}.{name}"] = np.asarray(out[name], dtype=np.float64).reshape(-1)
        if len(self.heads) == 1:
            fused = next(iter(head_probs.values()))
        else:
            fused = fuse_log_odds(list(head_probs.values()), [h.weight for h, _ in self.heads])
        fused = np.clip(np.nan_to_num(fused, nan=0.5), 0.0, 1.0)
        if self.novelty is not None and self.novelty_key is not None:
            feed_name, out_name, session = self.novelty
            feeds = {feed_name: embeddings}
            out = session.run_bound(feeds, [out_name]) if self.io_binding else session.run(feeds, [out_name])
            anomaly[self.novelty_key] = np.asarray(out[out_name], dtype=np.float64).reshape(-1)
        return ScoreBatch(fused, head_probs, anomaly, self.score_attribution(embeddings))

    def score_attribution(self, embeddings: np.ndarray | ort.OrtValue) -> dict[str, np.ndarray]:
        """P(family) per class of the attribution head, each (N,); empty when the bundle has none."""
        att = self.manifest.attribution
        if self.attribution is None or att is None:
            return {}
        feeds = {att.input_name: embeddings}
        out = self.attribution.run_bound(feeds, [att.output_name]) if self.io_binding else self.attribution.run(feeds, [att.output_name])
        probs = np.asarray(out[att.output_name], dtype=np.float64).reshape(-1, len(att.classes))
        return {name: probs[:, j] for j, name in enumerate(att.classes)}

    def score(self, pixels: np.ndarray, native: np.ndarray | None = None) -> ScoreBatch:
        """Backbone then heads for a batch of preprocessed images (N, 3, S, S)."""
        if self.io_binding:
            bb = self.manifest.backbone
            embedding = self.backbone.run_bound({bb.input_name: pixels}, [bb.output_name], frozenset({bb.output_name}))[bb.output_name]
            return self.score_embeddings(embedding, native)
        return self.score_embeddings(self.embed(pixels), native)


__all__ = ["MANIFEST", "BundleError", "LoadedBundle", "ScoreBatch", "file_sha256", "fuse_log_odds", "read_manifest", "verify_files"]
