"""Bundle copies and manifest edits for rollout tests (hot swap, refused bundles)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from schemas import BundleManifest


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_manifest(bundle: Path, edit: Callable[[dict], None]) -> str:
    """Edit manifest.json atomically (temp file + rename, as a rollout should); returns its new sha256."""
    doc = json.loads((bundle / "manifest.json").read_text())
    edit(doc)
    BundleManifest.model_validate(doc)
    raw = json.dumps(doc, indent=2).encode()
    tmp = bundle / "manifest.json.tmp"
    tmp.write_bytes(raw)
    tmp.replace(bundle / "manifest.json")
    return hashlib.sha256(raw).hexdigest()


def train_small_bundle(root: Path, *, seed: int, test_per_class: int, exclude_generators: list[str] | None = None, **synth: object) -> Path:
    """What ``python -m export bundle --data`` writes for a small synthetic dataset: a trained linear probe, its drift reference
    and attribution head, on the tiny random-weight backbone (profile small-data); ``root/bundle``.

    For tests that need a bundle's monitoring parts in a running worker; ``exclude_generators`` leaves families out of training.
    """
    from export.embed import EmbedOptions, embed_dataset
    from export.synth import SynthConfig, make_dataset
    from export.train import train_bundle

    make_dataset(root / "data", SynthConfig(seed=seed, image_size=224, train_per_class=24, test_per_class=test_per_class, **synth))  # type: ignore[arg-type]
    embed_dataset(root / "data" / "train", root / "emb", EmbedOptions(arch="aigis-tiny", random_weights=True))
    train_bundle(
        root / "bundle",
        methods=["linear-probe"],
        data=root / "emb",
        arch="aigis-tiny",
        pretrained=None,
        random_weights=True,
        profile="small-data",
        exclude_generators=exclude_generators,
        progress=False,
    )
    return root / "bundle"
