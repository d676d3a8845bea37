"""``python -m export benchmark``: leave-one-generator-out tables on format-controlled data, generated into the README.

The figures are measured by the full run and written into the README by it;
here the toy run (one method, one fold, a few images) checks the protocol: the
bundles of a fold never saw the held-out generator, the unseen column is that
generator's result and *seen* the mean of the others, the leakage check ran on
the data, and only the marked README parts are rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.benchmark import METHODS_END, METHODS_START, logo_markdown, logo_rows
from export.cli import main
from export.evaluate import RESULTS_END, RESULTS_START
from export.synth import SynthConfig, make_dataset
from worker.model.bundle import read_manifest


def _fold(values: dict[str, float | None]) -> dict[str, dict[str, dict[str, float | None]]]:
    return {"original": {g: {"roc_auc": v} for g, v in values.items()}}


def test_logo_rows_put_the_held_out_generator_in_its_column_and_average_the_rest_as_seen() -> None:
    folds = {
        "a": {"m": _fold({"a": 0.6, "b": 0.9, "c": 1.0, "mean": 0.0})},
        "b": {"m": _fold({"a": 0.8, "b": 0.7, "c": 0.9, "mean": 0.0})},
    }
    row = logo_rows(folds, "roc_auc")["m"]
    assert row["a"] == pytest.approx(0.6) and row["b"] == pytest.approx(0.7)  # each fold contributes its held-out generator only
    assert row["unseen"] == pytest.approx(0.65)
    assert row["seen"] == pytest.approx(((0.9 + 1.0) / 2 + (0.8 + 0.9) / 2) / 2)
    folds["b"]["m"]["original"]["b"]["roc_auc"] = None  # a fold without the metric: no mean over fewer folds
    assert logo_rows(folds, "roc_auc")["m"]["unseen"] is None
    md = logo_markdown({"a": folds["a"]}, {"a": (4, 4)})
    assert "| m | 60.0 | **60.0** | 95.0 |" in md and "a 4 real / 4 fake" in md


@pytest.mark.slow
def test_benchmark_trains_without_the_held_out_generator_and_writes_the_logo_tables(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    # a stale dataset of the old kind (lossless PNGs) must be remade, not reused
    make_dataset(out / "data", SynthConfig(seed=0, train_per_class=8, test_per_class=4, encoding="png"))
    stale_chunk = out / "embeddings" / "chunks" / "s0of1-c00000.npz"  # ... and neither may its embeddings (resumed by chunk number)
    stale_chunk.parent.mkdir(parents=True)
    stale_chunk.write_bytes(b"embeddings of the old PNGs")
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{METHODS_START}\nold methods\n{METHODS_END}\nmiddle\n{RESULTS_START}\nold results\n{RESULTS_END}\nend\n")
    argv = ["benchmark", str(out), "--random-weights", "--method", "linear-probe", "--train-per-class", "8", "--test-per-class", "4"]
    assert main([*argv, "--holdout", "tconv", "--conditions", "jpeg-30", "--readme", str(readme)]) == 0

    assert json.loads((out / "data" / "synth.json").read_text())["encoding"] == "controlled"
    assert stale_chunk.read_bytes() != b"embeddings of the old PNGs"  # re-embedded from the new images
    assert not list((out / "data").rglob("*.png"))
    manifest, _ = read_manifest(out / "bundles" / "tconv" / "linear-probe")
    data = manifest.metrics["data"]
    assert data["excluded_generators"] == ["tconv"] and "tconv" not in data["generators"] and len(data["generators"]) == 3

    report = json.loads((out / "report" / "logo.json").read_text())
    assert report["protocol"] == "leave-one-generator-out" and list(report["folds"]) == ["tconv"]
    assert report["leakage"]["max_format_distance_from_chance"] <= 0.05
    per_gen = report["folds"]["tconv"]["linear-probe"]["original"]
    assert per_gen["tconv"]["n_real"] == 4 and per_gen["tconv"]["n_fake"] == 4 and set(per_gen) >= {"tconv", "diffusion", "mean"}

    text = readme.read_text()
    assert text.startswith("top\n") and text.endswith("end\n") and "old results" not in text and "old methods" not in text
    assert "python -m export benchmark" in text and "--holdout tconv" in text
    assert "Format leakage" in text and "Leave-one-generator-out" in text
    assert "| method | tconv | unseen | seen |" in text and "**real-acc@0.5**" in text and "**fake-acc@cal**" in text
    assert "**Robustness on the unseen generator**" in text and "| method | original | jpeg-30 |" in text
