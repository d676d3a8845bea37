"""The end of ``make demo``: a generator the model never saw arrives, and the worker's drift alarm fires.

A second bundle is trained on the demo's synthetic data without one generator
family (``bundle --exclude-generator``: a generator that ships after the
model). A second worker serves it, with a small drift window so that a few
hundred images decide. It first sees a stream of what it knows (real images
and the other families' fakes: fresh crops of the training photographs, never
training images), then the unseen family's fakes mixed in at a stated share.
After every ``eval_every`` images the scenario reads the worker's drift gauges
(``/metrics``), and when one goes into alarm it reads the ``DriftReport`` off
the drift topic and prints it with the number of images from the first unseen
one to the alarm: the demo's version of ``python -m export drift-benchmark``,
through a live worker and the real broker instead of the monitor in-process.

Like :mod:`export.demo`, development tooling: it drives the worker with
:mod:`devkit.harness`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from devkit.harness import OutputReader, Topics, create_topics, http_get, publish, series, start_worker, stop, worker_env
from devkit.servers import DevServers, free_port
from schemas import DriftReport, DriftStatus

#: One partition, so the worker sees the stream in the order it was sent and "images until the alarm" means what it says.
TOPICS = Topics("demo.drift.uploads", "demo.drift.verdicts", "demo.drift.dead-letters", "demo-drift-workers")
DRIFT_TOPIC = "demo.drift"


@dataclass(frozen=True)
class Scenario:
    """What the scenario streams and how the worker's window is set (small, so that it decides in a few hundred images)."""

    unseen: str = "tconv"
    share: float = 0.25
    per_class: int = 60  # pool images per family and label
    warmup: int = 200  # known images before the first unseen one
    window_images: int = 200
    min_images: int = 150
    eval_every: int = 25
    seed: int = 11  # the stream's order


def ensure_unseen_bundle(workdir: Path, unseen: str) -> Path:
    """Reuse (if it verifies) or train the demo bundle without ``unseen``: linear probe, drift reference, same embeddings."""
    from export.cli import main as export_main
    from worker.model.bundle import BundleError, LoadedBundle

    out = workdir / f"bundle-without-{unseen}"
    try:
        if LoadedBundle(out, ["CPUExecutionProvider"]).manifest.drift is not None:
            return out
    except BundleError:
        pass
    print(f"[demo] training a bundle without the {unseen} family (its drift reference knows the other families only) ...")
    export_main(
        [
            "bundle",
            str(out),
            "--arch",
            "aigis-tiny",
            "--random-weights",
            "--data",
            str(workdir / "synth" / "train"),
            "--exclude-generator",
            unseen,
            "--method",
            "linear-probe",
            "--profile",
            "small-data",
            "--cache-dir",
            str(workdir / "embeddings"),  # the demo bundle's embeddings: nothing is embedded again
            "--name",
            f"aigis-demo-without-{unseen}",
        ]
    )
    return out


def stream_order(pool: Path, sc: Scenario) -> tuple[list[Path], int]:
    """Known images for ``warmup``, then the unseen family's fakes at ``share``; returns the paths and the onset index."""
    known = sorted(p for p in pool.glob("*/*/*.png") if p.parent.name == "0_real" or p.parent.parent.name != sc.unseen)
    new = sorted((pool / sc.unseen / "1_fake").glob("*.png"))
    rng = np.random.default_rng(sc.seed)
    known = [known[i] for i in rng.permutation(len(known))]
    new = [new[i] for i in rng.permutation(len(new))]
    head, tail = known[: sc.warmup], known[sc.warmup :]
    mixed: list[Path] = []
    while tail and new:
        mixed.append(new.pop() if rng.random() < sc.share else tail.pop())
    return head + mixed, len(head)


def _drift_gauges(port: int) -> dict[tuple[str, str], tuple[float, float]]:
    """(statistic, signal) -> (value, threshold) of the primary bundle, from the worker's /metrics."""
    status, body = http_get(port, "/metrics")
    if status != 200:
        return {}
    values: dict[tuple[str, str], float] = {}
    thresholds: dict[tuple[str, str], float] = {}
    for name, labels, value in series(body):
        if name not in ("aigis_drift_value", "aigis_drift_threshold") or labels.get("role") != "primary":
            continue
        key = (labels.get("statistic", ""), labels.get("signal", ""))
        if name == "aigis_drift_value":
            values[key] = value
        elif name == "aigis_drift_threshold":
            thresholds[key] = value
    return {k: (v, thresholds.get(k, float("nan"))) for k, v in values.items()}


def _alarms(consumer: KafkaConsumer) -> list[DriftReport]:
    out = []
    for records in consumer.poll(timeout_ms=300).values():
        for r in records:
            report = DriftReport.model_validate_json(r.value)
            if report.status is DriftStatus.alarm:
                out.append(report)
    return out


def _fmt(g: dict[tuple[str, str], tuple[float, float]], key: tuple[str, str], pct: bool) -> str:
    if key not in g:
        return "-"
    v, t = g[key]
    return f"{v:.1%} / {t:.1%}" if pct else f"{v:.3f} / {t:.3f}"


def run_drift_scenario(workdir: Path, servers: DevServers, sc: Scenario | None = None) -> dict[str, Any]:
    """Stream known families, then an unseen one, through a worker of the bundle without it; print when drift fires."""
    from export.drift_benchmark import make_pool
    from export.synth import GENERATORS

    sc = sc or Scenario()
    t0 = time.time()
    bundle = ensure_unseen_bundle(workdir, sc.unseen)
    # The dataset's own seed: the pool is cut from the same training photographs (make_pool's random streams
    # differ from the dataset's, so no pool image is a training image); other photographs would be new scenes.
    data_seed = int(json.loads((workdir / "synth" / "synth.json").read_text())["seed"])
    pool = make_pool(workdir / f"drift-pool-{data_seed}", "train", sc.per_class, data_seed, families=list(GENERATORS), progress=False)
    order, onset = stream_order(pool, sc)
    TOPICS.create(servers.bootstrap_servers, 1)
    create_topics(servers.bootstrap_servers, [DRIFT_TOPIC], 1)
    port = free_port()
    env = worker_env(
        servers,
        TOPICS,
        bundle,
        inherit_settings=True,
        AIGIS_DRIFT_TOPIC=DRIFT_TOPIC,
        AIGIS_DRIFT_WINDOW_IMAGES=str(sc.window_images),
        AIGIS_DRIFT_MIN_IMAGES=str(sc.min_images),
        AIGIS_DRIFT_EVAL_EVERY=str(sc.eval_every),
        AIGIS_METRICS_PORT=str(port),
        AIGIS_SESSION_TIMEOUT_MS="3000",
        AIGIS_HEARTBEAT_INTERVAL_MS="1000",
    )
    log_path = workdir / "worker-drift.log"
    log_path.unlink(missing_ok=True)
    print(
        f"\n[demo] drift: a worker serving {bundle.name} (never saw {sc.unseen}), window {sc.window_images} images, judged every"
        f" {sc.eval_every} once it holds {sc.min_images}; {onset} known images (real + the other families), then {sc.unseen}"
        f" fakes at {sc.share:.0%} of the stream. Drift topic {DRIFT_TOPIC}, logs {log_path}"
    )
    print(f"{'images':>7} {'phase':<16} {sc.unseen + ' in window':>16} {'novelty rate / thr':>19} {'uncertain / thr':>16} {'score PSI / thr':>16}")
    print("-" * 96)
    consumer = KafkaConsumer(bootstrap_servers=servers.bootstrap_servers.split(","), enable_auto_commit=False)
    consumer.assign([TopicPartition(DRIFT_TOPIC, 0)])
    consumer.seek_to_beginning()
    worker = start_worker(env, log_path)
    sent = 0
    fired: DriftReport | None = None
    false_alarms: list[DriftReport] = []
    recent: list[bool] = []  # is the image the unseen family's, for the last window_images images
    try:
        with OutputReader(servers.bootstrap_servers, TOPICS) as reader:
            while sent < len(order) and fired is None:
                chunk = order[sent : sent + sc.eval_every]
                items = [(f"drift-{sent + i}".encode(), p.read_bytes(), [("content-type", b"image/png")]) for i, p in enumerate(chunk)]
                publish(servers.bootstrap_servers, TOPICS.uploads, items)
                missing = reader.wait_for_keys({k.decode() for k, _, _ in items}, 120, worker)
                if missing:
                    raise SystemExit(f"[demo] FAILED: drift scenario got no outcome for {len(missing)} images (worker exit code {worker.poll()})")
                sent += len(chunk)
                recent = (recent + [p.parent.parent.name == sc.unseen and p.parent.name == "1_fake" for p in chunk])[-sc.window_images :]
                gauges = _drift_gauges(port)
                alarms = _alarms(consumer)
                deadline = time.monotonic() + 5
                in_alarm = any(v > t for v, t in gauges.values())
                while in_alarm and not alarms and time.monotonic() < deadline:  # the report follows the gauge
                    alarms = _alarms(consumer)
                phase = "known" if sent <= onset else f"+{sc.unseen} {sc.share:.0%}"
                print(
                    f"{sent:>7} {phase:<16} {sum(recent):>16} {_fmt(gauges, ('novelty_rate', 'embedding'), True):>19}"
                    f" {_fmt(gauges, ('uncertain_rate', 'score'), True):>16} {_fmt(gauges, ('score_shift', 'score'), False):>16}"
                )
                for report in alarms:
                    if sent <= onset:
                        false_alarms.append(report)
                        print(f"        false alarm before the new family: {report.message}")
                    elif fired is None:
                        fired = report
    finally:
        stop(worker)
        consumer.close()
    after = sent - onset
    unseen_sent = sum(1 for p in order[onset:sent] if p.parent.parent.name == sc.unseen and p.parent.name == "1_fake")
    result: dict[str, Any] = {
        "fired": fired,
        "images_until_alarm": after if fired else None,
        "unseen_until_alarm": unseen_sent,
        "false_alarms": len(false_alarms),
    }
    if fired is None:
        print(f"[demo] drift: no alarm in {after} images after {sc.unseen} arrived ({unseen_sent} of them {sc.unseen}); see {log_path}")
        return result
    print(
        f"\n[demo] DriftReport on {DRIFT_TOPIC}: {fired.status.value} {fired.statistic.value}:{fired.signal} = {fired.value:.4f}"
        f" > threshold {fired.threshold:.4f}" + (f" (reference expects {fired.expected:.4f})" if fired.expected is not None else "")
    )
    print(f"       {fired.message}")
    print(
        f"[demo] drift fired {after} images after the first {sc.unseen} image ({unseen_sent} of them {sc.unseen}; to within"
        f" {sc.eval_every} images, the judging interval), {len(false_alarms)} alarm(s) on the known stream; {time.time() - t0:.0f}s."
    )
    return result
