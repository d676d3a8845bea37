"""Model rollout: hot swap without a restart (manifest watch and SIGHUP), refusal of a broken bundle, shadow scores.

The shadow bundle here is the primary's graphs with an operating point that
calls everything "real", so a verdict whose label is not "real" shows the
shadow never decides the label, while its score still rides along.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from devkit.bundles import copy_bundle, rewrite_manifest
from devkit.harness import OutputReader, Topics, log_events, publish, raw_records, start_worker, stop, wait_until, worker_env
from devkit.images import unique_jpegs
from worker.config import WorkerConfig
from worker.model.bundle import LoadedBundle, read_manifest
from worker.model.policy import decide
from worker.model.rollout import Rollout, bundle_loader


def _everything_real(doc: dict) -> None:
    doc["name"] = "shadow-tiny"
    doc["calibration"].update(threshold=1.0, uncertain_low=1.0, uncertain_high=1.0)


def test_shadow_scores_ride_along_and_sighup_swaps_the_bundle_without_restart(servers, tiny_bundle: Path, tmp_path: Path) -> None:
    primary = copy_bundle(tiny_bundle, tmp_path / "primary")
    shadow = copy_bundle(tiny_bundle, tmp_path / "shadow")
    shadow_sha = rewrite_manifest(shadow, _everything_real)
    sha1 = read_manifest(primary)[1]
    calibration = read_manifest(primary)[0].calibration

    topics = Topics.fresh(servers.bootstrap_servers, partitions=2)
    env = worker_env(servers, topics, primary, AIGIS_SHADOW_BUNDLE=str(shadow), AIGIS_BUNDLE_WATCH_INTERVAL_S="0")  # SIGHUP only
    log = tmp_path / "worker.log"
    reader = OutputReader(servers.bootstrap_servers, topics)
    proc = start_worker(env, log)
    images = unique_jpegs(18, seed=11)
    try:
        first = raw_records("v1", images[:6])
        publish(servers.bootstrap_servers, topics.uploads, first)
        assert reader.wait_for_ids({k.decode() for k, _, _ in first}, 90, proc) == set()
        v1 = [d for d in reader.verdicts if d["upload_id"].startswith("v1-")]
        assert {d["bundle"]["sha256"] for d in v1} == {sha1}
        for d in v1:
            assert d["shadow"]["bundle"]["sha256"] == shadow_sha and d["shadow"]["bundle"]["name"] == "shadow-tiny"
            assert d["shadow"]["label"] == "real"
            assert abs(d["shadow"]["score"] - d["score"]) < 1e-6  # same graphs, so the same score
            assert d["label"] == decide(d["score"], calibration).value  # the label is the primary's
        assert any(d["label"] != "real" for d in v1), "every primary label was 'real' too: the test shows nothing about the shadow"
        assert sum(e.get("event") == "shadow_score" for e in log_events(log)) >= 6

        # A new version appears; without SIGHUP (watch off) nothing changes...
        sha2 = rewrite_manifest(primary, lambda doc: doc.update(version="0.2.0"))
        second = raw_records("v2", images[6:12])
        publish(servers.bootstrap_servers, topics.uploads, second)
        assert reader.wait_for_ids({k.decode() for k, _, _ in second}, 90, proc) == set()
        assert {d["bundle"]["sha256"] for d in reader.verdicts if d["upload_id"].startswith("v2-")} == {sha1}

        # ...SIGHUP swaps it in, same process.
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: any(e.get("event") == "bundle_swapped" for e in log_events(log)), 60, "the swap")
        third = raw_records("v3", images[12:])
        publish(servers.bootstrap_servers, topics.uploads, third)
        assert reader.wait_for_ids({k.decode() for k, _, _ in third}, 90, proc) == set()
        v3 = [d for d in reader.verdicts if d["upload_id"].startswith("v3-")]
        assert {(d["bundle"]["sha256"], d["bundle"]["version"]) for d in v3} == {(sha2, "0.2.0")}
        assert {d["cache"] for d in v3} == {"miss"}  # a new bundle never serves the old one's cached scores
        assert proc.poll() is None
    finally:
        stop(proc)
        reader.close()


def test_manifest_watch_swaps_a_good_bundle_and_refuses_a_broken_one(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path / "watched")
    cfg = WorkerConfig(bundle=bundle, providers="CPUExecutionProvider", bundle_watch_interval_s=0.2)
    rollout = Rollout(bundle, None, bundle_loader(cfg.provider_list), cfg.bundle_watch_interval_s)
    swaps: list[LoadedBundle] = []

    def swapped() -> bool:
        now = rollout.current().primary
        if now.sha256 != (swaps[-1] if swaps else first).sha256:
            swaps.append(now)
        return bool(swaps)

    first = rollout.current().primary
    with rollout:
        sha_bad = rewrite_manifest(bundle, lambda doc: doc["files"].update({"backbone.onnx": "0" * 64}))
        time.sleep(1.0)
        assert not swapped() and rollout.current().primary.sha256 == read_manifest(tiny_bundle)[1], "a bundle that fails verification must not be swapped in"

        sha_good = rewrite_manifest(bundle, lambda doc: doc.update(version="0.3.0"))
        assert sha_good != sha_bad
        # the restored file hashes make the bundle valid again; the watcher retries with backoff and picks it up
        rewrite_manifest(bundle, lambda doc: doc["files"].update(read_manifest(tiny_bundle)[0].files))
        wait_until(swapped, 30, "the watcher to swap in the repaired bundle")
        assert swaps[-1].ref.version == "0.3.0" and rollout.current().primary is swaps[-1]
