"""Sampling profiles of a running worker (py-spy, every thread) and their summary for the report.

The cache-path benchmark attaches py-spy after the worker is warm, so imports
and bundle loading do not dilute the profile of the steady state; cProfile
would see one thread only.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

#: The checkout the worker runs from: its frames are shown relative to it.
ROOT = Path(__file__).resolve().parents[1]


def py_spy() -> Path:
    return Path(sys.executable).parent / "py-spy"


def available_py_spy() -> bool:
    return py_spy().exists()


class Profiler:
    """py-spy attached to a running process (all threads, GIL holders, raw collapsed stacks), stopped with SIGINT."""

    def __init__(self, pid: int, out: Path, rate_hz: int = 200) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(py_spy()), "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate_hz)]
        cmd += ["--threads", "--gil", "--full-filenames", "--nonblocking", "-o", str(out)]
        self.out = out
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> str:
        """Stop sampling (py-spy writes the file on SIGINT); returns the end of its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return (err or b"").decode(errors="replace")[-500:]


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> share of samples per thread, per library and per leaf function."""
    threads: Counter[str] = Counter()
    libs: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        head = frames[0]
        thread = head.split(": ", 1)[1] if ": " in head else head
        thread = thread.split(" (")[0].rstrip("0123456789_-") or thread
        threads[thread] += count
        total += count
        calls = frames[1:]
        if not calls:
            continue
        leaf = calls[-1]
        func, _, where = leaf.partition(" (")
        path = where.rsplit(":", 1)[0]
        leaves[f"{func} ({_short(path)})"] += count
        libs[_library(path)] += count
        for name in {f"{c.partition(' (')[0]} ({_short(c.partition(' (')[2].rsplit(':', 1)[0])})" for c in calls}:
            inclusive[name] += count
    share = (lambda c: [{"name": k, "share": v / total} for k, v in c.most_common(top)]) if total else (lambda c: [])
    return {"samples": total, "threads": share(threads), "libraries": share(libs), "self": share(leaves), "inclusive": share(inclusive)}


def library_share(raw: Path, library: str) -> float:
    """Share of the samples whose stack passes through ``library`` anywhere (its inclusive cost), from py-spy raw stacks."""
    total = inside = 0
    marker = f"site-packages/{library}/"
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        total += int(count_s)
        if marker in stack:
            inside += int(count_s)
    return inside / total if total else 0.0


def _short(path: str) -> str:
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return Path(path).name


def _library(path: str) -> str:
    short = _short(path)
    if "site-packages/" in path:
        return short.split("/", 1)[0]
    if short.startswith(("worker/", "schemas/", "bench/")):
        return short.rsplit(".", 1)[0].replace("/", ".")
    return "stdlib:" + short.split("/", 1)[0].removesuffix(".py")
