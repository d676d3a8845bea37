"""``python -m export drift-benchmark`` end to end at toy scale: every stage runs, the README sections are generated.

The figures themselves (false alarms, detection delay) are measured by the
full run and quoted in the README; here the pools are a few dozen images and
the window 100, so the test checks the plumbing and the bookkeeping: every
streamed verdict counted once, detection runs start after the warm-up, the
generated sections replace only their markers, and a rerun reuses the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.attribution_eval import ATTRIBUTION_END, ATTRIBUTION_START
from export.cli import main
from export.drift_benchmark import DRIFT_END, DRIFT_START

pytestmark = pytest.mark.slow


def test_drift_benchmark_runs_every_stage_and_writes_its_readme_sections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{DRIFT_START}\nold drift\n{DRIFT_END}\nmiddle\n{ATTRIBUTION_START}\nold attribution\n{ATTRIBUTION_END}\nend\n")
    out = tmp_path / "bench"
    argv = ["drift-benchmark", str(out), "--method", "linear-probe", "--train-per-class", "12", "--test-per-class", "6", "--stream-per-class", "40"]
    argv += ["--new-photos-per-class", "10", "--unseen", "diffusion", "--share", "0.3", "--repeats", "2", "--orders", "1"]
    argv += ["--drift-window-images", "100", "--drift-min-images", "50"]
    assert main([*argv, "--until", "scores"]) == 0
    assert not (out / "drift-report.json").exists()
    assert main([*argv, "--readme", str(readme)]) == 0
    report = json.loads((out / "drift-report.json").read_text())
    fa = {r["stream"]: r for r in report["false_alarms"]}
    assert fa["all families + real"]["streamed"] == 320 and fa["all families + real"]["fake_share"] == 0.5
    assert fa["all families + real, 20% fake"]["distinct"] == 200 and fa["all families + real, 20% fake"]["fake_share"] == pytest.approx(0.2)
    assert fa["without diffusion"]["streamed"] == 280  # the left-out family's 40 fakes are not in its false-alarm stream
    (det,) = report["detection"]
    assert det["unseen"] == "diffusion" and det["share"] == 0.3 and det["warmup"] == 100 and len(det["runs"]) == 2
    for run in det["runs"]:
        assert run["delay"] is None or 0 < run["delay"] <= 180
    assert report["settings"]["window_images"] == 100
    new = report["new_scenes"]
    assert new["stream"] == "new scenes (test photographs)" and new["streamed"] == 80 and len(new["first"]) == 1
    assert {a["label"] for a in report["attribution"]} == {"all", "without-diffusion"}
    assert "diffusion" in report["attribution"][1]["unseen"]
    text = readme.read_text()
    assert text.startswith("top\n") and text.endswith("end\n") and "old drift" not in text and "old attribution" not in text
    assert "**False alarms**" in text and "| diffusion |" in text and "**Attribution**" in text and "*unseen:" in text
    assert "python -m export drift-benchmark" in text
    assert "on **new scenes** (the test photographs, known families) the rate is" in text and "new crops of the *training photographs*" in text
    # cached: a rerun scores nothing again
    scores = sorted(p.name for p in (out / "scores").iterdir())
    assert main([*argv, "--until", "scores"]) == 0
    assert sorted(p.name for p in (out / "scores").iterdir()) == scores
