"""The benchmark harness runs end to end and writes what the README is rendered from.

No timing is asserted (speed lives in ``python -m bench`` output, not in tests):
these check that a comparison runs on the real code paths, that its JSON has
the keys the report needs, and that the markdown, the plot and the README
section are produced from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.cli import main as bench_main
from bench.report import BEGIN, END
from bench.report import main as report_main
from devkit.servers import DevServers


@pytest.fixture
def bench_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Bundles and images the harness builds go to a temp dir, not the repository's .aigis/bench."""
    cache = tmp_path_factory.getbasetemp() / "bench-cache"
    monkeypatch.setenv("AIGIS_BENCH_CACHE", str(cache))
    import bench.artifacts
    import bench.augment
    import bench.decode
    import bench.streaming

    monkeypatch.setattr(bench.artifacts, "CACHE", cache)
    monkeypatch.setattr(bench.decode, "CACHE", cache)
    monkeypatch.setattr(bench.augment, "CACHE", cache)
    monkeypatch.setattr(bench.streaming, "PROFILES", cache / "profiles")
    return cache


def test_backbone_comparison_writes_json_markdown_plot_and_readme(bench_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert bench_main(["--only", "backbone", "--quick", "--arch", "aigis-tiny", "--batch-sizes", "1,2", "--reps", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "backbone.json").read_text())
    assert {"machine", "command", "config", "rows", "targets", "notes", "duration_s", "quick"} <= doc.keys()
    assert {"cpu", "physical_cores", "ram_gib", "gpus", "versions", "loadavg_start", "loadavg_end"} <= doc["machine"].keys()
    backends = {r["backend"] for r in doc["rows"]}
    assert {"torch-eager-cpu", "ort-cpu-fp32", "ort-cpu-int8", "ort-cpu-fp32-fused", "ort-cpu-int8-fused"} <= backends
    assert {r["batch"] for r in doc["rows"]} == {1, 2}
    for row in doc["rows"]:
        assert {"median", "min", "max", "p25", "p75", "n"} <= row["images_per_s"].keys()
        assert row["images_per_s"]["median"] > 0
        assert 0.9 < row["cosine_vs_fp32_min"] <= 1.0 + 1e-9
    # Same weights on both runtimes: the comparison is only fair if this holds.
    assert doc["config"]["torch_vs_ort_fp32_max_abs_diff"] < 1e-3
    assert any("no GPU" in n for n in doc["notes"]) or doc["machine"]["gpus"]

    md = (out / "results.md").read_text()
    assert "| backend | precision | batch 1 | batch 2 |" in md and "ort-cpu-int8" in md
    assert (out / "backbone_throughput.png").stat().st_size > 1000

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{BEGIN}\nold text\n{END}\n\n## after\n")
    assert report_main(["--out", str(out), "--readme", "--readme-path", str(readme)]) == 0
    text = readme.read_text()
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert "old text" not in section and "## Performance" in section and "ort-cpu-fp32" in section
    assert "Machine:" in section and "python -m bench --all" in section
    assert text.endswith("## after\n"), "text outside the markers must not change"


def test_streaming_comparison_runs_against_the_real_broker(bench_cache: Path, tmp_path: Path, servers: DevServers, monkeypatch: pytest.MonkeyPatch) -> None:
    """Benchmark 3 drives ``python -m worker`` through Kafka and the offline scorer on the same images."""
    monkeypatch.setenv("AIGIS_TEST_KAFKA", servers.bootstrap_servers)
    monkeypatch.setenv("AIGIS_TEST_REDIS", servers.redis_url)
    out = tmp_path / "results"
    assert bench_main(["--only", "streaming", "--quick", "--stream-archs", "aigis-tiny", "--stream-images", "40", "--out", str(out)]) == 0
    doc = json.loads((out / "streaming.json").read_text())
    modes = {r["mode"].split(" ")[0]: r for r in doc["rows"]}
    assert modes.keys() == {"offline", "streaming"}
    assert modes["streaming"]["images"] == 40
    assert modes["streaming"]["images_per_s"]["median"] > 0 and modes["offline"]["images_per_s"]["median"] > 0
    assert [t["name"] for t in doc["targets"]] == ["streaming / offline (aigis-tiny)"]
    assert doc["config"]["worker_settings"]["AIGIS_REDIS_URL"] == "", "the streaming comparison runs with the cache off"
    assert "| bundle | mode | images | images/s | ratio to offline |" in (out / "results.md").read_text()


def test_library_share_counts_samples_whose_stack_passes_through_the_library(tmp_path: Path) -> None:
    from bench.profiling import library_share
    from bench.results import BenchResult

    raw = tmp_path / "raw.txt"
    raw.write_text(
        "thread (1);run (/v/site-packages/prometheus_client/metrics.py:10);inc (/v/site-packages/prometheus_client/values.py:3) 3\n"
        "thread (1);poll (/v/site-packages/kafka/consumer.py:5) 7\n"
        "not a sample line\n"
    )
    assert library_share(raw, "prometheus_client") == pytest.approx(0.3)
    assert library_share(raw, "redis") == 0.0
    r = BenchResult("x", "x", quick=True)
    assert r.target("cost", "<= 2%", 1.5, 2.0, "%", lower_is_better=True).met is True
    assert r.target("cost", "<= 2%", 2.5, 2.0, "%", lower_is_better=True).met is False


def test_latency_benchmark_breaks_the_time_down_and_states_the_targets(
    bench_cache: Path, tmp_path: Path, servers: DevServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Benchmark 6: the points asked for, the per-upload breakdown from the verdicts' timings, the README targets."""
    monkeypatch.setenv("AIGIS_TEST_KAFKA", servers.bootstrap_servers)
    monkeypatch.setenv("AIGIS_TEST_REDIS", servers.redis_url)
    out = tmp_path / "results"
    args = ["--only", "latency", "--quick", "--stream-archs", "aigis-tiny", "--stream-images", "48", "--latency-seconds", "3"]
    assert bench_main([*args, "--latency-waits", "5", "--latency-loads", "0.5", "--out", str(out)]) == 0
    doc = json.loads((out / "latency.json").read_text())
    worker_rows = [r for r in doc["rows"] if r["arch"] == "aigis-tiny" and r["cores"] == "shared"]
    assert [(r["max_wait_ms"], r["load"]) for r in worker_rows] == [(5, 0.5)], "--latency-waits and --latency-loads choose the points"
    row = worker_rows[0]
    assert row["n"] > 0 and {"to_pickup_p50_ms", "in_pipeline_p50_ms", "prepare_mean_ms", "inference_mean_ms"} <= row.keys()
    names = ["p50 at 50% load (aigis-tiny, defaults)", "p99 at 50% load (aigis-tiny, defaults)"]
    alone = [r for r in doc["rows"] if r["arch"] == "aigis-tiny" and "alone" in r["cores"]]
    if len(os.sched_getaffinity(0)) >= 2:  # the second pass: the worker on a core of its own, at its own capacity
        assert [(r["max_wait_ms"], r["load"]) for r in alone] == [(5, 0.5)] and alone[0]["n"] > 0
        assert doc["config"]["capacity_images_per_s_worker_alone"]["aigis-tiny"] > 0
        names += [n.replace("defaults)", "defaults, worker on its own core)") for n in names]
    assert [t["name"] for t in doc["targets"]] == names
    text = (out / "results.md").read_text()
    assert "to pick-up p50 ms" in text and "| cores |" in text


def test_provenance_benchmark_writes_its_rows_targets_and_section(bench_cache: Path, tmp_path: Path) -> None:
    """``--only provenance``: the cache-miss cases with a 5%-of-decode target each, the reader alone, the watermark's false positives."""
    out = tmp_path / "results"
    assert bench_main(["--only", "provenance", "--quick", "--reps", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "provenance.json").read_text())
    parts = [r["part"] for r in doc["rows"]]
    assert parts.count("miss_path") == 5 and parts.count("reader") >= 6 and parts.count("false_positives") == 1
    for row in doc["rows"]:
        if row["part"] != "false_positives":
            assert row["decode_ms"] > 0 and row["provenance_ms"] > 0
            assert row["share_of_decode"] == pytest.approx(row["provenance_ms"] / row["decode_ms"], rel=0.05, abs=1e-3)
    miss = [r["image"] for r in doc["rows"] if r["part"] == "miss_path"]
    assert [t["name"] for t in doc["targets"]] == [f"provenance / decode + preprocess, {image} (miss path)" for image in miss]
    assert all(t["goal"] == "<= 5%" and t["met"] is not None for t in doc["targets"])
    fp = doc["rows"][-1]
    assert fp["trials"] > 0 and fp["marked"] > 0
    md = (out / "results.md").read_text()
    assert "### Provenance stage" in md and "| image | prepare, provenance off (ms) |" in md and "Watermark false positives on" in md
    assert "| provenance | provenance / decode + preprocess, 3MP JPEG q90, C2PA-signed (miss path) | <= 5% |" in md


def test_augment_benchmark_times_each_mode_and_copy_count(bench_cache: Path, tmp_path: Path) -> None:
    """``--only augment``: one row per preprocessing mode and K, embeddings/s = images/s x (K + 1), a results.md section."""
    out = tmp_path / "results"
    assert bench_main(["--only", "augment", "--quick", "--out", str(out)]) == 0
    doc = json.loads((out / "augment.json").read_text())
    assert [(r["mode"], r["augment"]) for r in doc["rows"]] == [(m, k) for m in ("ufd", "clip") for k in (0, 1, 4)]
    for row in doc["rows"]:
        assert row["images"] == doc["config"]["images"] == 64  # --quick: 8 per class, 4 families, real and fake
        assert row["images_per_s"]["median"] > 0
        assert row["embeddings_per_s"] == pytest.approx(row["images_per_s"]["median"] * (row["augment"] + 1))
    assert not (bench_cache / "augment" / "emb").exists()  # the embeddings are scratch, removed after the run
    md = (out / "results.md").read_text()
    assert "### Embedding with --augment K" in md and "| mode | K | images/s | embeddings/s |" in md
