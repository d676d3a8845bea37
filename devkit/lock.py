"""The hash-pinned installs: ``requirements/*.txt`` compiled from ``pyproject.toml`` by pip-tools.

Every install path installs from these files with ``pip install --require-hashes``:
``make`` (dev set), the container image (worker set, plus the build set to
build the wheel without fetching setuptools unpinned). A fresh machine next
year gets the same stack as today, byte for byte.

* ``worker.txt``: the worker's runtime (``[project] dependencies``): no torch.
* ``export.txt``: the runtime plus the ``export`` extra (PyTorch, open_clip, onnx ...).
* ``dev.txt``: the runtime plus ``export`` and ``dev`` and the build backend: what ``make test`` needs.
* ``build.txt``: ``[build-system] requires`` only (setuptools), for ``pip install --no-build-isolation .``.

``dev.txt`` is resolved first; the others are compiled with it as a
constraint, so a package pinned in two files has one version. pip-compile
keeps existing pins that still satisfy ``pyproject.toml``; ``--upgrade`` takes
the newest the ranges allow. The locks are for CPython 3.11 on Linux x86_64
(pip-compile resolves for the interpreter it runs on; the hashes cover every
file PyPI has for each pinned version, so other platforms of the same versions
verify too).

Each file records a digest of the ``pyproject.toml`` requirements it was
compiled from. ``python -m devkit.lock --check`` (run by
``tests/contracts/test_lock.py``, so by CI) fails when a file is missing, its
digest is stale, or a requirement's specifier is not met by its pin.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = "requirements"
STAMP = "# pyproject-requirements-sha256: "
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@dataclass(frozen=True)
class LockSet:
    """One lock file: which parts of pyproject.toml it covers."""

    name: str
    extras: tuple[str, ...] = ()
    runtime: bool = True
    build: bool = False
    what: str = ""

    @property
    def filename(self) -> str:
        return f"{self.name}.txt"


#: In compile order: dev first (the others are constrained by it).
SETS = (
    LockSet("dev", ("export", "dev"), build=True, what="runtime + export + dev + build backend: make test, make demo, make lint"),
    LockSet("export", ("export",), what="runtime + export: training and ONNX export"),
    LockSet("worker", what="the worker's runtime only (the container image)"),
    LockSet("build", runtime=False, build=True, what="the build backend only: pip install --no-build-isolation ."),
)


def _pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def requirements_of(pyproject: dict, lock: LockSet) -> list[Requirement]:
    """The requirements ``lock`` covers, as pyproject.toml states them."""
    project = pyproject["project"]
    raw: list[str] = list(project.get("dependencies", [])) if lock.runtime else []
    for extra in lock.extras:
        raw += project.get("optional-dependencies", {}).get(extra, [])
    if lock.build:
        raw += pyproject.get("build-system", {}).get("requires", [])
    return [Requirement(r) for r in raw]


def digest(pyproject: dict, lock: LockSet) -> str:
    """sha256 over the normalised requirements (and requires-python): comments and ordering in pyproject.toml do not count."""
    doc = {
        "requires-python": pyproject["project"].get("requires-python", ""),
        "requirements": sorted(str(r) for r in requirements_of(pyproject, lock)),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def pins(text: str) -> dict[str, str]:
    """Canonical package name -> pinned version in a pip-compile output."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = PIN.match(line)
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def _logical_lines(text: str) -> list[str]:
    """Requirement lines with their backslash continuations (the --hash options) joined."""
    out: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


def problems(root: Path = ROOT) -> list[str]:
    """What is wrong between ``root/pyproject.toml`` and ``root/requirements/``; empty when they agree."""
    pyproject = _pyproject(root / "pyproject.toml")
    found: list[str] = []
    pinned: dict[str, dict[str, str]] = {}
    for lock in SETS:
        path = root / LOCK_DIR / lock.filename
        if not path.is_file():
            found.append(f"{LOCK_DIR}/{lock.filename} is missing: run `make lock`")
            continue
        text = path.read_text()
        pinned[lock.name] = have = pins(text)
        stamps = [ln[len(STAMP) :].strip() for ln in text.splitlines() if ln.startswith(STAMP)]
        if stamps != [digest(pyproject, lock)]:
            found.append(f"{LOCK_DIR}/{lock.filename} was compiled from other pyproject.toml requirements than today's: run `make lock`")
        for req in requirements_of(pyproject, lock):
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(req.name)
            if name not in have:
                found.append(f"{LOCK_DIR}/{lock.filename} does not pin {req.name} (pyproject.toml: {req})")
            elif not req.specifier.contains(have[name], prereleases=True):
                found.append(f"{LOCK_DIR}/{lock.filename} pins {req.name}=={have[name]}, outside pyproject.toml's {req}")
        unhashed = [ln.split("==")[0] for ln in _logical_lines(text) if PIN.match(ln) and "--hash=sha256:" not in ln]
        if unhashed:
            found.append(f"{LOCK_DIR}/{lock.filename} pins without hashes: {', '.join(unhashed)}")
    dev = pinned.get("dev", {})
    for set_name, have in pinned.items():
        if set_name == "dev":
            continue
        for pkg, version in have.items():
            if pkg in dev and dev[pkg] != version:
                found.append(f"{LOCK_DIR}/{set_name}.txt pins {pkg}=={version} but dev.txt pins {dev[pkg]}: run `make lock`")
    return found


def compile_locks(root: Path = ROOT, upgrade: bool = False, upgrade_packages: Sequence[str] = ()) -> None:
    """Run pip-compile for every set (dev first), then stamp each file with its pyproject digest."""
    pyproject = _pyproject(root / "pyproject.toml")
    (root / LOCK_DIR).mkdir(exist_ok=True)
    for lock in SETS:
        out = f"{LOCK_DIR}/{lock.filename}"
        cmd = [sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe", "--strip-extras"]
        cmd += ["--no-emit-index-url", "--no-emit-find-links", "--no-build-isolation", "--output-file", out]
        cmd += [arg for extra in lock.extras for arg in ("--extra", extra)]
        if lock.build and not lock.runtime:
            cmd.append("--only-build-deps")
        if lock.build:
            cmd.append("--all-build-deps")
        if lock.name != "dev":
            cmd += ["--constraint", f"{LOCK_DIR}/dev.txt"]
        elif upgrade:
            cmd.append("--upgrade")
        else:
            cmd += [arg for p in upgrade_packages for arg in ("--upgrade-package", p)]
        cmd.append("pyproject.toml")
        print(f"[lock] {out}: {lock.what}", flush=True)
        # The header names the command to rerun, not this script's pip-compile call.
        subprocess.run(cmd, cwd=root, check=True, env={**os.environ, "CUSTOM_COMPILE_COMMAND": "make lock"})
        _stamp(root / out, digest(pyproject, lock))


def _stamp(path: Path, value: str) -> None:
    """Put the digest line right after pip-compile's header comment (replacing an older one)."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(STAMP)]
    at = next((i for i, ln in enumerate(lines) if not ln.startswith("#")), len(lines))
    lines.insert(at, STAMP + value)
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.lock",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="make lock = python -m devkit.lock; make lock-check = python -m devkit.lock --check",
    )
    parser.add_argument("--check", action="store_true", help="Only check that the locks match pyproject.toml (exit 1 when not); compile nothing.")
    parser.add_argument("--upgrade", action="store_true", help="Take the newest versions pyproject.toml allows instead of keeping the current pins.")
    parser.add_argument("--upgrade-package", action="append", default=[], metavar="NAME", help="Upgrade just this package (repeatable).")
    args = parser.parse_args(argv)
    if not args.check:
        compile_locks(ROOT, args.upgrade, args.upgrade_package)
    found = problems(ROOT)
    for p in found:
        print(f"[lock] {p}", file=sys.stderr)
    if not found:
        print(f"[lock] {', '.join(f'{LOCK_DIR}/{s.filename}' for s in SETS)} match pyproject.toml")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
