"""The stated memory bound: a worker at default settings keeps its peak RSS under MEMORY_BOUND through the hostile corpus.

A real worker process (default decode threads, batch size, limits) reads every
hostile and odd file devkit.corpus can build, from the real broker; every
record must get exactly one outcome, and the worker's high-water mark of
resident memory (``VmHWM`` in /proc/<pid>/status, which counts Pillow's and
ONNX Runtime's C allocations too) must stay under the bound. The bound and how
it was measured are in the README's hostile-input section.

What dominates the peak: the largest legitimate images (36 to 40 MP: up to
160 MB decoded for a float or RGBA image, 120 MB as RGB) on each of the two
decode threads at once, on top of the process's resting size (ONNX Runtime,
the bundle, Kafka client buffers). Before the fixes this corpus needed tens of
gigabytes (one 15 KB PNG alone asked for 36 GB).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from devkit import corpus
from devkit.harness import OutputReader, Topics, publish, start_worker, stop, worker_env

#: The stated bound for a worker at default settings on this machine (x86_64, 2 cores), in bytes.
MEMORY_BOUND = 1536 * 1024 * 1024
pytestmark = pytest.mark.slow


def _hostile_corpus() -> dict[str, bytes]:
    """Every class of costly or hostile file, at the sizes that cost the most under the default limits (10 MiB, 40 MP)."""
    files: dict[str, bytes] = {}
    files.update({f"ok-{k}": v for k, v in corpus.accepted_files().items()})
    files.update({f"truncated-{k}": v[: len(v) // 2] for k, v in corpus.accepted_files().items()})
    files.update({f"refused-{k}": v for k, v in corpus.unsupported_files().items()})
    files["refused-eps-8mb"] = corpus.eps_padded()
    # pixel bombs and metadata bombs
    files["bomb-png-header"] = corpus.png_header_only(50000, 50000)
    files["bomb-png-39mp-flat"] = corpus.png_grey_flat(6300, 6300)  # legal: 39.7 MP, decoded for real
    files["bomb-gif-frame"] = corpus.gif_frame_bomb()
    files["bomb-webp-canvas"] = corpus.webp_canvas_bomb()
    files["bomb-tiff-pixels"] = corpus.tiff_pixel_bomb()
    files["bomb-png-ztxt"] = corpus.png_ztxt_bomb()
    files["bomb-png-iccp"] = corpus.png_iccp_bomb()
    files["bomb-jpeg-scans"] = corpus.jpeg_scan_bomb(side=2000, extra_scans=1000)
    files["jpeg-36mp-99-scans"] = corpus.jpeg_scan_bomb(side=6000, extra_scans=88)  # just under the scan limit: decoded
    files["jpeg-sos-in-metadata"] = corpus.jpeg_with_sos_bytes_in_metadata()
    # extreme aspect ratios
    files["thin-png-wide"] = corpus.png_thin()
    files["thin-png-tall"] = corpus.png_thin(8, 1_900_000)
    files["thin-jpeg"] = corpus.jpeg_thin()
    files["thin-gif"] = corpus.gif_thin()
    # tiles and strips
    files["tiff-shared-tiles"] = corpus.tiff_shared_tiles()
    files["tiff-many-tiles"] = corpus.tiff_tiled(6000, 6000, 16, shared=False)
    files["tiff-honest-tiles-36mp"] = corpus.tiff_tiled(6000, 6000, 512, shared=False)
    # bit depths and alpha at 36 MP
    for mode in ("I;16", "I", "F"):
        files[f"deep-{mode}-36mp"] = corpus.tiff_flat(mode, 6000, 6000)
    for mode in ("RGBA", "LA"):
        files[f"alpha-{mode}-36mp"] = corpus.save(Image.new(mode, (6000, 6000), 0), "PNG")
    files["rgb-jpeg-39mp"] = corpus.save(Image.new("RGB", (6300, 6300), (10, 20, 30)), "JPEG")
    # HEIF and AVIF containers
    for fmt in ("AVIF", "HEIF"):
        files[f"{fmt}-grid-shared"] = corpus.heif_grid(fmt, 90, 90, shared=True)
        files[f"{fmt}-grid-too-many"] = corpus.heif_grid(fmt, 40, 40)
        files[f"{fmt}-declared-50000"] = corpus.heif_declared_size(fmt, 50000, 50000)
        files[f"{fmt}-grid-ok"] = corpus.heif_grid(fmt, 4, 4)
    files["garbage"] = b"\x00\x01 not an image at all" * 100
    # payloads at the byte limit, which the pipeline holds while records are in flight (incompressible noise)
    for i in range(12):
        files[f"payload-9mb-{i}"] = corpus.save(corpus.noise_image(1800, 1800, seed=100 + i), "PNG", compress_level=1)
    too_big = [k for k, v in files.items() if len(v) > 10 * 1024 * 1024]
    assert not too_big, f"corpus files over the default byte limit (they would test nothing): {too_big}"
    return files


def _status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def test_peak_rss_of_a_default_worker_under_the_hostile_corpus_stays_under_the_bound(servers, tiny_bundle: Path, tmp_path: Path) -> None:
    files = _hostile_corpus()
    topics = Topics.fresh(servers.bootstrap_servers, partitions=1)
    # default settings; only the cache is off, so that every file is decoded by this worker
    env = worker_env(servers, topics, tiny_bundle, AIGIS_REDIS_URL="")
    harness_only = {*topics.env(), "AIGIS_BOOTSTRAP_SERVERS", "AIGIS_REDIS_URL", "AIGIS_BUNDLE", "AIGIS_PROVIDERS", "AIGIS_LOG_LEVEL"}
    harness_only |= {"AIGIS_SESSION_TIMEOUT_MS", "AIGIS_HEARTBEAT_INTERVAL_MS"}
    env = {k: v for k, v in env.items() if not k.startswith("AIGIS_") or k in harness_only}  # nothing else from the caller's environment
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    reader = OutputReader(servers.bootstrap_servers, topics)
    try:
        # warm up: the resting size, once the bundle is loaded and the first batch went through
        publish(servers.bootstrap_servers, topics.uploads, [(b"warm-up", corpus.save(corpus.noise_image(), "JPEG"), [])])
        assert reader.wait_for_ids({"warm-up"}, 90, proc) == set(), log.read_text()[-3000:]
        resting = _status_bytes(proc.pid, "VmRSS")
        publish(servers.bootstrap_servers, topics.uploads, [(name.encode(), data, []) for name, data in files.items()])
        missing = reader.wait_for_ids(set(files), 240, proc)
        assert proc.poll() is None, "worker died on the hostile corpus:\n" + log.read_text()[-3000:]
        peak = _status_bytes(proc.pid, "VmHWM")
        time.sleep(0.5)
        reader.poll(500)
    finally:
        stop(proc)
        reader.close()
    assert not missing, f"no outcome for {sorted(missing)}\n" + log.read_text()[-3000:]
    outcomes: dict[str, int] = {}
    for doc in reader.verdicts + reader.dead:
        outcomes[doc["upload_id"]] = outcomes.get(doc["upload_id"], 0) + 1
    assert {k: v for k, v in outcomes.items() if k in files and v != 1} == {}, "some records got more than one outcome"
    codes = {d["upload_id"]: d["error_code"] for d in reader.dead}
    total = sum(len(v) for v in files.values())
    print(f"\nresting RSS {resting / 2**20:.0f} MiB, peak RSS (VmHWM) {peak / 2**20:.0f} MiB", end=" ")
    print(f"over {len(files)} hostile records ({total / 2**20:.0f} MiB of payloads); bound {MEMORY_BOUND / 2**20:.0f} MiB")
    print("dead-letter codes:", dict(sorted(codes.items())))
    assert peak < MEMORY_BOUND, f"peak RSS {peak / 2**20:.0f} MiB over the stated bound {MEMORY_BOUND / 2**20:.0f} MiB (resting {resting / 2**20:.0f} MiB)"
