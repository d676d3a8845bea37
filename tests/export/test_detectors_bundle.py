"""Every method trained on a small synthetic set, exported, and scored by the worker's runtime on held-out data.

Data: ``export synth --encoding png`` (four generator families, 224 px, lossless), the training split's
photographs disjoint from the test split's. Backbone: the tiny random-weight
config. Each method becomes its own bundle (``bundle --data``, profile
small-data) and ``export eval`` scores the test split through
``worker.pipeline.batch.BatchProcessor``.

Stated margin: on the held-out test split every bundle reaches a mean ROC-AUC
over generators of at least 0.75 (chance is 0.5), except knn at least 0.65: a
nearest-neighbour vote in the random-weight 64-d space is dominated by image
content with a bank of only ~150 training images (measured here: 0.67; every
other method 0.80-0.97). A generator left out of training is still detected
above chance (AUC >= 0.6; measured 0.72).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export import heads
from export.cli import main
from export.embed import EmbedOptions, embed_dataset
from export.evaluate import RESULTS_END, RESULTS_START, evaluate
from export.synth import SynthConfig, make_dataset
from export.train import train_bundle
from worker.model.bundle import LoadedBundle

TINY = "aigis-tiny"
MIN_MEAN_AUC = 0.75
MIN_MEAN_AUC_KNN = 0.65
MIN_UNSEEN_AUC = 0.6
#: On top of the small-data profile: fewer epochs where the tiny set converges anyway (test time).
FASTER = {"ntf": {"stage1_epochs": 30, "stage2_epochs": 20}, "gendet-dr": {"ae_epochs": 30}, "freq": {"epochs": 10}}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("detectors")
    # lossless (--encoding png): at 24 images per class this checks the plumbing and that each method learns a clean
    # trace; the format-controlled default (random JPEG/WebP and resizes, harder) is measured by `export benchmark`,
    # where knn needs more than 24 images per class to leave chance
    make_dataset(root / "data", SynthConfig(seed=0, image_size=224, train_per_class=24, test_per_class=12, encoding="png"))
    embed_dataset(root / "data" / "train", root / "emb", EmbedOptions(arch=TINY, random_weights=True, views=True, native_crop=64))
    bundles = {}
    for name in heads.names():
        bundles[name] = root / "bundles" / name
        train_bundle(
            bundles[name],
            data=root / "emb",
            methods=[name],
            arch=TINY,
            pretrained=None,
            random_weights=True,
            profile="small-data",
            overrides=FASTER,
            progress=False,
            save_heads=root / "heads",
        )
    return {"root": root, "heads": root / "heads", "train": root / "data" / "train", "test": root / "data" / "test", "emb": root / "emb", **bundles}


def test_every_method_scores_held_out_images_better_than_chance(bench: dict[str, Path]) -> None:
    names = heads.names()
    results, md = evaluate([bench[n] for n in names], bench["test"], bench["root"] / "report", ["original"], labels=names, make_plots=False)
    aucs = {r.label: r.per_condition["original"]["mean"]["roc_auc"] for r in results}
    print(md)
    print("mean ROC-AUC per method:", {k: round(v, 3) for k, v in aucs.items()})
    for name, auc in aucs.items():
        floor = MIN_MEAN_AUC_KNN if name == "knn" else MIN_MEAN_AUC
        assert auc is not None and auc >= floor, f"{name}: mean ROC-AUC {auc} < {floor} on held-out images"
    for r in results:
        mean = r.per_condition["original"]["mean"]
        assert mean["n_real"] == 48 and mean["n_fake"] == 48 and mean["unscored"] == 0
        assert mean["tpr_at_1pct_fpr"] is None and "needs >= 100 real" in r.per_condition["original"]["tconv"]["why"]["tpr_at_1pct_fpr"]


def test_manifest_records_method_hyperparameters_data_calibration_and_anomaly_outputs(bench: dict[str, Path]) -> None:
    for name in ("gendet", "freq", "knn"):
        bundle = LoadedBundle(bench[name])
        m = bundle.manifest
        head = m.heads[0]
        assert head.method == name and head.trained
        assert head.hyperparameters == {**heads.get(name)().config.model_dump(mode="json"), **head.hyperparameters}
        assert head.training["data"]["train"]["tconv"]["real"] > 0 and head.training["data"]["validation"]["tconv"]["fake"] > 0
        cal = m.calibration
        assert cal.calibrated and cal.target_fpr == 0.01
        assert cal.uncertain_low <= cal.threshold == cal.uncertain_high
        assert cal.validation["n_real"] + cal.validation["n_fake"] == sum(sum(v.values()) for v in head.training["data"]["validation"].values())
        real_val = cal.validation["fpr_at_threshold"]
        assert real_val is not None and real_val <= 0.01
    assert LoadedBundle(bench["gendet"]).manifest.heads[0].anomaly_outputs == ["discrepancy"]
    freq = LoadedBundle(bench["freq"])
    assert freq.native_crop_size == 64 and freq.manifest.heads[0].inputs[1].source == "native_crop"
    gendet = LoadedBundle(bench["gendet"])
    emb = np.zeros((2, 64), dtype=np.float32)
    # The head's own anomaly output, and the drift monitor's embedding novelty that every benchmark bundle carries.
    assert set(gendet.score_embeddings(emb).anomaly) == {"gendet.discrepancy", "monitor.novelty"}


def test_leave_one_generator_out_detects_the_unseen_generator(bench: dict[str, Path]) -> None:
    out = bench["root"] / "loo"
    train_bundle(
        out,
        data=bench["emb"],
        methods=["linear-probe"],
        arch=TINY,
        pretrained=None,
        random_weights=True,
        profile="small-data",
        exclude_generators=["diffusion"],
        progress=False,
    )
    manifest = LoadedBundle(out).manifest
    assert "diffusion" not in manifest.heads[0].training["data"]["train"]
    results, _ = evaluate([out], bench["test"], bench["root"] / "loo-report", ["original"], make_plots=False)
    unseen = results[0].per_condition["original"]["diffusion"]["roc_auc"]
    print("unseen generator (diffusion) ROC-AUC:", unseen)
    assert unseen is not None and unseen >= MIN_UNSEEN_AUC


def test_cli_ensemble_bundle_and_eval_report_with_robustness(bench: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ensemble"
    rc = main(
        [
            "bundle",
            str(out),
            "--random-weights",
            "--data",
            str(bench["emb"]),
            "--method",
            "linear-probe",
            "--method",
            "knn",
            "--profile",
            "small-data",
            "--set",
            "knn.k=5",
        ]
    )
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [h["method"] for h in manifest["heads"]] == ["linear-probe", "knn"]
    assert manifest["heads"][1]["hyperparameters"]["k"] == 5
    assert manifest["calibration"]["calibrated"] and any("ensemble" in n for n in manifest["notes"])

    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{RESULTS_START}\nold\n{RESULTS_END}\nafter\n")
    report = tmp_path / "report"
    rc = main(
        [
            "eval",
            str(out),
            str(bench["gendet"]),
            str(bench["test"]),
            "--out",
            str(report),
            "--conditions",
            "original,jpeg-30,resize-64,blur-3",
            "--readme",
            str(readme),
        ]
    )
    assert rc == 0
    data = json.loads((report / "report.json").read_text())
    assert [b["label"] for b in data["bundles"]] == ["ensemble", "gendet"]
    assert set(data["bundles"][0]["results"]) == {"original", "jpeg-30", "resize-64", "blur-3"}
    assert set(data["bundles"][0]["results"]["original"]) == {"autoencoder", "diffusion", "tconv", "upsample-texture", "mean"}
    for png in ("roc-ensemble.png", "hist-ensemble.png", "roc-gendet.png", "hist-gendet.png"):
        assert (report / png).stat().st_size > 1000
    md = (report / "report.md").read_text()
    assert "| ensemble |" in md and "**Robustness**" in md and "oracle acc†" in md
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "\nold\n" not in text and "| gendet |" in text


def test_saved_heads_load_into_a_new_bundle_without_retraining(bench: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--save-heads then --head: every method round-trips; the rebuilt head scores exactly as the original; re-calibration works."""
    assert sorted(p.stem for p in bench["heads"].glob("*.pt")) == heads.names()
    emb = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    crops = np.random.default_rng(1).random((5, 3, 64, 64)).astype(np.float32)
    for name in heads.names():
        out = tmp_path / name
        rc = main(["bundle", str(out), "--random-weights", "--data", str(bench["emb"]), "--head", str(bench["heads"] / f"{name}.pt"), "--target-fpr", "0.05"])
        assert rc == 0
        assert f"loaded fitted {name}" in capsys.readouterr().out
        original, rebuilt = LoadedBundle(bench[name]), LoadedBundle(out)
        head = rebuilt.manifest.heads[0]
        assert head.method == name and head.training["loaded_from"].endswith(f"{name}.pt")
        assert head.hyperparameters == original.manifest.heads[0].hyperparameters
        assert rebuilt.manifest.calibration.target_fpr == 0.05
        native = crops if original.native_crop_size else None
        a, b = original.score_embeddings(emb, native), rebuilt.score_embeddings(emb, native)
        np.testing.assert_allclose(b.probability, a.probability, atol=1e-6)


def test_loaded_head_joins_a_trained_one_in_an_ensemble_and_refuses_another_encoder(bench: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from export.heads.checkpoint import load_head

    out = tmp_path / "mixed"
    main(
        [
            "bundle",
            str(out),
            "--random-weights",
            "--data",
            str(bench["emb"]),
            "--method",
            "linear-probe",
            "--head",
            str(bench["heads"] / "gendet.pt"),
            "--profile",
            "small-data",
        ]
    )
    manifest = LoadedBundle(out).manifest
    assert [h.method for h in manifest.heads] == ["linear-probe", "gendet"]
    assert "loaded_from" not in manifest.heads[0].training and "loaded_from" in manifest.heads[1].training
    with pytest.raises(RuntimeError, match="already fitted"):
        load_head(bench["heads"] / "gendet.pt").fit(None)  # type: ignore[arg-type]

    payload = torch.load(bench["heads"] / "knn.pt", weights_only=False)
    payload["context"]["encoder_sha256"] = "0" * 64
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="another encoder"):
        main(["bundle", str(tmp_path / "x"), "--random-weights", "--data", str(bench["emb"]), "--head", str(tmp_path / "other.pt")])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="not a readable head checkpoint"):
        main(["bundle", str(tmp_path / "y"), "--random-weights", "--data", str(bench["emb"]), "--head", str(tmp_path / "junk.pt")])
    with pytest.raises(SystemExit, match="--head needs --data"):
        main(["bundle", str(tmp_path / "z"), "--head", str(bench["heads"] / "knn.pt")])
