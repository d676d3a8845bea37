"""One JSON file per benchmark: machine, command, settings, rows, targets, notes.

The README section and the plot are rendered from these files
(``python -m bench.report``), never typed by hand, so a number in the README
always has a file and a command behind it.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import describe, loadavg


@dataclass
class Target:
    """A goal from the issue and whether this run met it (None: not measurable here)."""

    name: str
    goal: str
    measured: float | None
    met: bool | None
    unit: str = ""


@dataclass
class BenchResult:
    name: str
    title: str
    quick: bool
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    machine: dict[str, Any] = field(default_factory=describe)
    command: str = field(default_factory=lambda: " ".join(["python", "-m", "bench", *map(shlex.quote, sys.argv[1:])]))
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    duration_s: float = 0.0
    _t0: float = field(default_factory=time.monotonic, repr=False)

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.notes.append(text)

    def add(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        return row

    def target(self, name: str, goal: str, measured: float | None, threshold: float | None, unit: str = "", lower_is_better: bool = False) -> Target:
        met = None if measured is None or threshold is None else (measured <= threshold if lower_is_better else measured >= threshold)
        t = Target(name, goal, measured, met, unit)
        self.targets.append(t)
        return t

    def finish(self) -> BenchResult:
        self.duration_s = round(time.monotonic() - self._t0, 1)
        self.machine["loadavg_end"] = loadavg()
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_t0", None)
        return d

    def write(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, default=_jsonable) + "\n")
        return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_results(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every ``<name>.json`` in ``out_dir`` written by a benchmark, by name."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(out_dir.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "rows" in doc and "name" in doc:
            found[doc["name"]] = doc
    return found
