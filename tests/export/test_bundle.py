"""Bundles: ONNX matches PyTorch, the manifest pins every file, the worker refuses tampering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from export.clip import TINY, load_encoder
from export.photos import load_rgb, photo_paths
from worker.ingest.preprocess import clip_input
from worker.model.bundle import BundleError, LoadedBundle, fuse_log_odds


def test_manifest_records_parity_within_tolerance(tiny_bundle: Path) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    par = manifest["parity"]
    assert par["passed"] and par["backbone_max_abs_diff"] <= par["tolerance"]
    assert set(manifest["files"]) == {"backbone.onnx", "head-linear-probe.onnx"}


def test_worker_runtime_matches_pytorch_on_real_photos(tiny_bundle: Path) -> None:
    """The embeddings the worker computes equal the PyTorch encoder's on the same preprocessed photos."""
    encoder, pre, _ = load_encoder(TINY, None, seed=0, random_weights=True)  # same seed as the fixture: same weights
    bundle = LoadedBundle(tiny_bundle)
    pixels = np.stack([clip_input(load_rgb(p), pre) for p in photo_paths()[:6]])
    with torch.no_grad():
        expected = encoder(torch.from_numpy(pixels)).numpy()
    got = bundle.embed(pixels)
    assert np.max(np.abs(got - expected)) < 1e-4
    scores = bundle.score(pixels)
    assert scores.probability.shape == (6,) and np.all((scores.probability >= 0) & (scores.probability <= 1))


def test_tampered_file_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    LoadedBundle(copy)  # intact copy loads
    with (copy / "head-linear-probe.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        LoadedBundle(copy)


def test_missing_file_and_path_escape_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / "backbone.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        LoadedBundle(copy)
    shutil.rmtree(copy)
    shutil.copytree(tiny_bundle, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["files"]["../outside.onnx"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="escapes"):
        LoadedBundle(copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no manifest"):
        LoadedBundle(tmp_path)


def test_log_odds_fusion() -> None:
    p = fuse_log_odds([np.array([0.9, 0.5]), np.array([0.1, 0.5])], [1.0, 1.0])
    assert np.allclose(p, [0.5, 0.5])
    p = fuse_log_odds([np.array([0.9]), np.array([0.6])], [3.0, 1.0])
    assert 0.6 < p[0] < 0.9
