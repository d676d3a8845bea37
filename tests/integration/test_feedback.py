"""The feedback loop's collector and shadow comparison against the real broker.

Verdicts and moderator decisions are built here and published with the
harness (``devkit.harness.publish``) on private topics of the shared broker;
``python -m export feedback collect|compare`` read them back through the
worker's Kafka client factory. The scenario is small enough that every
expected count is written out below.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devkit.harness import MAX_IMAGE_BYTES, publish
from devkit.images import unique_jpegs
from export.cli import main
from export.datasets import list_dataset
from export.feedback import mcnemar_p, wilson
from schemas import BundleRef, ModeratorDecision, ShadowScore, Thresholds, Timings, VerdictEvent
from worker.runtime.clients import ensure_topics

PRIMARY = BundleRef(name="prod", version="1", sha256="a" * 64)
SHADOW = BundleRef(name="candidate", version="2", sha256="b" * 64)
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verdict(upload: str, data: bytes, label: str, shadow: str | None = None, at: datetime = T0) -> VerdictEvent:
    score = {"ai_generated": 0.9, "uncertain": 0.5, "real": 0.1}
    return VerdictEvent(
        upload_id=upload,
        content_sha256=sha(data),
        label=label,
        score=score[label],
        thresholds=Thresholds(threshold=0.7, uncertain_low=0.4, uncertain_high=0.7, calibrated=True),
        bundle=PRIMARY,
        cache="miss",
        timings=Timings(queue_ms=1, decode_ms=1, inference_ms=1, total_ms=3),
        shadow=None if shadow is None else ShadowScore(bundle=SHADOW, score=score[shadow], label=shadow),
        produced_at=at,
    )


def decision(upload: str, data: bytes, decided: str, source: str = "moderator", at: datetime = T0, **image: str) -> ModeratorDecision:
    if not image:
        image = {"image_base64": base64.b64encode(data).decode()}
    return ModeratorDecision(upload_id=upload, content_sha256=sha(data), decision=decided, source=source, decided_at=at, **image)


def topics(bootstrap: str) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    names = (f"decisions-{tag}", f"verdicts-{tag}")
    ensure_topics(bootstrap, list(names), 3, MAX_IMAGE_BYTES)
    return names


def send(bootstrap: str, topic: str, events: list) -> None:
    publish(bootstrap, topic, [(e.upload_id.encode(), e.model_dump_json().encode(), []) for e in events])


def test_collect_builds_a_deduplicated_resumable_dataset_and_reports_agreement(bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = unique_jpegs(11, seed=3)
    root = tmp_path / "uploads"
    root.mkdir()
    (root / "u7.jpg").write_bytes(img[7])
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(img[8])
    dec_topic, ver_topic = topics(bootstrap)
    verdicts = [
        verdict("u0", img[0], "ai_generated"),
        verdict("u0", img[0], "ai_generated", at=T0 + timedelta(minutes=1)),  # a replay: same verdict twice
        verdict("u1", img[1], "ai_generated"),
        verdict("u2", img[2], "real"),
        verdict("u3", img[3], "uncertain"),
        verdict("u4", img[4], "real"),
        verdict("u5", img[0], "ai_generated"),  # the same picture uploaded again
        verdict("u6", img[6], "real"),
        verdict("u7", img[7], "ai_generated"),
        verdict("u8", img[8], "real"),
        verdict("u9", img[5], "ai_generated"),
        verdict("u11", img[5], "real"),  # scored other bytes than the decision below is about
    ]
    decisions = [
        decision("u0", img[0], "ai_generated"),
        decision("u1", img[1], "real"),
        decision("u2", img[2], "ai_generated"),
        decision("u3", img[3], "ai_generated"),
        decision("u4", img[4], "real"),
        decision("u5", img[0], "ai_generated", "user_report"),
        decision("u6", img[6], "real", at=T0),
        decision("u6", img[6], "ai_generated", "appeal", at=T0 + timedelta(hours=2)),  # the appeal overrides the moderator
        decision("u7", img[7], "ai_generated", image_uri=(root / "u7.jpg").as_uri()),
        decision("u8", img[8], "real", image_uri=outside.as_uri()),  # outside --fetch-file-root: refused
        ModeratorDecision(  # inline bytes that are not the ones the decision names
            upload_id="u9",
            content_sha256=sha(img[5]),
            decision="ai_generated",
            source="moderator",
            decided_at=T0,
            image_base64=base64.b64encode(img[8]).decode(),
        ),
        decision("u10", img[9], "real"),  # no verdict for this upload
        decision("u11", img[10], "real"),
    ]
    send(bootstrap, ver_topic, verdicts)
    send(bootstrap, dec_topic, decisions)
    publish(bootstrap, dec_topic, [(b"junk", b"not a decision", [])])

    out = tmp_path / "feedback-set"
    argv = ["feedback", "collect", str(out), "--bootstrap-servers", bootstrap, "--decisions-topic", dec_topic, "--verdicts-topic", ver_topic]
    argv += ["--fetch-file-root", str(root), "--idle-ms", "1000", "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    fake = sorted(p.stem for p in (out / "feedback" / "1_fake").iterdir())
    real = sorted(p.stem for p in (out / "feedback" / "0_real").iterdir())
    assert fake == sorted(sha(img[i]) for i in (0, 2, 3, 6, 7))
    assert real == sorted(sha(img[i]) for i in (1, 4, 9, 10))
    assert all(p.suffix == ".jpg" for p in (out / "feedback").rglob("*.*"))
    assert {it.generator for it in list_dataset(out)} == {"feedback"} and len(list_dataset(out)) == 9

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["read"]["decisions"]["records"] == 14 and report["read"]["decisions"]["unreadable"] == 1
    assert report["read"]["verdicts"]["records"] == 12
    assert report["dataset"]["written"] == 9 and report["dataset"]["skipped"] == {"uri_refused": 1, "sha256_mismatch": 1}
    a = report["agreement"]
    assert a["joined"] == 10 and a["decisions_without_verdict"] == 1 and a["sha256_mismatches"] == 1
    assert a["table"] == {
        "ai_generated": {"ai_generated": 4, "real": 1},
        "uncertain": {"ai_generated": 1, "real": 0},
        "real": {"ai_generated": 2, "real": 2},
    }
    assert (a["precision_on_flagged"]["count"], a["precision_on_flagged"]["of"]) == (4, 5)
    assert (a["fakes_missed"]["count"], a["fakes_missed"]["of"]) == (2, 7) and a["fakes_uncertain"]["count"] == 1
    assert (a["real_flagged"]["count"], a["real_flagged"]["of"]) == (1, 3)
    assert "precision on flagged images 80.0% (4/5" in printed and "missed 28.6% (2/7" in printed
    index = json.loads((out / "feedback-index.json").read_text())
    assert index[sha(img[0])]["upload_ids"] == ["u0", "u5"] and index[sha(img[6])]["source"] == "appeal"

    # resumable: a second run fetches and writes nothing, and reports the same
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    assert main(argv) == 0
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["dataset"]["written"] == 0 and again["dataset"]["kept"] == 9 and again["agreement"] == a
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == before

    # a later decision flips a label: the file moves, it is not fetched or duplicated
    send(bootstrap, dec_topic, [decision("u4", img[4], "ai_generated", "appeal", at=T0 + timedelta(days=1))])
    assert main(argv) == 0
    moved = json.loads((tmp_path / "r.json").read_text())["dataset"]
    assert moved["moved"] == 1 and moved["written"] == 0
    assert (out / "feedback" / "1_fake" / f"{sha(img[4])}.jpg").is_file() and not (out / "feedback" / "0_real" / f"{sha(img[4])}.jpg").exists()


def test_compare_says_whether_the_shadow_would_have_done_better(bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dec_topic, ver_topic = topics(bootstrap)
    imgs = unique_jpegs(60, seed=9)
    verdicts, decisions = [], []
    # (decided, primary, shadow, how many): the shadow catches fakes the primary misses and clears reals it flags
    plan = [
        ("ai_generated", "real", "ai_generated", 14),
        ("ai_generated", "uncertain", "ai_generated", 4),
        ("ai_generated", "ai_generated", "ai_generated", 10),
        ("ai_generated", "ai_generated", "real", 2),
        ("real", "ai_generated", "real", 6),
        ("real", "real", "real", 12),
        ("real", "real", "uncertain", 2),
    ]
    i = 0
    for decided, primary, shadow, n in plan:
        for _ in range(n):
            verdicts.append(verdict(f"c{i}", imgs[i], primary, shadow))
            decisions.append(decision(f"c{i}", imgs[i], decided))
            i += 1
    verdicts.append(verdict("no-shadow", imgs[i], "real"))  # not compared: no shadow score
    decisions.append(decision("no-shadow", imgs[i], "real"))
    send(bootstrap, ver_topic, verdicts)
    send(bootstrap, dec_topic, decisions)

    out = tmp_path / "cmp.json"
    argv = ["feedback", "compare", "--bootstrap-servers", bootstrap, "--decisions-topic", dec_topic, "--verdicts-topic", ver_topic]
    assert main([*argv, "--idle-ms", "1000", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    (result,) = json.loads(out.read_text())["comparisons"]
    assert (result["primary"], result["shadow"]) == ("prod:1", "candidate:2")
    fakes, reals, overall = result["labels"]["ai_generated"], result["labels"]["real"], result["labels"]["all"]
    assert (
        fakes["decided"] == 30
        and fakes["primary"] == {"right": 12, "uncertain": 4, "wrong": 14}
        and fakes["shadow"] == {"right": 28, "uncertain": 0, "wrong": 2}
    )
    assert (fakes["primary_only_right"], fakes["shadow_only_right"]) == (2, 18) and fakes["verdict"] == "shadow better"
    assert reals["decided"] == 20 and (reals["primary_only_right"], reals["shadow_only_right"]) == (2, 6) and reals["verdict"] == "no significant difference"
    assert overall["decided"] == 50 and overall["verdict"] == "shadow better" and overall["p_value"] == pytest.approx(mcnemar_p(4, 24))
    assert "would the shadow have done better? yes" in printed


def test_compare_without_shadow_scores_says_so(bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    dec_topic, ver_topic = topics(bootstrap)
    (img,) = unique_jpegs(1, seed=1)
    send(bootstrap, ver_topic, [verdict("x", img, "real")])
    send(bootstrap, dec_topic, [decision("x", img, "real")])
    argv = ["feedback", "compare", "--bootstrap-servers", bootstrap, "--decisions-topic", dec_topic, "--verdicts-topic", ver_topic, "--idle-ms", "800"]
    assert main(argv) == 0
    assert "no joined verdict carries a shadow score" in capsys.readouterr().out


def test_statistics_helpers() -> None:
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(0, 10) == pytest.approx(2 / 1024)
    lo, hi = wilson(4, 5)  # type: ignore[misc]
    assert lo < 0.8 < hi and wilson(0, 0) is None
