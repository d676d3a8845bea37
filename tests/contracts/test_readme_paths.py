"""Every file or folder the README names in backticks exists.

The README is how a newcomer finds their way; a path that moved (a test file
renamed by a refactor, a module split) sends them nowhere. This reads every
backticked ``worker/...``, ``export/...``, ``tests/...`` (and the other
top-level folders) path, with any ``::test`` suffix or trailing punctuation
removed, and checks it against the checkout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.contracts

ROOT = Path(__file__).resolve().parents[2]
ROOTS = ("worker", "export", "schemas", "tests", "bench", "deploy", "devkit", "requirements")
PATH = re.compile(r"`((?:" + "|".join(ROOTS) + r")/[A-Za-z0-9_./*-]+)(?:::[^`]*)?`")


def named_paths(text: str) -> set[str]:
    return {m.group(1).rstrip(".,:;") for m in PATH.finditer(text)}


def test_the_pattern_finds_paths_and_strips_test_ids() -> None:
    text = "see `tests/unit/test_x.py::test_y`, `worker/ingest/` and `python -m worker` or `bench/results/`."
    assert named_paths(text) == {"tests/unit/test_x.py", "worker/ingest/", "bench/results/"}


def test_every_path_the_readme_names_exists() -> None:
    paths = named_paths((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(paths) > 20, "the README should name the project's files; the pattern found almost none"
    missing = sorted(p for p in paths if not any(ROOT.glob(p.rstrip("/"))))
    assert not missing, f"README names paths that do not exist: {missing}"
