"""bench.report renders what the JSON says about where each benchmark ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import render


def _result(cpu: str, day: str) -> dict[str, Any]:
    stats = {"n": 1, "median": 10.0, "p25": 10.0, "p75": 10.0, "min": 10.0, "max": 10.0, "rel_iqr": 0.0}
    return {
        "name": "augment",
        "title": "Embedding with --augment K",
        "quick": False,
        "config": {"images": 8, "image_size": 256, "arch": "aigis-tiny", "weights": "random", "reps": 1},
        "rows": [{"mode": "ufd", "augment": 0, "images": 8, "images_per_s": stats, "embeddings_per_s": 10.0}],
        "targets": [],
        "notes": [],
        "machine": {
            "cpu": cpu,
            "cpu_flags": ["avx2"],
            "physical_cores": 2,
            "ram_gib": 23.5,
            "gpus": [],
            "versions": {"python": "3.11.7"},
            "loadavg_start": [0.1],
        },
        "command": "python -m bench --only augment",
        "started_at": f"{day}T00:00:00+00:00",
        "duration_s": 1.0,
    }


def test_one_machine_is_named_once(tmp_path: Path) -> None:
    text = render({"augment": _result("CPU A", "2026-12-04")}, tmp_path)
    assert "Machine: CPU A (avx2), 2 cores" in text and "Machines:" not in text


def test_results_from_different_machines_say_which_ran_where(tmp_path: Path) -> None:
    a, b = _result("CPU A", "2026-12-03"), _result("CPU B", "2026-12-04")
    text = render({"first": a, "augment": b}, tmp_path)
    assert "Machines: CPU A (avx2), 2 cores, 23.5 GiB RAM, no GPU (first); CPU B (avx2), 2 cores, 23.5 GiB RAM, no GPU (augment)." in text
