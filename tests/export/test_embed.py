"""Embeddings are what the worker computes, shards merge into the unsharded result, and reruns resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.embed import EmbedOptions, embed_dataset, load_embeddings
from export.synth import SynthConfig, make_dataset
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.preprocess import clip_input, native_crop

TINY = "aigis-tiny"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root, SynthConfig(seed=1, image_size=96, train_per_class=3, test_per_class=1, generators=("tconv", "diffusion")))
    return root / "train"


def test_embeddings_match_the_worker_bundle_on_the_same_images(dataset: Path, tmp_path: Path, tiny_bundle: Path) -> None:
    from worker.model.bundle import LoadedBundle

    opts = EmbedOptions(arch=TINY, random_weights=True, chunk_size=5, views=True, native_crop=32)
    embed_dataset(dataset, tmp_path / "emb", opts)
    data, meta = load_embeddings(tmp_path / "emb")
    assert len(data) == 12 and meta["dim"] == 64
    assert set(data.generators) == {"tconv", "diffusion"} and sorted(set(data.labels.tolist())) == [0, 1]
    # views exist for reals only
    assert not np.isnan(data.views[data.labels == 0]).any() and np.isnan(data.views[data.labels == 1]).all()

    bundle = LoadedBundle(tiny_bundle)  # same arch and seed -> same weights, exported to ONNX
    decoded = [decode_image((dataset / p).read_bytes(), DecodeLimits()).image for p in data.paths]
    served = bundle.embed(np.stack([clip_input(img, bundle.preprocess) for img in decoded]))
    assert np.max(np.abs(served - data.embeddings)) < 1e-3
    crops = np.stack([native_crop(img, 32) for img in decoded])
    assert np.array_equal(crops, data.native)


def test_shards_merge_to_the_unsharded_result_and_reruns_skip_done_chunks(dataset: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    embed_dataset(dataset, whole, EmbedOptions(arch=TINY, random_weights=True, chunk_size=4))
    split = tmp_path / "split"
    embed_dataset(dataset, split, EmbedOptions(arch=TINY, random_weights=True, chunk_size=4, shard=(1, 2)))
    with pytest.raises(SystemExit, match="0/2 not finished"):
        load_embeddings(split)
    embed_dataset(dataset, split, EmbedOptions(arch=TINY, random_weights=True, chunk_size=4, shard=(0, 2)))
    a, _ = load_embeddings(whole)
    b, _ = load_embeddings(split)
    assert a.paths == b.paths and np.allclose(a.embeddings, b.embeddings, atol=1e-6)

    chunk = sorted((split / "chunks").glob("*.npz"))[0]
    before = chunk.stat().st_mtime_ns
    embed_dataset(dataset, split, EmbedOptions(arch=TINY, random_weights=True, chunk_size=4, shard=(0, 2)))
    assert chunk.stat().st_mtime_ns == before  # resumed: nothing recomputed

    with pytest.raises(SystemExit, match="other settings"):
        embed_dataset(dataset, split, EmbedOptions(arch=TINY, random_weights=True, chunk_size=4, shard=(0, 2), views=True))


def test_synth_and_embed_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from export.cli import main

    assert (
        main(["synth", str(tmp_path / "d"), "--seed", "2", "--image-size", "64", "--train-per-class", "1", "--test-per-class", "1", "--generator", "tconv"])
        == 0
    )
    assert main(["embed", str(tmp_path / "d" / "train"), str(tmp_path / "e"), "--arch", TINY, "--random-weights", "--shard", "0/1", "--native-crop", "32"]) == 0
    data, _ = load_embeddings(tmp_path / "e")
    assert len(data) == 2 and data.native is not None and data.native.shape == (2, 3, 32, 32)
    assert (tmp_path / "e" / "s0of1.index.csv").read_text().splitlines()[0] == "path,label,generator,chunk"
    with pytest.raises(SystemExit):
        main(["embed", str(tmp_path / "d" / "train"), str(tmp_path / "e2"), "--random-weights", "--shard", "3/2"])
