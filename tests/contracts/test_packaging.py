"""What the wheel ships: the product (``worker``, ``schemas``), never the development packages.

The wheel is built for real (``pip wheel --no-deps``, the same backend the
container image uses) from a copy of this checkout holding every top-level
package, so a test that only read ``pyproject.toml`` could not pass while the
wheel carried ``devkit``, ``tests``, ``bench`` or ``export``. The import
checks make sure that what ships does not need what stays behind.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {"worker", "schemas"}
DEVELOPMENT = {"export", "bench", "devkit", "tests"}


def top_level_packages() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("checkout")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in top_level_packages():
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("aigis-*.whl")
    return zipfile.ZipFile(path)


def test_the_checkout_really_has_development_packages_to_leave_out() -> None:
    assert top_level_packages() >= SHIPPED | DEVELOPMENT


def test_the_wheel_ships_worker_and_schemas_only(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == SHIPPED, sorted(tops)
    assert "worker/__main__.py" in names and "worker/cli.py" in names
    assert any(n.startswith("schemas/") and n.endswith(".json") for n in names), "the generated JSON Schema files are package data"


def test_the_wheel_installs_the_worker_command_and_its_runtime_dependencies_only(wheel: zipfile.ZipFile) -> None:
    (entry,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "aigis-worker = worker.cli:main" in wheel.read(entry).decode()
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [ln.split(":", 1)[1].strip() for ln in wheel.read(meta).decode().splitlines() if ln.startswith("Requires-Dist:")]
    torch = [r for r in requires if r.startswith(("torch", "open_clip"))]
    assert torch and all('extra == "export"' in r for r in torch), torch


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def test_what_ships_never_imports_what_stays_behind() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(bad) for pkg in SHIPPED for p in (ROOT / pkg).rglob("*.py") if (bad := _imports(p) & DEVELOPMENT)}
    assert not offenders, offenders


def test_export_reaches_devkit_only_from_the_demo() -> None:
    """Training and ONNX export are the product's other half: only the demo (development tooling) drives the harness."""
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "export").rglob("*.py") if _imports(p) & {"devkit", "bench", "tests"})
    # the demo is development tooling in export/demo.py and the scenario modules it calls (export/demo_*.py)
    assert "export/demo.py" in users and all(u == "export/demo.py" or u.startswith("export/demo_") for u in users), users
