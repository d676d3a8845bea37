"""The worker never imports torch, open_clip or export: every module imports with them blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker_modules() -> list[str]:
    return sorted(
        "worker." + ".".join(p.relative_to(ROOT / "worker").with_suffix("").parts) for p in (ROOT / "worker").rglob("*.py") if p.name != "__main__.py"
    )


def test_every_worker_module_imports_without_torch() -> None:
    modules = worker_modules()
    assert "worker.app" in modules and "worker.model.bundle" in modules
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "open_clip", "export", "torchvision"):
                    raise ImportError(f"blocked import of {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        for m in {modules!r}:
            importlib.import_module(m)
        leaked = sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "open_clip", "export"))
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
