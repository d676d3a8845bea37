"""``make demo``: the whole system on one machine, end to end, in a couple of minutes.

Starts a throwaway Kafka-compatible broker and redis-server, builds (or reuses)
a demo bundle on the project's tiny open_clip config, publishes real
photographs that scikit-image ships, images the project makes and a few
corrupt files, runs one worker process, prints a table of verdicts and dead
letters, publishes the same images again to show them served from the cache,
ends with a drift scenario (:mod:`export.demo_drift`: a generator family the
model never saw, and the worker's drift alarm), and shuts everything down.

It lives in ``export`` because it is the one place allowed to use both sides:
it builds a bundle (PyTorch) and runs the worker (as a separate process, the
way it runs in production). It is development tooling, so it drives the worker
with the same harness as the integration tests and the benchmarks
(:mod:`devkit.harness`); ``export``'s training and export modules never import
``devkit``.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from devkit.harness import OutputReader, Topics, publish, start_worker, stop, worker_env
from devkit.servers import dev_servers
from export import demo_provenance
from export.demo_drift import run_drift_scenario
from export.photos import load_rgb, photo_paths

#: Fixed names, so a user can watch them with any Kafka client while the demo runs.
TOPICS = Topics("demo.uploads", "demo.verdicts", "demo.dead-letters", "demo-workers")


@dataclass
class DemoUpload:
    upload_id: str
    kind: str  # photo | held-out real | held-out fake | made | corrupt
    value: bytes
    headers: list[tuple[str, bytes]]
    key: bytes | None


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def made_images(seed: int = 7) -> dict[str, bytes]:
    """Images the project makes: smooth gradients, a checkerboard-upsampled texture, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:320, 0:480].astype(np.float32)
    gradient = np.stack([xx / 480 * 255, yy / 320 * 255, (xx + yy) / 800 * 255], -1).astype(np.uint8)
    low = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    upsampled = np.kron(low, np.ones((8, 8, 1), dtype=np.uint8))  # nearest-neighbour upsampling: blocky
    noise = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    return {
        "made-gradient": _png(Image.fromarray(gradient)),
        "made-blocky": _jpeg(Image.fromarray(upsampled)),
        "made-noise": _png(Image.fromarray(noise)),
    }


def corrupt_files(photo: bytes) -> dict[str, bytes]:
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # 400 MP of zeros compresses to ~50 KB
    return {
        "corrupt-truncated-jpeg": photo[: len(photo) // 4],
        "corrupt-not-an-image": b"this is a text file, not an image\n",
        "corrupt-png-bomb": bomb.getvalue(),
    }


def build_uploads(round_tag: str, workdir: Path, count: int = 0) -> list[DemoUpload]:
    uploads: list[DemoUpload] = []
    paths = photo_paths()
    if count:
        paths = paths[:count]
    first_photo = b""
    for i, path in enumerate(paths):
        data = _jpeg(load_rgb(path))
        first_photo = first_photo or data
        uid = f"{round_tag}-photo-{path.stem}"
        if i % 3 == 2:  # every third as a JSON UploadEvent, to show both wire formats
            doc = {"upload_id": uid, "tenant": "demo", "image_base64": base64.b64encode(data).decode(), "content_type": "image/jpeg"}
            uploads.append(DemoUpload(uid, "photo", json.dumps(doc).encode(), [("content-type", b"application/json")], None))
        else:
            uploads.append(DemoUpload(uid, "photo", data, [("content-type", b"image/jpeg"), ("tenant", b"demo")], uid.encode()))
    for name, (kind, data) in held_out_synthetic(workdir).items():
        uid = f"{round_tag}-{name}"
        uploads.append(DemoUpload(uid, kind, data, [], uid.encode()))
    for name, data in made_images().items():
        uid = f"{round_tag}-{name}"
        uploads.append(DemoUpload(uid, "made", data, [], uid.encode()))
    for name, data in corrupt_files(first_photo).items():
        uid = f"{round_tag}-{name}"
        uploads.append(DemoUpload(uid, "corrupt", data, [], uid.encode()))
    uploads.extend(demo_provenance.uploads(round_tag, workdir))  # one image per kind of provenance evidence, and each stripped
    return uploads


#: NTF (best on the tiny backbone in the synthetic benchmark) fused with GenDet, whose teacher-student
#: discrepancy shows up in every verdict's ``anomaly`` map.
DEMO_METHODS = ("ntf", "gendet")


def ensure_demo_bundle(workdir: Path) -> Path:
    """Reuse the demo bundle if it verifies, else make synthetic data and train one (about 30 s on 2 cores).

    The heads are NTF and GenDet (the teacher-student anomaly detector), fused in
    log-odds, on the project's tiny random-weight backbone, trained on the
    synthetic benchmark's training split (``python -m export synth``) and
    calibrated for 1% FPR on its validation split. It is a functional model: it learned the synthetic
    generators' traces, and says nothing about real generators.
    """
    from export.cli import main as export_main
    from worker.model.bundle import BundleError, LoadedBundle

    out = workdir / "bundle"
    try:
        bundle = LoadedBundle(out, ["CPUExecutionProvider"])
        if bundle.manifest.calibration.calibrated and (workdir / "synth" / "synth.json").is_file():
            print(f"[demo] reusing bundle {out}")
            return out
    except BundleError:
        pass
    synth = workdir / "synth"
    print(f"[demo] making the synthetic dataset in {synth} (real photo crops + 4 generator families) ...")
    # lossless, as the demo's 48-per-class bundle was sized for (and held_out_synthetic reads *.png); the format-controlled
    # default is what `python -m export benchmark` measures
    export_main(["synth", str(synth), "--train-per-class", "48", "--test-per-class", "2", "--encoding", "png"])
    print(f"[demo] training {' + '.join(DEMO_METHODS)} heads on it and exporting the bundle to {out} ...")
    export_main(
        [
            "bundle",
            str(out),
            "--arch",
            "aigis-tiny",
            "--random-weights",
            "--data",
            str(synth / "train"),
            *[arg for m in DEMO_METHODS for arg in ("--method", m)],
            "--profile",
            "small-data",
            "--cache-dir",
            str(workdir / "embeddings"),
            "--name",
            "aigis-demo",
        ]
    )
    return out


def held_out_synthetic(workdir: Path, per_class: int = 2) -> dict[str, tuple[str, bytes]]:
    """A few held-out synthetic images per generator family, real and fake (never seen in training).

    Real ones are crops of photographs that the training split never used; fake
    ones are the same kind of crops pushed through a generator family.
    """
    out: dict[str, tuple[str, bytes]] = {}
    for gen_dir in sorted((workdir / "synth" / "test").iterdir()):
        for label_dir, kind in (("0_real", "held-out real"), ("1_fake", "held-out fake")):
            for path in sorted((gen_dir / label_dir).glob("*.png"))[:per_class]:
                out[f"synth-{path.stem}"] = (kind, path.read_bytes())
    return out


def print_table(uploads: list[DemoUpload], reader: OutputReader, sent_at: float) -> dict[str, int]:
    print(
        f"{'upload id':<34} {'what it is':<15} {'label':<14} {'score':>7} {'cached':<7} {'latency ms':>10} {'attribution':<24}  {'decided_by':<10} provenance"
    )
    print("-" * 155)
    counts: dict[str, int] = {}

    def bump(key: str) -> None:
        counts[key] = counts.get(key, 0) + 1

    for u in uploads:
        out = reader.outputs.get(u.upload_id)  # outputs are keyed by upload id
        if out is None:
            print(f"{u.upload_id:<34} {u.kind:<15} (no outcome)")
            bump("missing")
            continue
        doc = out.doc()
        latency = (out.received_s - sent_at) * 1000
        if out.topic == TOPICS.dead:
            print(f"{u.upload_id:<34} {u.kind:<15} {'DEAD: ' + doc['error_code']:<30} {latency:>10.0f}")
            bump("dead_letter")
            continue
        print(
            f"{u.upload_id:<34} {u.kind:<15} {doc['label']:<14} {doc['score']:>7.4f} {doc['cache']:<7} {latency:>10.0f} {_attribution(doc):<24}  "
            f"{demo_provenance.cell(doc)}"
        )
        bump(doc["label"])
        bump("cache_" + doc["cache"])
        if u.kind.startswith("held-out"):
            truth = "real" if u.kind == "held-out real" else "ai_generated"
            bump("judged")
            if doc["label"] == truth:
                bump("correct")
    return counts


def _attribution(doc: dict) -> str:
    """The verdict's attribution as a cell: family and probability; for ``unknown``, the class it fell short of the threshold with."""
    att = doc.get("attribution")
    if not att:
        return "-"
    if att["family"] == "unknown":
        top = max(att["probabilities"], key=att["probabilities"].__getitem__)
        return f"unknown (~{top})"
    return f"{att['family']} {att['probability']:.2f}"


def run_round(tag: str, bootstrap: str, reader: OutputReader, worker: subprocess.Popen[bytes], workdir: Path, count: int) -> dict[str, int]:
    uploads = build_uploads(tag, workdir, count)
    sent_at = time.time()
    publish(bootstrap, TOPICS.uploads, [(u.key, u.value, u.headers) for u in uploads])
    missing = reader.wait_for_keys({u.upload_id for u in uploads}, 180, worker)
    elapsed = time.time() - sent_at
    counts = print_table(uploads, reader, sent_at)
    summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k not in ("judged", "correct"))
    if counts.get("judged"):
        summary += f"; held-out synthetic images labelled correctly: {counts.get('correct', 0)}/{counts['judged']}"
    print(f"[demo] {tag}: {len(uploads)} uploads -> {len(uploads) - len(missing)} outcomes in {elapsed:.1f}s ({summary})")
    if missing:
        raise SystemExit(f"[demo] FAILED: no outcome for {sorted(missing)} (worker exit code {worker.poll()})")
    return counts


def run_demo(workdir: Path = Path(".aigis/demo"), count: int = 0) -> int:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    bundle = ensure_demo_bundle(workdir)
    manifest = json.loads((bundle / "manifest.json").read_text())
    with dev_servers(workdir / "servers") as servers:
        print(f"[demo] broker {servers.bootstrap_servers}, redis {servers.redis_url}")
        TOPICS.create(servers.bootstrap_servers, 3)
        # The user's own AIGIS_* settings pass through (e.g. AIGIS_MAX_BATCH=8 make demo); the demo's topics, servers and bundle win.
        env = worker_env(
            servers,
            TOPICS,
            bundle,
            inherit_settings=True,
            AIGIS_SESSION_TIMEOUT_MS="3000",
            AIGIS_HEARTBEAT_INTERVAL_MS="1000",
            AIGIS_PROVIDERS="CUDAExecutionProvider,CPUExecutionProvider",
            **demo_provenance.worker_env(workdir),
        )
        log_path = workdir / "worker.log"
        log_path.unlink(missing_ok=True)
        print(f"[demo] starting one worker (logs: {log_path})")
        worker = start_worker(env, log_path)
        try:
            with OutputReader(servers.bootstrap_servers, TOPICS) as reader:
                print("\n[demo] round 1: real photographs, held-out synthetic real/fake images, images we made, corrupt files")
                run_round("r1", servers.bootstrap_servers, reader, worker, workdir, count)
                print("\n[demo] round 2: the same images again under new upload ids (served from the Redis cache)")
                counts = run_round("r2", servers.bootstrap_servers, reader, worker, workdir, count)
        finally:
            stop(worker)
        drift = run_drift_scenario(workdir, servers)
    print()
    if not manifest["calibration"]["calibrated"]:
        print("[demo] NOTE: this demo bundle's head is untrained and uncalibrated: the labels and scores above show the")
        print("       plumbing (decode, batching, cache, dead letters), not a detection result.")
    else:
        cal = manifest["calibration"]
        print(
            f"[demo] bundle {manifest['name']} ({', '.join(h['method'] for h in manifest['heads'])}, tiny random-weight backbone) trained on the"
            f" synthetic benchmark; threshold {cal['threshold']:.4f} for FPR {cal['target_fpr']:.0%}, uncertain band"
            f" [{cal['uncertain_low']:.4f}, {cal['uncertain_high']:.4f})."
        )
        print("       'photo' rows are whole photographs, a different distribution from the 224-px crops it trained on.")
        print("       It learned the synthetic generators' traces: a functional check of the whole path, not evidence about real generators.")
    if manifest.get("attribution"):
        thr = manifest["attribution"]["unknown_threshold"]
        print(f"       'attribution': the generator family the image resembles and its probability; 'unknown' (~ the top class) below {thr:.7g}.")
    fired = f"after {drift['images_until_alarm']} images of the new family's stream" if drift["fired"] else "did not fire"
    print(f"[demo] round 2 cache hits: {counts.get('cache_hit', 0)}; drift alarm {fired}; done in {time.time() - t0:.0f}s; broker, Redis and workers stopped.")
    return 0
