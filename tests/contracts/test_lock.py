"""The hash-pinned locks (``requirements/*.txt``) agree with ``pyproject.toml``, and every install path uses them.

CI runs this through ``make test``: a dependency added, removed or re-ranged
in ``pyproject.toml`` without ``make lock`` fails here. The mutation tests
below edit a copy of the project files and show each kind of disagreement is
caught (and that edits which change nothing, such as a comment, are not).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from devkit.lock import LOCK_DIR, SETS, STAMP, pins, problems

ROOT = Path(__file__).resolve().parents[2]


def _lock(name: str, root: Path = ROOT) -> str:
    return (root / LOCK_DIR / f"{name}.txt").read_text()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of pyproject.toml and the locks to break."""
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / LOCK_DIR, tmp_path / LOCK_DIR)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}: the mutation test needs updating"
    path.write_text(text.replace(old, new, 1))


def test_the_locks_match_pyproject() -> None:
    assert problems(ROOT) == []


def test_a_dependency_added_without_relocking_fails(project: Path) -> None:
    _edit(project / "pyproject.toml", '"structlog>=24.1",', '"structlog>=24.1",\n    "rich>=13",')
    found = problems(project)
    assert any("worker.txt does not pin rich" in p for p in found), found
    assert any("worker.txt was compiled from other pyproject.toml requirements" in p for p in found), found


def test_a_range_the_pin_does_not_meet_fails(project: Path) -> None:
    _edit(project / "pyproject.toml", '"numpy>=1.26",', '"numpy>=99",')
    found = problems(project)
    assert any(re.search(r"worker.txt pins numpy==\S+, outside pyproject.toml's numpy>=99", p) for p in found), found


def test_a_dependency_removed_without_relocking_fails(project: Path) -> None:
    _edit(project / "pyproject.toml", '    "structlog>=24.1",\n', "")
    assert any("worker.txt was compiled from other" in p for p in problems(project))


def test_an_export_extra_change_stales_the_export_and_dev_locks_but_not_the_workers(project: Path) -> None:
    _edit(project / "pyproject.toml", '"tqdm>=4.66",', '"tqdm>=4.67",')
    stale = {p.split()[0] for p in problems(project) if "compiled from other" in p}
    assert stale == {f"{LOCK_DIR}/export.txt", f"{LOCK_DIR}/dev.txt"}


def test_comments_and_order_in_pyproject_change_nothing(project: Path) -> None:
    _edit(project / "pyproject.toml", '    "redis>=5.0",\n    "structlog>=24.1",\n', '    "structlog>=24.1",  # moved\n    # a comment\n    "redis>=5.0",\n')
    assert problems(project) == []


def test_an_unhashed_pin_a_diverging_pin_and_a_missing_lock_fail(project: Path) -> None:
    worker = project / LOCK_DIR / "worker.txt"
    version = pins(worker.read_text())["numpy"]
    _edit(worker, f"numpy=={version}", "numpy==0.0.1")
    assert any("worker.txt pins numpy==0.0.1 but dev.txt pins" in p for p in problems(project))
    text = _lock("worker", project)
    worker.write_text(re.sub(r" \\\n\s+--hash=sha256:[0-9a-f]+", "", text))
    assert any("worker.txt pins without hashes" in p for p in problems(project))
    (project / LOCK_DIR / "build.txt").unlink()
    assert any("build.txt is missing" in p for p in problems(project))


def test_every_lock_is_stamped_hashed_and_regenerated_by_make_lock() -> None:
    for lock in SETS:
        text = _lock(lock.name)
        assert sum(ln.startswith(STAMP) for ln in text.splitlines()) == 1
        assert "make lock" in text.split("\n\n", 1)[0], "the header names the command that regenerates it"
        assert "--index-url" not in text and "file://" not in text, "no machine-specific index in a lock"


def test_the_worker_lock_is_torch_free_and_the_torch_side_follows_the_house_pins() -> None:
    worker = pins(_lock("worker"))
    assert {"onnxruntime-gpu", "numpy", "kafka-python", "pillow", "pydantic"} <= worker.keys()
    assert not {"torch", "torchvision", "open-clip-torch", "onnxscript", "pytest"} & worker.keys()
    for name in ("export", "dev"):
        p = pins(_lock(name))
        assert p["torch"] == "2.14.1" and p["torchvision"] == "0.29.1", (name, p.get("torch"), p.get("torchvision"))
        assert {"open-clip-torch", "onnx", "onnxscript"} <= p.keys()
    assert "setuptools" in pins(_lock("build")) and "setuptools" in pins(_lock("dev"))


def test_every_install_path_installs_from_a_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*--require-hashes -r \$\(LOCK\)", makefile) and "LOCK   := requirements/dev.txt" in makefile
    assert re.search(r"pip install .*--no-deps --no-build-isolation -e \.", makefile), "the project itself must not pull unpinned dependencies"
    stamp_rule = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "$(LOCK)" in stamp_rule.splitlines()[0], "a changed lock must reinstall"
    for target in ("test", "test-fast", "demo", "lint"):
        assert re.search(rf"^{target}: .*\$\(STAMP\)", makefile, re.M), target
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"pip install --require-hashes -r requirements/build.txt -r requirements/worker.txt", dockerfile)
    assert re.search(r"pip install --no-deps --no-build-isolation \.", dockerfile)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
