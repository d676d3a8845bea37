"""``python -m export feedback collect|compare``: moderators' decisions as training data and as the judge of bundles.

**collect OUT**: reads the decisions topic (:class:`~schemas.ModeratorDecision`)
and the verdicts topic (:class:`~schemas.VerdictEvent`) from the beginning,
joins them by upload id (and checks the content sha256 agrees), and writes
every decided image into ``OUT/<generator>/0_real|1_fake/<sha256>.<ext>``
(UniversalFakeDetect layout, generator folder ``feedback`` by default), so
``bundle --data`` can train on it beside any other dataset. Images come inline
from the decision or are fetched by URI with the worker's own
:func:`worker.ingest.fetch.fetch` (http(s), file://, s3://) under the allow-lists given on the command
line; the bytes must hash to the decision's ``content_sha256`` and decode with
the worker's decoder, or the image is left out with the reason counted.

* one image per sha256: the same picture uploaded twice is one training
  example; when decisions disagree, the latest ``decided_at`` wins (an appeal
  after a moderator), and an image whose label changed is moved;
* resumable: images already on disk are not fetched again, so an interrupted
  run continues where it stopped (topics are re-read, the join is cheap);
* the **agreement report** (also ``OUT/feedback-report.json``): per label, how
  the model's verdicts compare with the decisions: precision on flagged
  images (of the uploads the model labelled ``ai_generated`` and a person
  decided, the share decided ``ai_generated``), misses among decided fakes
  (labelled ``real`` or ``uncertain``), false positives among decided real
  images; with Wilson 95% intervals. Decided uploads are not a random sample
  (people look at what was flagged or reported), so these are live estimates
  of how the model does *on reviewed traffic*, not of its overall error rates.

**compare**: the same join, for verdicts that carry a shadow score
(``VerdictEvent.shadow``, from ``--shadow-bundle``): per decision label and
overall, how often the primary and the shadow label agree with the person,
the discordant pairs (one right, the other not) and an exact McNemar test on
them, and whether the shadow would have done better. Per (primary, shadow)
bundle pair, since either may change over the topic's life.

Topics are read with kafka-python through the worker's client factory
(:func:`worker.runtime.clients.make_consumer`) without a consumer group, to
the end: until every partition's position has reached its end offset and no
record arrived for ``--idle-ms`` (some brokers under-report end offsets).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from schemas import DecisionLabel, Label, ModeratorDecision, VerdictEvent

M = TypeVar("M", bound=BaseModel)
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "MPO": "jpg"}
LABEL_DIR = {DecisionLabel.real: "0_real", DecisionLabel.ai_generated: "1_fake"}


# -- reading topics -----------------------------------------------------------------------------------------------


@dataclass
class TopicRead:
    records: int = 0
    unreadable: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def read_topic(bootstrap: str, topic: str, model: type[M], max_image_bytes: int, idle_ms: int = 2000, max_s: float = 600.0) -> tuple[list[M], TopicRead]:
    """Every record of ``topic`` parsed as ``model`` (unparseable ones counted), from the beginning to the end."""
    from kafka import TopicPartition

    from worker.runtime.clients import make_consumer

    consumer = make_consumer(bootstrap, topic, None, max_image_bytes, client_id="aigis-feedback")
    stats = TopicRead()
    out: list[M] = []
    try:
        consumer.unsubscribe()
        deadline = time.monotonic() + 10
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise SystemExit(f"topic {topic!r} does not exist on {bootstrap} (or has no partitions)")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        stop_at = time.monotonic() + max_s
        last = time.monotonic()
        while time.monotonic() < stop_at:
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                for rec in records:
                    stats.records += 1
                    try:
                        out.append(model.model_validate_json(rec.value))
                    except (ValidationError, ValueError) as exc:
                        stats.unreadable += 1
                        kind = type(exc).__name__
                        stats.reasons[kind] = stats.reasons.get(kind, 0) + 1
            if batch:
                last = time.monotonic()
                continue
            at_end = all(consumer.position(tp) >= ends.get(tp, 0) for tp in tps)
            if at_end and (time.monotonic() - last) * 1000 >= idle_ms:
                break
        else:
            print(f"warning: stopped reading {topic} after {max_s:.0f}s (--max-seconds)", file=sys.stderr)
    finally:
        consumer.close()
    return out, stats


def latest_verdicts(verdicts: Sequence[VerdictEvent]) -> dict[str, VerdictEvent]:
    """Upload id -> its most recent verdict (replays repeat a verdict; a newer bundle may re-score)."""
    out: dict[str, VerdictEvent] = {}
    for v in verdicts:
        if v.upload_id not in out or v.produced_at >= out[v.upload_id].produced_at:
            out[v.upload_id] = v
    return out


def latest_decisions(decisions: Sequence[ModeratorDecision]) -> dict[str, ModeratorDecision]:
    """Upload id -> its most recent decision by ``decided_at`` (an appeal overrides the moderator before it)."""
    out: dict[str, ModeratorDecision] = {}
    for d in decisions:
        if d.upload_id not in out or d.decided_at >= out[d.upload_id].decided_at:
            out[d.upload_id] = d
    return out


@dataclass
class Pair:
    decision: ModeratorDecision
    verdict: VerdictEvent | None
    mismatch: bool = False  # the verdict scored other bytes than the decision is about


def join(decisions: Sequence[ModeratorDecision], verdicts: Sequence[VerdictEvent]) -> list[Pair]:
    by_upload = latest_verdicts(verdicts)
    pairs = []
    for d in latest_decisions(decisions).values():
        v = by_upload.get(d.upload_id)
        if v is not None and v.content_sha256 != d.content_sha256:
            pairs.append(Pair(d, None, mismatch=True))
        else:
            pairs.append(Pair(d, v))
    return pairs


# -- agreement ----------------------------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of k successes in n (None when n = 0)."""
    if n == 0:
        return None
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - spread) / denom), min(1.0, (centre + spread) / denom)


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"count": k, "of": n, "rate": (k / n) if n else None, "ci95": wilson(k, n)}


def agreement(pairs: Sequence[Pair]) -> dict[str, Any]:
    """Model-vs-moderator figures over joined pairs: a confusion table and the rates the README names."""
    joined = [p for p in pairs if p.verdict is not None]
    table = {lab.value: {d.value: 0 for d in DecisionLabel} for lab in Label}
    for p in joined:
        table[p.verdict.label.value][p.decision.decision.value] += 1  # type: ignore[union-attr]
    flagged = sum(table["ai_generated"].values())
    fakes = sum(table[lab]["ai_generated"] for lab in table)
    reals = sum(table[lab]["real"] for lab in table)
    return {
        "joined": len(joined),
        "decisions_without_verdict": sum(1 for p in pairs if p.verdict is None and not p.mismatch),
        "sha256_mismatches": sum(1 for p in pairs if p.mismatch),
        "table": table,
        "precision_on_flagged": _rate(table["ai_generated"]["ai_generated"], flagged),
        "fakes_missed": _rate(table["real"]["ai_generated"], fakes),
        "fakes_uncertain": _rate(table["uncertain"]["ai_generated"], fakes),
        "fakes_caught": _rate(table["ai_generated"]["ai_generated"], fakes),
        "real_flagged": _rate(table["ai_generated"]["real"], reals),
        "real_uncertain": _rate(table["uncertain"]["real"], reals),
        "real_cleared": _rate(table["real"]["real"], reals),
    }


def _fmt_rate(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return f"n/a (0 of {r['of']})"
    lo, hi = r["ci95"]
    return f"{r['rate']:.1%} ({r['count']}/{r['of']}; 95% CI {lo:.1%}–{hi:.1%})"


def agreement_text(a: dict[str, Any]) -> str:
    t = a["table"]
    lines = [
        f"joined {a['joined']} decisions with verdicts "
        f"({a['decisions_without_verdict']} decisions without a verdict, {a['sha256_mismatches']} sha256 mismatches)",
        "",
        "| model label \\ decision | ai_generated | real |",
        "| --- | ---: | ---: |",
        *(f"| {lab} | {t[lab]['ai_generated']} | {t[lab]['real']} |" for lab in ("ai_generated", "uncertain", "real")),
        "",
        f"label ai_generated: precision on flagged images {_fmt_rate(a['precision_on_flagged'])}",
        f"decided ai_generated: caught {_fmt_rate(a['fakes_caught'])}, uncertain {_fmt_rate(a['fakes_uncertain'])}, missed {_fmt_rate(a['fakes_missed'])}",
        f"decided real: cleared {_fmt_rate(a['real_cleared'])}, uncertain {_fmt_rate(a['real_uncertain'])}, flagged {_fmt_rate(a['real_flagged'])}",
        "(decided uploads are the reviewed ones, not a random sample: estimates for reviewed traffic)",
    ]
    return "\n".join(lines)


# -- collect ------------------------------------------------------------------------------------------------------


@dataclass
class CollectStats:
    written: int = 0
    kept: int = 0  # already on disk with the right label
    moved: int = 0  # on disk under the other label: the latest decision changed it
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _existing(root: Path, sha: str) -> dict[str, Path]:
    out = {}
    for label_dir in LABEL_DIR.values():
        for p in (root / label_dir).glob(f"{sha}.*"):
            if not p.name.endswith(".tmp"):
                out[label_dir] = p
    return out


def collect(
    out: Path,
    decisions: Sequence[ModeratorDecision],
    verdicts: Sequence[VerdictEvent],
    fetch_policy: Any,
    generator: str = "feedback",
    progress: bool = True,
) -> tuple[CollectStats, dict[str, Any], list[Pair]]:
    """Write the decided images (one per sha256, latest decision) under ``out/generator``; returns stats, agreement, pairs."""
    from tqdm import tqdm

    from worker.errors import InputError
    from worker.ingest.decode import DecodeLimits, decode_image
    from worker.ingest.fetch import fetch

    pairs = join(decisions, verdicts)
    root = out / generator
    for d in LABEL_DIR.values():
        (root / d).mkdir(parents=True, exist_ok=True)
    by_sha: dict[str, Pair] = {}
    for p in pairs:  # one image per sha256: the latest decision about those bytes
        cur = by_sha.get(p.decision.content_sha256)
        if cur is None or p.decision.decided_at >= cur.decision.decided_at:
            by_sha[p.decision.content_sha256] = p
    stats = CollectStats()
    index: dict[str, Any] = {}
    limits = DecodeLimits(fetch_policy.max_bytes, 40_000_000, 8)
    for sha, p in tqdm(sorted(by_sha.items()), desc="feedback", unit="img", disable=not progress):
        d = p.decision
        want = LABEL_DIR[d.decision]
        have = _existing(root, sha)
        entry = {
            "decision": d.decision.value,
            "source": d.source.value,
            "decided_at": d.decided_at.isoformat(),
            "upload_ids": sorted(q.decision.upload_id for q in pairs if q.decision.content_sha256 == sha),
            "model_label": p.verdict.label.value if p.verdict else None,
            "model_score": p.verdict.score if p.verdict else None,
            "bundle": p.verdict.bundle.model_dump() if p.verdict else None,
        }
        if want in have:
            stats.kept += 1
            for other, path in have.items():
                if other != want:
                    path.unlink()
            index[sha] = {**entry, "file": f"{generator}/{want}/{have[want].name}"}
            continue
        if have:
            src = next(iter(have.values()))
            dst = root / want / src.name
            os.replace(src, dst)
            stats.moved += 1
            index[sha] = {**entry, "file": f"{generator}/{want}/{dst.name}"}
            continue
        try:
            data = d.image_bytes() if d.image_base64 is not None else fetch(d.image_uri or "", fetch_policy)
        except InputError as exc:
            stats.skip(exc.code.value)
            continue
        except ValueError:
            stats.skip("invalid_base64")
            continue
        if hashlib.sha256(data).hexdigest() != sha:
            stats.skip("sha256_mismatch")  # the bytes behind the URI are not the ones the decision is about
            continue
        try:
            fmt = decode_image(data, limits).format
        except InputError as exc:
            stats.skip(exc.code.value)
            continue
        dst = root / want / f"{sha}.{EXTENSIONS.get(fmt.upper(), 'img')}"
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dst)
        stats.written += 1
        index[sha] = {**entry, "file": f"{generator}/{want}/{dst.name}"}
    (out / "feedback-index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return stats, agreement(pairs), pairs


# -- compare ------------------------------------------------------------------------------------------------------


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value on the discordant pairs (binomial, p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _outcome(label: Label, decision: DecisionLabel) -> str:
    if label is Label.uncertain:
        return "uncertain"
    return "right" if label.value == decision.value else "wrong"


def compare(pairs: Sequence[Pair], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Per (primary, shadow) bundle pair: per decision label and overall, right/uncertain/wrong of each, discordant pairs, verdict."""
    groups: dict[tuple[str, str], list[Pair]] = {}
    for p in pairs:
        v = p.verdict
        if v is None or v.shadow is None:
            continue
        key = (f"{v.bundle.name}:{v.bundle.version}", f"{v.shadow.bundle.name}:{v.shadow.bundle.version}")
        groups.setdefault(key, []).append(p)
    out = []
    for (primary, shadow), group in sorted(groups.items()):
        rows = {}
        for name, subset in [
            *((lab.value, [p for p in group if p.decision.decision is lab]) for lab in DecisionLabel),
            ("all", group),
        ]:
            counts = {"primary": {"right": 0, "uncertain": 0, "wrong": 0}, "shadow": {"right": 0, "uncertain": 0, "wrong": 0}}
            b = c = 0
            for p in subset:
                a = _outcome(p.verdict.label, p.decision.decision)  # type: ignore[union-attr]
                s = _outcome(p.verdict.shadow.label, p.decision.decision)  # type: ignore[union-attr]
                counts["primary"][a] += 1
                counts["shadow"][s] += 1
                b += a == "right" and s != "right"
                c += s == "right" and a != "right"
            pval = mcnemar_p(b, c)
            if b + c == 0:
                says = "same"
            elif pval < alpha:
                says = "shadow better" if c > b else "shadow worse"
            else:
                says = "no significant difference"
            rows[name] = {"decided": len(subset), **counts, "primary_only_right": b, "shadow_only_right": c, "p_value": pval, "verdict": says}
        out.append({"primary": primary, "shadow": shadow, "labels": rows})
    return out


def compare_text(results: Sequence[dict[str, Any]], alpha: float) -> str:
    if not results:
        return "no joined verdict carries a shadow score (run the worker with --shadow-bundle and let moderators decide some of its uploads)"
    lines = []
    for r in results:
        lines += [
            f"primary {r['primary']} vs shadow {r['shadow']} (right = the label the person chose; exact McNemar test on the discordant pairs, alpha {alpha:g})",
            "",
            "| decided | images | primary right / uncertain / wrong | shadow right / uncertain / wrong | only primary right | only shadow right | p | says |",
            "| --- | ---: | --- | --- | ---: | ---: | ---: | --- |",
        ]
        for name, row in r["labels"].items():
            pr, sh = row["primary"], row["shadow"]
            lines.append(
                f"| {name} | {row['decided']} | {pr['right']} / {pr['uncertain']} / {pr['wrong']} | {sh['right']} / {sh['uncertain']} / {sh['wrong']} | "
                f"{row['primary_only_right']} | {row['shadow_only_right']} | {row['p_value']:.3g} | {row['verdict']} |"
            )
        overall = r["labels"]["all"]["verdict"]
        lines += ["", f"=> would the shadow have done better? {'yes' if overall == 'shadow better' else 'no'} ({overall})", ""]
    return "\n".join(lines).rstrip()


# -- command line -------------------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers, comma-separated host:port.")
    p.add_argument("--decisions-topic", required=True, help="Topic of ModeratorDecision events.")
    p.add_argument("--verdicts-topic", required=True, help="Topic of VerdictEvent events (the worker's --verdict-topic).")
    p.add_argument("--max-image-bytes", type=int, default=10 * 1024 * 1024, help="Largest image accepted (and record size read), bytes (default 10 MiB).")
    p.add_argument("--idle-ms", type=int, default=2000, help="A topic is read to its end once no record arrived for this long (default 2000).")
    p.add_argument("--max-seconds", type=float, default=600.0, help="Give up reading a topic after this long (default 600).")
    p.add_argument("--json", type=Path, default=None, help="Also write the report as JSON to this file.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    fb = sub.add_parser("feedback", help="moderator decisions: collect a training set, compare primary vs shadow", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    inner = fb.add_subparsers(dest="feedback_command", required=True, metavar="SUBCOMMAND")
    c = inner.add_parser(
        "collect",
        help="join decisions with verdicts, write the decided images as a dataset, report agreement",
        description="Join decisions with verdicts and write OUT/<generator>/0_real|1_fake/<sha256>.<ext>; print the model-vs-moderator agreement.",
    )
    c.add_argument("out", type=Path, help="Dataset root (created); the images go under OUT/<generator>/0_real|1_fake/.")
    _common(c)
    c.add_argument("--generator", default="feedback", help="Generator folder name in the dataset (default feedback).")
    c.add_argument("--fetch-allowed-hosts", default="", help="Hosts http(s) image URIs may point at, comma-separated (host or host:port; empty refuses all).")
    c.add_argument("--fetch-file-root", type=Path, default=None, help="Directory file:// image URIs must lie under (unset refuses file://).")
    c.add_argument("--fetch-timeout-s", type=float, default=5.0, help="Deadline per fetched image (default 5 s).")
    c.add_argument("--fetch-s3-buckets", default="", help="Buckets s3:// image URIs may name, comma-separated (empty refuses s3://).")
    c.add_argument("--fetch-s3-endpoint", default=None, help="S3 endpoint URL (MinIO, a local S3 server); default AWS.")
    c.add_argument("--fetch-s3-region", default=None, help="S3 region (default: from AWS_REGION / AWS_DEFAULT_REGION).")
    c.set_defaults(func=run_collect)
    k = inner.add_parser(
        "compare",
        help="primary vs shadow scores against the decisions, per label",
        description="Would the shadow bundle have done better? Primary and shadow labels against the decisions, per label, with an exact McNemar test.",
    )
    _common(k)
    k.add_argument("--alpha", type=float, default=0.05, help="Significance level of the McNemar test (default 0.05).")
    k.set_defaults(func=run_compare)


def _read(args: argparse.Namespace) -> tuple[list[ModeratorDecision], list[VerdictEvent], dict[str, Any]]:
    decisions, ds = read_topic(args.bootstrap_servers, args.decisions_topic, ModeratorDecision, args.max_image_bytes, args.idle_ms, args.max_seconds)
    verdicts, vs = read_topic(args.bootstrap_servers, args.verdicts_topic, VerdictEvent, args.max_image_bytes, args.idle_ms, args.max_seconds)
    print(f"read {ds.records} decision records ({ds.unreadable} unreadable), {vs.records} verdict records ({vs.unreadable} unreadable)")
    return decisions, verdicts, {"decisions": ds.__dict__, "verdicts": vs.__dict__}


def run_collect(args: argparse.Namespace) -> int:
    from worker.ingest.fetch import FetchPolicy

    decisions, verdicts, read = _read(args)
    hosts = frozenset(h.strip().lower() for h in args.fetch_allowed_hosts.split(",") if h.strip())
    buckets = frozenset(b.strip().lower() for b in args.fetch_s3_buckets.split(",") if b.strip())
    policy = FetchPolicy(
        hosts,
        args.fetch_file_root,
        args.fetch_timeout_s,
        args.max_image_bytes,
        s3_buckets=buckets,
        s3_endpoint=args.fetch_s3_endpoint,
        s3_region=args.fetch_s3_region,
    )
    stats, agree, _ = collect(args.out, decisions, verdicts, policy, args.generator)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(stats.skipped.items())) or "none"
    print(
        f"dataset {args.out / args.generator}: {stats.written} images written, {stats.kept} already there, "
        f"{stats.moved} moved to a new label; skipped: {skipped}"
    )
    print(agreement_text(agree))
    report = {"read": read, "dataset": {"root": str(args.out), "generator": args.generator, **stats.__dict__}, "agreement": agree}
    (args.out / "feedback-report.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    decisions, verdicts, read = _read(args)
    results = compare(join(decisions, verdicts), args.alpha)
    print(compare_text(results, args.alpha))
    if args.json:
        args.json.write_text(json.dumps({"read": read, "comparisons": results}, indent=2) + "\n")
    return 0


__all__ = ["Pair", "add_parser", "agreement", "collect", "compare", "join", "latest_decisions", "latest_verdicts", "mcnemar_p", "read_topic", "wilson"]
