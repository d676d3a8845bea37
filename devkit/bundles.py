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
