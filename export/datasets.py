"""Datasets in UniversalFakeDetect layout: ``<root>/<generator>/[...]/0_real|1_fake/<images>``.

The generator is the first path component under the root (UniversalFakeDetect
nests classes below it, e.g. ``cyclegan/apple/0_real``); a root that holds
``0_real``/``1_fake`` directly is one generator named after the root. Files are
listed in sorted order, so every tool (embed shards, evaluation) sees the same
order on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
LABEL_DIRS = {"0_real": 0, "1_fake": 1}


@dataclass(frozen=True)
class Item:
    path: Path
    rel: str
    label: int
    generator: str


def list_dataset(root: Path, generators: set[str] | None = None) -> list[Item]:
    """Every image under ``root`` with its label and generator, sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise SystemExit(f"dataset {root} is not a directory")
    items: list[Item] = []
    for label_dir in sorted(p for p in root.rglob("*") if p.is_dir() and p.name in LABEL_DIRS):
        rel_dir = label_dir.relative_to(root)
        generator = rel_dir.parts[0] if len(rel_dir.parts) > 1 else root.name
        if generators is not None and generator not in generators:
            continue
        for f in sorted(label_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append(Item(f, f.relative_to(root).as_posix(), LABEL_DIRS[label_dir.name], generator))
    items.sort(key=lambda it: it.rel)
    if not items:
        raise SystemExit(f"no images under {root} in UniversalFakeDetect layout (<generator>/0_real|1_fake/*.png)")
    return items


def summary(items: list[Item]) -> dict[str, dict[str, int]]:
    """Counts per generator and label, for manifests and reports."""
    out: dict[str, dict[str, int]] = {}
    for it in items:
        row = out.setdefault(it.generator, {"real": 0, "fake": 0})
        row["fake" if it.label else "real"] += 1
    return dict(sorted(out.items()))
