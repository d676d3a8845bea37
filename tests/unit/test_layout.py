"""The package layout is a contract: who may import what, and the README's table of rooms.

* The worker never imports torch, open_clip or export: every module imports with them blocked.
* ``worker/ingest``, ``worker/model``, ``worker/cache`` and ``worker/pipeline`` never import kafka or
  ``worker.runtime`` (only the runtime talks to the broker), checked on the source's import statements.
* ``schemas`` imports neither ``worker`` nor ``export``; ``worker`` never imports ``devkit`` (test code).
* The README's layout table names every subpackage of ``worker/`` (and nothing that is gone).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KAFKA_FREE_ROOMS = ("ingest", "model", "cache", "pipeline")


def worker_modules() -> list[str]:
    return sorted(
        "worker." + ".".join(p.relative_to(ROOT / "worker").with_suffix("").parts) for p in (ROOT / "worker").rglob("*.py") if p.name != "__main__.py"
    )


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a source file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                out.add(node.module)
    return out


def rooms() -> list[str]:
    return sorted(p.name for p in (ROOT / "worker").iterdir() if p.is_dir() and (p / "__init__.py").exists())


def test_every_worker_module_imports_without_torch() -> None:
    modules = worker_modules()
    assert "worker.app" in modules and "worker.model.bundle" in modules
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "open_clip", "export", "torchvision", "devkit"):
                    raise ImportError(f"blocked import of {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        for m in {modules!r}:
            importlib.import_module(m)
        leaked = sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "open_clip", "export", "devkit"))
        assert not leaked, leaked
        print("ok", len({modules!r}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


def test_the_blocker_really_blocks() -> None:
    """Guard against a test that passes vacuously: importing torch under the blocker must fail."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("blocked")
                return None
        sys.meta_path.insert(0, Block())
        import torch
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "blocked" in result.stderr


@pytest.mark.parametrize("room", KAFKA_FREE_ROOMS)
def test_rooms_below_the_runtime_never_touch_kafka(room: str) -> None:
    offenders = {}
    for path in sorted((ROOT / "worker" / room).rglob("*.py")):
        bad = {m for m in imported_modules(path) if m.split(".")[0] == "kafka" or m == "worker.runtime" or m.startswith("worker.runtime.")}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"only worker/runtime may import kafka or the runtime: {offenders}"


def test_kafka_is_imported_only_by_the_runtime() -> None:
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "worker").rglob("*.py") if any(m.split(".")[0] == "kafka" for m in imported_modules(p)))
    assert users, "the import scan found no kafka user at all: it is not looking at the code"
    assert all(u.startswith("worker/runtime/") for u in users), users


def test_the_import_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The scanner resolves relative imports too, so a room cannot sneak the runtime in with ``from ..runtime``."""
    fake = ROOT / "worker" / "ingest" / "_layout_probe.py"
    try:
        fake.write_text("from ..runtime import clients\nimport kafka.errors\n")
        assert imported_modules(fake) >= {"worker.runtime", "kafka.errors"}
    finally:
        fake.unlink()


def test_contracts_and_product_import_only_downwards() -> None:
    for path in (ROOT / "schemas").rglob("*.py"):
        bad = {m for m in imported_modules(path) if m.split(".")[0] in ("worker", "export", "devkit", "bench")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    for path in (ROOT / "worker").rglob("*.py"):
        bad = {m for m in imported_modules(path) if m.split(".")[0] in ("export", "devkit", "bench", "tests")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_no_test_switches_in_the_product() -> None:
    hits = [str(p.relative_to(ROOT)) for p in (ROOT / "worker").rglob("*.py") if "AIGIS_TEST" in p.read_text()]
    assert not hits, f"test hooks inside worker/ (fault injection belongs in devkit): {hits}"


def test_readme_layout_table_lists_every_room() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- section:layout -->", 1)[1].split("<!-- /section:layout -->", 1)[0]
    listed = set(re.findall(r"^\| `worker/([a-z_]+)/` \|", section, re.M))
    assert listed == set(rooms()), f"README layout table lists {sorted(listed)}, worker/ has {rooms()}"
    top = set(re.findall(r"^\| `([a-z_]+)/` \|", section, re.M))
    for package in ("worker", "schemas", "export", "devkit", "deploy", "tests", "bench"):
        assert package in top, f"README layout table does not list {package}/"
