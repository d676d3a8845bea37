"""ONNX Runtime IO binding (the CUDA path) scores as the plain run does; forced on CPU here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.model.bundle import LoadedBundle


def test_io_binding_path_gives_the_same_scores_as_plain_run(tiny_bundle: Path) -> None:
    """The CUDA path binds inputs/outputs and keeps the embedding on the device; forced on CPU here."""
    plain = LoadedBundle(tiny_bundle, ["CPUExecutionProvider"])
    bound = LoadedBundle(tiny_bundle, ["CPUExecutionProvider"], io_binding=True)
    assert bound.io_binding and not plain.io_binding
    size = plain.preprocess.image_size
    pixels = np.random.default_rng(0).normal(size=(3, 3, size, size)).astype(np.float32)
    a, b = plain.score(pixels), bound.score(pixels)
    np.testing.assert_allclose(a.probability, b.probability, rtol=1e-5, atol=1e-6)
    assert set(a.head_scores) == set(b.head_scores)
