"""The feedback loop closed end to end: live workers, the real broker and Redis, moderators' decisions, a retrained shadow.

Synthetic data (``export.synth``) -> bundle v1 (``bundle --data``, tiny random-weight backbone) -> a worker
process scores the held-out images (some uploaded twice: the second copy is a cache hit) -> a "moderator"
decides every upload with the truth from its folder, half with the image inline and half by ``file://`` URI,
on a decisions topic -> ``feedback collect`` writes the decided images into the training set's root ->
``bundle --data`` retrains over the union -> a second worker serves v1 with v2 as ``--shadow-bundle`` on new
images, which are decided too -> ``feedback compare`` reads the verdict topic against the decisions.

Every expected count is computed here from what the workers actually published, never written out: the
test checks that the tools join, deduplicate and count what the stream held. Verdicts also carry the
attribution head's answer, checked against the manifest's threshold on misses and on cache hits.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from devkit.harness import Topics, create_topics, publish, start_worker, stop, worker_env
from devkit.outputs import OutputReader
from export.cli import main
from export.synth import SynthConfig, make_dataset
from schemas import UNKNOWN_FAMILY, BundleManifest, ModeratorDecision, VerdictEvent

TRUTH = {"0_real": "real", "1_fake": "ai_generated"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def train_bundle(out: Path, data: Path, name: str, cache: Path) -> BundleManifest:
    argv = ["bundle", str(out), "--arch", "aigis-tiny", "--random-weights", "--data", str(data), "--profile", "small-data"]
    assert main([*argv, "--cache-dir", str(cache), "--name", name]) == 0
    return BundleManifest.model_validate_json((out / "manifest.json").read_text())


def held_out(test_root: Path) -> tuple[list[Path], list[Path]]:
    """The test split in two halves, each with every family and both labels: one per round."""
    first: list[Path] = []
    second: list[Path] = []
    for folder in sorted(p for p in test_root.glob("*/*") if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        first += files[: len(files) // 2]
        second += files[len(files) // 2 :]
    return first, second


def truth(path: Path) -> str:
    return TRUTH[path.parent.name]


def stream(bootstrap: str, topics: Topics, reader: OutputReader, proc, uploads: dict[str, Path]) -> dict[str, VerdictEvent]:  # type: ignore[no-untyped-def]
    items = [(uid.encode(), p.read_bytes(), [("content-type", b"image/png")]) for uid, p in uploads.items()]
    publish(bootstrap, topics.uploads, items)
    assert reader.wait_for_ids(set(uploads), 120, proc) == set()
    assert not reader.dead
    docs = {d["upload_id"]: VerdictEvent.model_validate(d) for d in reader.verdicts}
    return {uid: docs[uid] for uid in uploads}


def decide(bootstrap: str, topic: str, uploads: dict[str, Path], by_uri: bool) -> list[ModeratorDecision]:
    """One decision per upload, the truth from the image's folder; every other one names the image by file:// URI."""
    decisions = []
    for n, (uid, path) in enumerate(sorted(uploads.items())):
        data = path.read_bytes()
        image = {"image_uri": path.as_uri()} if by_uri and n % 2 else {"image_base64": base64.b64encode(data).decode()}
        decisions.append(
            ModeratorDecision(upload_id=uid, content_sha256=sha(data), decision=truth(path), source="moderator", decided_at=datetime.now(UTC), **image)
        )
    publish(bootstrap, topic, [(d.upload_id.encode(), d.model_dump_json().encode(), []) for d in decisions])
    return decisions


def outcome(label: str, decided: str) -> str:
    return "uncertain" if label == "uncertain" else ("right" if label == decided else "wrong")


def test_decisions_become_training_data_and_judge_a_retrained_shadow(servers, tmp_path: Path) -> None:
    bootstrap = servers.bootstrap_servers
    data = tmp_path / "data"
    make_dataset(data, SynthConfig(seed=5, image_size=224, train_per_class=24, test_per_class=8, encoding="png"))
    train = data / "train"
    v1 = train_bundle(tmp_path / "v1", train, "loop-v1", tmp_path / "emb-v1")
    att = v1.attribution
    assert att is not None  # four families in the data: the bundle has an attribution head

    topics = Topics.fresh(bootstrap, partitions=2)
    decisions_topic = f"decisions-{topics.group}"
    create_topics(bootstrap, [decisions_topic], 2)
    first, second = held_out(data / "test")
    round1 = {f"r1-{i}": p for i, p in enumerate(first)}
    round1 |= {f"again-{i}": p for i, p in enumerate(first[::5])}  # the same bytes uploaded again: cache hits, one training example

    # -- round 1: v1 scores, moderators decide ---------------------------------------------------------------
    reader = OutputReader(bootstrap, topics)
    proc = start_worker(worker_env(servers, topics, tmp_path / "v1", AIGIS_MAX_BATCH="8"), tmp_path / "worker-1.log")
    try:
        # the originals first, so that the copies are served from the cache
        originals = stream(bootstrap, topics, reader, proc, {u: p for u, p in round1.items() if u.startswith("r1-")})
        copies = stream(bootstrap, topics, reader, proc, {u: p for u, p in round1.items() if u.startswith("again-")})
    finally:
        assert stop(proc) == 0
    assert {v.cache.value for v in originals.values()} == {"miss"} and {v.cache.value for v in copies.values()} == {"hit"}
    for v in [*originals.values(), *copies.values()]:
        a = v.attribution
        assert a is not None and set(a.probabilities) == set(att.classes) and a.threshold == att.unknown_threshold
        top = max(a.probabilities, key=a.probabilities.__getitem__)
        assert a.probability == a.probabilities[top]
        assert a.family == (top if a.probability >= att.unknown_threshold else UNKNOWN_FAMILY)
    by_sha = {v.content_sha256: v for v in originals.values()}
    assert all(c.attribution == by_sha[c.content_sha256].attribution for c in copies.values())  # the cached answer

    decisions = decide(bootstrap, decisions_topic, round1, by_uri=True)
    report_path = tmp_path / "collect.json"
    argv = ["feedback", "collect", str(train), "--bootstrap-servers", bootstrap, "--decisions-topic", decisions_topic, "--verdicts-topic", topics.verdicts]
    assert main([*argv, "--fetch-file-root", str(data / "test"), "--idle-ms", "1000", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())

    decided = {d.content_sha256: d.decision.value for d in decisions}  # deduplicated by sha256
    assert len(decided) == len(first) < len(decisions)
    on_disk = {p.stem: TRUTH[p.parent.name] for p in (train / "feedback").glob("*/*.png")}
    assert on_disk == decided and report["dataset"]["written"] == len(decided) and report["dataset"]["skipped"] == {}
    a = report["agreement"]
    assert a["joined"] == len(decisions) and a["decisions_without_verdict"] == 0 and a["sha256_mismatches"] == 0
    verdicts1 = originals | copies
    expected_table = {lab: {dec: 0 for dec in ("ai_generated", "real")} for lab in ("ai_generated", "uncertain", "real")}
    for d in decisions:
        expected_table[verdicts1[d.upload_id].label.value][d.decision.value] += 1
    assert a["table"] == expected_table

    # -- retrain over the union, serve it as the shadow --------------------------------------------------------
    v2 = train_bundle(tmp_path / "v2", train, "loop-v2", tmp_path / "emb-v2")  # the dataset grew: new embeddings
    seen = v2.heads[0].training["data"]
    assert "feedback" in seen["generators"]
    fed = [seen[split]["feedback"] for split in ("train", "validation") if "feedback" in seen[split]]
    assert sum(c["real"] for c in fed) == sum(1 for v in decided.values() if v == "real")
    assert sum(c["fake"] for c in fed) == sum(1 for v in decided.values() if v == "ai_generated")

    round2 = {f"r2-{i}": p for i, p in enumerate(second)}
    env = worker_env(servers, topics, tmp_path / "v1", AIGIS_MAX_BATCH="8", AIGIS_SHADOW_BUNDLE=str(tmp_path / "v2"))
    proc = start_worker(env, tmp_path / "worker-2.log")
    try:
        verdicts2 = stream(bootstrap, topics, reader, proc, round2)
    finally:
        assert stop(proc) == 0
        reader.close()
    assert all(v.shadow is not None and v.shadow.bundle.name == "loop-v2" and v.bundle.name == "loop-v1" for v in verdicts2.values())
    decisions2 = decide(bootstrap, decisions_topic, round2, by_uri=False)

    cmp_path = tmp_path / "compare.json"
    argv = ["feedback", "compare", "--bootstrap-servers", bootstrap, "--decisions-topic", decisions_topic, "--verdicts-topic", topics.verdicts]
    assert main([*argv, "--idle-ms", "1000", "--json", str(cmp_path)]) == 0
    (result,) = json.loads(cmp_path.read_text())["comparisons"]  # round 1's verdicts carry no shadow score
    any_v2 = next(iter(verdicts2.values()))
    assert (result["primary"], result["shadow"]) == (f"loop-v1:{any_v2.bundle.version}", f"loop-v2:{any_v2.shadow.bundle.version}")  # type: ignore[union-attr]
    assert result["labels"]["all"]["decided"] == len(decisions2) == len(second)
    for label in ("ai_generated", "real", "all"):
        mine = [d for d in decisions2 if label in ("all", d.decision.value)]
        row = result["labels"][label]
        assert row["decided"] == len(mine) > 0
        for side in ("primary", "shadow"):
            counts = {"right": 0, "uncertain": 0, "wrong": 0}
            for d in mine:
                v = verdicts2[d.upload_id]
                counts[outcome(v.label.value if side == "primary" else v.shadow.label.value, d.decision.value)] += 1  # type: ignore[union-attr]
            assert row[side] == counts
