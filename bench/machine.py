"""Describe the machine a benchmark ran on: numbers without the hardware are not numbers.

Load average is recorded at the start and end of every benchmark because the
machines this runs on are often shared; a run on a busy machine says so in its
own output.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("onnxruntime-gpu", "onnxruntime", "torch", "open_clip_torch", "numpy", "pillow", "kafka-python", "redis", "onnx")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The SIMD features that decide fp32/int8 matmul speed."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16", "f16c"})
    except OSError:
        pass
    return []


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def physical_cores() -> int:
    """Distinct (package, core) pairs; falls back to the logical count."""
    try:
        pairs = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
                pairs.add((phys, core))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1


def gpus() -> list[str]:
    """GPU names from nvidia-smi; empty where there is none (the CPU-only case)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def describe() -> dict[str, Any]:
    """Everything a reader needs to judge a number: CPU, cores, RAM, GPU, libraries, how busy it was."""
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "ram_gib": _ram_gib(),
        "gpus": gpus(),
        "versions": versions(),
        "loadavg_start": loadavg(),
    }


def one_line(m: dict[str, Any]) -> str:
    """'AMD EPYC, 2 cores, 23.4 GiB RAM, no GPU' — the form the README quotes."""
    gpu = ", ".join(m.get("gpus") or []) or "no GPU"
    return f"{m.get('cpu')} ({', '.join(m.get('cpu_flags') or [])}), {m.get('physical_cores')} cores, {m.get('ram_gib')} GiB RAM, {gpu}"


def pin_process(pid: int, cpus: set[int]) -> int:
    """Pin every thread of process ``pid`` to ``cpus``; returns how many threads were pinned.

    Linux affinity is per thread (``sched_setaffinity(pid)`` moves only the main
    thread), and a new thread inherits its creator's: pinning each task under
    ``/proc/PID/task`` moves the threads there now and every one made after.
    """
    pinned = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
            pinned += 1
        except OSError:  # the thread ended meanwhile
            pass
    return pinned


def usable_cpus() -> set[int]:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies summed over every CPU since boot, from /proc/stat; None where there is none."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def settle_cpu(busy_below: float = 0.15, quiet_windows: int = 2, window_s: float = 1.0, max_s: float = 60.0) -> float:
    """Wait until the whole machine is nearly idle (under ``busy_below`` of its CPU for ``quiet_windows`` windows in a row).

    A latency point measured while the broker still digests the previous point's
    backlog measures that backlog. Returns the seconds waited (``max_s`` at most;
    0 where /proc/stat cannot be read).
    """
    start = time.monotonic()
    prev = _cpu_times()
    if prev is None:
        return 0.0
    quiet = 0
    while quiet < quiet_windows and time.monotonic() - start < max_s:
        time.sleep(window_s)
        now = _cpu_times()
        if now is None:
            break
        busy, total = now[0] - prev[0], now[1] - prev[1]
        quiet = quiet + 1 if total > 0 and busy / total < busy_below else 0
        prev = now
    return time.monotonic() - start
