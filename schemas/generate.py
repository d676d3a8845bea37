"""Generate (or check) the JSON Schema files checked in next to the models.

``python -m schemas`` rewrites them; ``python -m schemas --check`` exits 1 and
names the stale files when a model changed without regenerating, which is what
the test suite runs so that a stale contract can never land.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.drift import DriftReport
from schemas.events import DeadLetter, UploadEvent, VerdictEvent
from schemas.feedback import ModeratorDecision
from schemas.manifest import BundleManifest

SCHEMA_DIR = Path(__file__).resolve().parent

MODELS: dict[str, type[BaseModel]] = {
    "upload_event.schema.json": UploadEvent,
    "verdict_event.schema.json": VerdictEvent,
    "dead_letter.schema.json": DeadLetter,
    "bundle_manifest.schema.json": BundleManifest,
    "drift_report.schema.json": DriftReport,
    "moderator_decision.schema.json": ModeratorDecision,
}


def render(model: type[BaseModel]) -> str:
    """Deterministic JSON Schema text for one model."""
    schema = model.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://aigis.dev/schemas/{model.__name__}.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files whose content differs from what the models generate."""
    out = []
    for name, model in MODELS.items():
        path = directory / name
        if not path.exists() or path.read_text() != render(model):
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="Do not write; exit 1 if any file is stale.")
    parser.add_argument("--out", type=Path, default=SCHEMA_DIR, help="Directory to write into (default: the schemas package).")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        if stale:
            print("stale JSON Schema files (run `python -m schemas`): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("JSON Schema files are up to date.")
        return 0
    for name, model in MODELS.items():
        (args.out / name).write_text(render(model))
        print(f"wrote {args.out / name}")
    return 0
