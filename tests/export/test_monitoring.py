"""Bundle-time drift reference, novelty graph and attribution head, read back by the worker's own loader.

Data: ``export synth`` (four families, 24 train / 12 test images per class
and family), the tiny random-weight backbone. What is checked: the manifest's
drift and attribution sections exist and say what they should; the ONNX
novelty graph computes the numpy Mahalanobis distance; images unlike the
training set are farther than the validation p99; the attribution head
attributes held-out images of known families well above chance, its
open-set threshold is set against each family left out in turn (no worse on
those folds than the coverage rule), and the evaluation's open-set rate follows
the verdict's rule (and the candidate novelty rule, a superset); the worker's
pipeline carries the novelty distance in the verdict's anomaly map.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from export.attribution_eval import attribution_probabilities, attribution_scores, evaluate_attribution, true_family
from export.calibrate import stratified_split
from export.cli import main
from export.datasets import list_dataset
from export.embed import EmbedOptions, embed_dataset, load_embeddings
from export.monitoring import NoveltyFit, fit_novelty, ledoit_wolf, out_of_fold_distances
from export.synth import SynthConfig, make_dataset
from export.train import train_bundle
from schemas.monitoring import NOVELTY_KEY
from worker.cache.verdicts import dumps, loads
from worker.ingest.wire import InputRecord
from worker.model.bundle import LoadedBundle
from worker.model.scores import Score
from worker.pipeline.batch import BatchProcessor

TINY = "aigis-tiny"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("monitoring")
    make_dataset(root / "data", SynthConfig(seed=0, image_size=224, train_per_class=24, test_per_class=12))
    embed_dataset(root / "data" / "train", root / "emb", EmbedOptions(arch=TINY, random_weights=True))
    common = {"data": root / "emb", "arch": TINY, "pretrained": None, "random_weights": True, "profile": "small-data", "progress": False}
    train_bundle(root / "lp", methods=["linear-probe"], **common)  # type: ignore[arg-type]
    train_bundle(root / "gd", methods=["gendet"], overrides={"gendet": {"rotations": 3, "teacher_epochs": 5, "classifier_epochs": 5}}, **common)  # type: ignore[arg-type]
    train_bundle(root / "loo", methods=["linear-probe"], exclude_generators=["tconv"], **common)  # type: ignore[arg-type]
    return {"root": root, "emb": root / "emb", "test": root / "data" / "test", "lp": root / "lp", "gd": root / "gd", "loo": root / "loo"}


def _val_split(emb: Path, generators: set[str] | None = None):  # type: ignore[no-untyped-def]
    ds, _ = load_embeddings(emb)
    if generators is not None:
        ds = ds.subset([i for i, g in enumerate(ds.generators) if g in generators])
    tr, va = stratified_split(ds.generators, ds.labels, 0.2, 0)
    return ds.subset(tr), ds.subset(va)


def test_manifest_has_a_drift_reference_per_signal_and_an_attribution_head(bench: dict[str, Path]) -> None:
    m = LoadedBundle(bench["gd"]).manifest
    assert m.drift is not None and m.attribution is not None
    assert [s.signal for s in m.drift.signals] == ["score", "gendet.discrepancy"]
    for s in m.drift.signals:
        d = s.distribution
        assert d.n_real == 20 and d.n_fake == 20 and 2 <= len(d.edges) <= 9
        assert abs(sum(d.real) - 1) < 1e-9 and abs(sum(d.fake) - 1) < 1e-9
    score = m.drift.signals[0].distribution
    assert np.dot(np.arange(len(score.fake)), score.fake) > np.dot(np.arange(len(score.real)), score.real)  # fakes sit in higher bins
    nv = m.drift.novelty
    assert nv is not None and nv.file in m.files and nv.components == ["autoencoder", "diffusion", "tconv", "upsample-texture", "real"]
    assert nv.threshold > 0 and 0 < nv.shrinkage < 1 and nv.fit_images == 152
    pooled = (nv.exceed_real * nv.n_real + nv.exceed_fake * nv.n_fake) / (nv.n_real + nv.n_fake)
    assert pooled <= 0.05  # the 99th percentile of 40 images: at most 1 image beyond it
    assert 0 <= m.drift.uncertain.real <= 1 and m.calibration.uncertain_low < m.calibration.uncertain_high
    assert m.attribution.classes == ["autoencoder", "diffusion", "tconv", "upsample-texture", "real"]
    assert 0.2 < m.attribution.unknown_threshold < 1 and m.attribution.file in m.files
    assert m.attribution.validation["attributed_share"] >= 0.95
    # the threshold was set against each family left out in turn, under the coverage ceiling
    o = m.attribution.training["open_set"]
    assert o["method"] == "leave-one-family-out" and [f["family"] for f in o["folds"]] == m.attribution.classes[:-1]
    assert o["threshold"] == m.attribution.unknown_threshold <= o["coverage_ceiling"]
    assert o["known_kept"] == pytest.approx(np.mean([f["known_kept"] for f in o["folds"]]))
    assert o["unseen_unknown"] == pytest.approx(np.mean([f["unseen_unknown"] for f in o["folds"]]))
    # on the folds, the chosen threshold trades at least as well as the coverage rule's (the ceiling) would have
    at_ceiling = np.mean([f["known_kept_at_ceiling"] + f["unseen_unknown_at_ceiling"] for f in o["folds"]])
    assert o["known_kept"] + o["unseen_unknown"] >= at_ceiling - 1e-12


def test_ledoit_wolf_shrinks_more_with_fewer_images_and_keeps_the_covariance_invertible() -> None:
    rng = np.random.default_rng(0)
    few, _ = ledoit_wolf(rng.standard_normal((30, 64)) * np.linspace(1, 3, 64))
    s_few = ledoit_wolf(rng.standard_normal((30, 64)) * np.linspace(1, 3, 64))[1]
    s_many = ledoit_wolf(rng.standard_normal((5000, 64)) * np.linspace(1, 3, 64))[1]
    assert 0 < s_many < s_few <= 1
    assert np.linalg.eigvalsh(few).min() > 0  # 30 images in 64-d: the sample covariance alone is singular
    # the estimator as Ledoit & Wolf (and scikit-learn) write it, with the second d x d product
    x = rng.standard_normal((50, 20)) * np.linspace(1, 3, 20)
    x -= x.mean(axis=0)
    emp = x.T @ x / 50
    mu = np.trace(emp) / 20
    delta = np.sum((emp - mu * np.eye(20)) ** 2) / 20
    beta = np.sum((x**2).T @ (x**2) / 50 - emp**2) / (20 * 50)
    cov, shrink = ledoit_wolf(x)
    assert shrink == pytest.approx(min(beta, delta) / delta)
    np.testing.assert_allclose(cov, (1 - shrink) * emp + shrink * mu * np.eye(20))


def test_novelty_fit_in_chunks_is_the_fit_in_one_go(bench: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import export.monitoring as mon

    train, val = _val_split(bench["emb"])
    whole = fit_novelty(train)
    monkeypatch.setattr(mon, "CHUNK", 7)
    chunked = fit_novelty(train)
    np.testing.assert_allclose(chunked.whitening, whole.whitening, rtol=1e-8)
    np.testing.assert_allclose(chunked.distances(val.embeddings), whole.distances(val.embeddings), rtol=1e-8)


def test_novelty_graph_computes_the_mahalanobis_distance_and_sees_unfamiliar_embeddings(bench: dict[str, Path]) -> None:
    bundle = LoadedBundle(bench["lp"])
    nv = bundle.manifest.drift.novelty  # type: ignore[union-attr]
    train, val = _val_split(bench["emb"])
    fit: NoveltyFit = fit_novelty(train)
    got = bundle.score_embeddings(val.embeddings).anomaly[NOVELTY_KEY]
    np.testing.assert_allclose(got, fit.distances(val.embeddings), rtol=1e-3)
    # the numpy form is the textbook one: min over classes of sqrt((x - mu)^T S^-1 (x - mu))
    prec = fit.whitening @ fit.whitening.T
    x = val.embeddings[:3].astype(np.float64)
    direct = np.array([min(np.sqrt((r - mu) @ prec @ (r - mu)) for mu in fit.means) for r in x])
    np.testing.assert_allclose(fit.distances(x), direct, rtol=1e-6)
    # the threshold is the p99 of out-of-fold distances over train + validation (5 folds, each fitted on 80%: the served model's size)
    dist, _ = out_of_fold_distances(train, val, fit.components)
    assert len(dist) == nv.n_real + nv.n_fake == 192 and np.quantile(dist, 0.99) == pytest.approx(nv.threshold)
    assert (got > nv.threshold).mean() <= 0.05  # held-out validation images: about 1% beyond it
    rng = np.random.default_rng(0)
    spread = val.embeddings.std(axis=0)
    strange = (val.embeddings + rng.standard_normal(val.embeddings.shape) * 3 * spread).astype(np.float32)
    assert (bundle.score_embeddings(strange).anomaly[NOVELTY_KEY] > nv.threshold).mean() > 0.9


def test_attribution_probabilities_sum_to_one_and_ride_in_the_score_and_the_cache(bench: dict[str, Path]) -> None:
    bundle = LoadedBundle(bench["lp"])
    _, val = _val_split(bench["emb"])
    batch = bundle.score_embeddings(val.embeddings)
    probs = np.stack([batch.attribution[c] for c in bundle.manifest.attribution.classes], axis=1)  # type: ignore[union-attr]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    row = batch.row(0)
    assert set(row.attribution) == set(bundle.manifest.attribution.classes)  # type: ignore[union-attr]
    assert loads(dumps(row)) == row
    plain = Score(0.5, {"h": 0.5}, {})
    assert loads(dumps(plain)) == plain and b'"t"' not in dumps(plain)  # entries of bundles without attribution are unchanged


def test_the_workers_pipeline_puts_the_novelty_distance_in_the_verdict(bench: dict[str, Path]) -> None:
    bundle = LoadedBundle(bench["gd"])
    items = list_dataset(bench["test"])[:8]
    records = [InputRecord("t", 0, i, None, it.rel.encode(), it.path.read_bytes()) for i, it in enumerate(items)]
    with ThreadPoolExecutor(2) as pool:
        outcomes = BatchProcessor.offline(bundle, pool).process(records)
    for o in outcomes:
        assert o.verdict is not None and set(o.verdict.anomaly) == {"gendet.discrepancy", NOVELTY_KEY}
        assert o.verdict.anomaly[NOVELTY_KEY] > 0


def test_attribution_eval_per_family_accuracy_confusion_matrix_and_open_set_rate(bench: dict[str, Path], tmp_path: Path) -> None:
    items = list_dataset(bench["test"])
    full = evaluate_attribution(bench["lp"], items, tmp_path / "full")
    assert full.known_accuracy is not None and full.known_accuracy > 0.5  # 5 classes: chance is 0.2
    assert set(full.per_family) == {"autoencoder", "diffusion", "tconv", "upsample-texture", "real"}
    assert full.unseen == {}
    cm = json.loads((tmp_path / "full" / "attribution-lp.json").read_text())["confusion"]
    assert cm["columns"][-1] == "unknown" and sum(map(sum, cm["counts"])) == len(items)
    assert (tmp_path / "full" / "confusion-lp.png").stat().st_size > 1000
    loo = evaluate_attribution(bench["loo"], items, tmp_path / "loo")
    assert "tconv" not in loo.classes and set(loo.unseen) == {"tconv"}
    unseen = loo.unseen["tconv"]
    print("open-set rate on tconv (left out):", unseen["unknown_rate"], "attributed to:", unseen["attributed_to"], "known -> unknown:", loo.known_unknown_rate)
    row = loo.counts[loo.rows.index("tconv")]
    assert unseen["images"] == 12 == row.sum() and unseen["unknown_rate"] == row[-1] / 12
    assert abs(unseen["unknown_rate"] + sum(unseen["attributed_to"].values()) - 1) < 1e-9
    # the open-set rule is the verdict's: an image is unknown exactly when its top probability is below the threshold
    _, probs = attribution_probabilities(bench["loo"], items)
    tconv = np.array([true_family(it) == "tconv" for it in items])
    assert unseen["unknown_rate"] == pytest.approx((probs[tconv].max(axis=1) < loo.threshold).mean())
    # the candidate rule: unknown also beyond the novelty graph's p99 (a superset of the verdict's unknowns)
    _, probs2, novelty = attribution_scores(bench["loo"], items)
    assert novelty is not None and np.array_equal(probs2, probs)
    nv = LoadedBundle(bench["loo"]).manifest.drift.novelty  # type: ignore[union-attr]
    either = (probs.max(axis=1) < loo.threshold) | (novelty > nv.threshold)  # type: ignore[union-attr]
    assert loo.novelty_threshold == nv.threshold  # type: ignore[union-attr]
    assert loo.unseen_unknown_rate_with_novelty["tconv"] == pytest.approx(either[tconv].mean())
    assert loo.unseen_unknown_rate_with_novelty["tconv"] >= unseen["unknown_rate"]
    known = np.array([true_family(it) in loo.classes for it in items])
    assert loo.known_unknown_rate_with_novelty == pytest.approx(either[known].mean())
    assert loo.known_unknown_rate_with_novelty >= loo.known_unknown_rate
    assert json.loads((tmp_path / "loo" / "attribution-loo.json").read_text())["with_novelty"]["unseen_unknown_rate"] == loo.unseen_unknown_rate_with_novelty


def test_cli_bundle_without_monitoring_and_eval_reports_attribution(bench: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "plain"
    assert (
        main(["bundle", str(out), "--random-weights", "--data", str(bench["emb"]), "--profile", "small-data", "--no-drift-reference", "--no-attribution"]) == 0
    )
    m = LoadedBundle(out).manifest
    assert m.drift is None and m.attribution is None and set(m.files) == {"backbone.onnx", "head-linear-probe.onnx"}
    report = tmp_path / "report"
    assert main(["eval", str(bench["loo"]), str(out), str(bench["test"]), "--out", str(report), "--conditions", "original", "--no-plots"]) == 0
    md = (report / "report.md").read_text()
    assert "**Attribution**" in md and "| loo |" in md and "tconv" in md
    data = json.loads((report / "report.json").read_text())
    assert [a["label"] for a in data["attribution"]] == ["loo"]
