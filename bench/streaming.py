"""Benchmarks 3-6: the worker end to end through the real broker (Tansu) and redis-server.

3 ``streaming``: worker throughput on unique images with the cache off, vs the
  same bundle scoring the same files offline (``worker.score.score_files``, the
  code behind ``python -m worker score``). Target: streaming >= 0.9 x offline.
4 ``baseline``: the consumer a user would write (kafka-python, one message at a
  time, open_clip in PyTorch eager; :mod:`bench.naive_consumer`) vs the aigis
  worker on the same weights and images. Target: aigis >= 3x.
5 ``cache``: an all-duplicate stream of ~50 KB JPEGs (every verdict a Redis
  hit) vs a bare kafka-python loop (consume, sha256, produce, commit;
  :mod:`bench.bare_loop`) measured in the same run as the ceiling, and a
  sampling profile (py-spy, every thread) of the worker on that stream.
  Targets: >= 2,000 verdicts/s and >= half the bare loop.
6 ``latency``: p50/p99 from produce to verdict at a fixed offered load (50 %
  and 90 % of the capacity measured in the same run) for two ``--max-wait-ms``.

Every run gets fresh topics; the broker and Redis are started by
:func:`devkit.servers.dev_servers` (``AIGIS_TEST_KAFKA`` / ``AIGIS_TEST_REDIS``
point at existing ones). Workers, the naive consumer and the bare loop are
driven and read through :mod:`devkit.harness`, as the integration tests drive
them. Rates come from output record timestamps (:func:`bench.stats.steady_rate`).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.artifacts import CACHE, ensure_bundle, ensure_variant, jpeg_near_size, photo_jpegs, with_comment
from bench.machine import pin_process, settle_cpu, usable_cpus
from bench.options import Options
from bench.profiling import Profiler, available_py_spy, library_share, summarize_profile
from bench.results import BenchResult
from bench.stats import latency_stats, steady_rate, summarize
from devkit.harness import (
    ROOT,
    OutputReader,
    Topics,
    create_topics,
    http_get,
    open_producer,
    publish,
    series,
    settings_env,
    start_module,
    start_worker,
    stop,
    worker_env,
)
from devkit.servers import DevServers, dev_servers, free_port
from worker.config import WorkerConfig, env_var_names

PROFILES = CACHE / "profiles"
#: max-batch of the tuned worker row in the cache benchmark.
TUNED_BATCH = 256


def _stream_reps(opts: Options) -> int:
    return 1 if opts.quick else max(1, min(3, opts.reps))


def _arch_seed(arch: str) -> int:
    return sum(arch.encode())


#: Worker processes stop within this (SIGTERM drains; SIGKILL after it).
STOP_S = 60.0


def _providers() -> str:
    from bench.machine import gpus

    return "CUDAExecutionProvider,CPUExecutionProvider" if gpus() else "CPUExecutionProvider"


def _env(r: BenchResult, opts: Options, servers: DevServers, topics: Topics, bundle: Path, cache: bool = False, **settings: Any) -> dict[str, str]:
    """The harness's worker environment with the cache on or off and ``settings`` (by config field name) on top.

    Settings the installed worker does not know are dropped with a note rather
    than passed (its config forbids unknown fields).
    """
    env = worker_env(
        servers, topics, bundle, AIGIS_REDIS_URL=servers.redis_url if cache else "", AIGIS_LOG_LEVEL=opts.worker_log_level, AIGIS_PROVIDERS=_providers()
    )
    known, dropped = settings_env({**settings, **opts.worker_env})
    env.update(known)
    for var in dropped:
        msg = f"the installed worker has no setting {var}; it was not passed"
        if msg not in r.notes:
            r.note(msg)
    names = env_var_names() - {"AIGIS_BOOTSTRAP_SERVERS"}
    r.config.setdefault("worker_settings", {k: v for k, v in env.items() if k in names})
    return env


def warmup_items(arch: str, tag: str, n: int = 32) -> list[tuple[bytes, bytes]]:
    """A batch of distinct images the worker scores before the measured ones (first-run allocations, thread start-up)."""
    return [(f"warm-{tag}-{i}".encode(), v) for i, v in enumerate(photo_jpegs(n, seed=_arch_seed(arch) + 99))]


def run_worker_once(
    r: BenchResult,
    opts: Options,
    servers: DevServers,
    topics: Topics,
    bundle: Path,
    items: list[tuple[bytes, bytes]],
    log: Path,
    timeout_s: float,
    warmup: list[tuple[bytes, bytes]] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Start a worker, let it score ``warmup``, then publish ``items`` at once and time them; stop it.

    The measured items arrive as a burst faster than any bundle here scores
    them, so the worker works on a backlog; the rate covers the first pick-up
    of a measured item to its last verdict (output timestamps and timings).
    """
    keys = {k.decode() for k, _ in items}
    boot = servers.bootstrap_servers
    worker = start_worker(_env(r, opts, servers, topics, bundle, **settings), log)
    reader = OutputReader(boot, topics)
    try:
        if warmup:
            publish(boot, topics.uploads, warmup)
            reader.require({k.decode() for k, _ in warmup}, timeout_s, worker, log)
        publish(boot, topics.uploads, items)
        reader.require(keys, timeout_s, worker, log)
    finally:
        stop(worker, timeout=STOP_S)
        reader.close()
    outs = [reader.outputs[k] for k in keys]
    dead = [o for o in outs if o.topic == topics.dead]
    if dead:
        codes = Counter(json.loads(o.value).get("error_code") for o in dead)
        r.note(f"{len(dead)} dead letters in a benchmark run ({dict(codes)}): the rate counts them as outcomes")
    starts = []
    for o in outs:
        if o.topic == topics.verdicts:
            try:
                starts.append(o.timestamp_ms - float(json.loads(o.value)["timings"]["total_ms"]))
            except (ValueError, KeyError, TypeError):
                pass
    rate = steady_rate([o.timestamp_ms for o in outs], starts_ms=starts)
    rate["duplicates"] = float(reader.duplicates)
    rate["_values"] = {o.key: o.value for o in outs if o.topic == topics.verdicts}
    return rate


# -- 3: streaming vs offline -------------------------------------------------------------------


def run_streaming(opts: Options) -> BenchResult:
    r = BenchResult("streaming", "Streaming overhead: the worker through the real broker vs the same bundle offline", opts.quick)
    reps = _stream_reps(opts)
    r.config.update(archs=opts.stream_archs, images=opts.stream_images, reps=reps, cache="off (AIGIS_REDIS_URL empty)", partitions=2)
    with dev_servers() as servers, tempfile.TemporaryDirectory(prefix="aigis-bench-") as tmp:
        for arch in opts.stream_archs:
            bundle = ensure_bundle(arch)
            n = opts.stream_images[arch]
            images = photo_jpegs(n, seed=_arch_seed(arch))
            folder = Path(tmp) / arch
            folder.mkdir()
            for i, data in enumerate(images):
                (folder / f"img-{i:05d}.jpg").write_bytes(data)
            r.config.setdefault("image_kb_mean", {})[arch] = round(statistics.mean(len(d) for d in images) / 1024, 1)

            print(f"  {arch}: offline scoring of {n} images ...", flush=True)
            cmd = [sys.executable, "-m", "bench.offline", str(folder), "--bundle", str(bundle), "--reps", str(max(reps, 2))]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise RuntimeError(f"offline scorer failed:\n{done.stderr[-3000:]}")
            offline = json.loads(done.stdout.strip().splitlines()[-1])
            off_rates = [offline["images"] / s for s in offline["seconds"]]

            stream_rates, middle = [], []
            for rep in range(reps):
                topics = Topics.fresh(servers.bootstrap_servers, 2)
                items = [(f"{arch}-{rep}-{i}".encode(), v) for i, v in enumerate(images)]
                print(f"  {arch}: streaming run {rep + 1}/{reps} ...", flush=True)
                log = Path(tmp) / f"worker-{arch}-{rep}.log"
                res = run_worker_once(r, opts, servers, topics, bundle, items, log, 120 + n * 2.0, warmup_items(arch, f"s{rep}"))
                stream_rates.append(res["rate"])
                middle.append(res["middle80_rate"])
            off = summarize(off_rates)
            st = summarize(stream_rates)
            ratio = st["median"] / off["median"]
            r.add(arch=arch, mode="offline (worker.score.score_files)", images=n, images_per_s=off, ratio_to_offline=1.0)
            r.add(arch=arch, mode="streaming (python -m worker)", images=n, images_per_s=st, middle80_rate=summarize(middle)["median"], ratio_to_offline=ratio)
            print(f"  {arch}: offline {off['median']:.1f} img/s, streaming {st['median']:.1f} img/s, ratio {ratio:.2f}", flush=True)
            r.target(f"streaming / offline ({arch})", ">= 0.9", ratio, 0.9)
            for settings in opts.stream_sweep:
                label = ", ".join(f"AIGIS_{k.upper()}={v}" for k, v in settings.items())
                print(f"  {arch}: streaming with {label} ...", flush=True)
                topics = Topics.fresh(servers.bootstrap_servers, 2)
                items = [(f"{arch}-sweep-{label}-{i}".encode(), v) for i, v in enumerate(images)]
                log = Path(tmp) / f"worker-{arch}-sweep.log"
                res = run_worker_once(r, opts, servers, topics, bundle, items, log, 120 + n * 2.0, warmup_items(arch, "sweep"), **settings)
                r.add(arch=arch, mode=f"streaming, {label}", images=n, images_per_s=summarize([res["rate"]]), ratio_to_offline=res["rate"] / off["median"])
                print(f"  {arch}: {label}: {res['rate']:.1f} img/s ({res['rate'] / off['median']:.2f} of offline)", flush=True)
    if opts.stream_sweep:
        r.note("rows 'streaming, AIGIS_...' change one worker setting from its default (one run each), to show what thread counts and batch sizes do here")
    return r.finish()


# -- 4: the naive consumer a user would write ----------------------------------------------------


def run_naive_once(bootstrap: str, topics: Topics, arch: str, bundle: Path, keys: set[str], log: Path, timeout_s: float) -> dict[str, Any]:
    from worker.model.bundle import read_manifest

    manifest, _ = read_manifest(bundle)
    out_topic = f"{topics.verdicts}-naive-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [out_topic], 1)
    args = [
        "--bootstrap",
        bootstrap,
        "--topic",
        topics.uploads,
        "--out-topic",
        out_topic,
        "--group",
        f"{topics.group}-naive-{uuid.uuid4().hex[:6]}",
        "--arch",
        arch,
        "--head",
        str(bundle / manifest.heads[0].file),
        "--count",
        str(len(keys)),
    ]
    proc = start_module("bench.naive_consumer", args, log)
    reader = OutputReader(bootstrap, [out_topic])
    try:
        reader.require(keys, timeout_s, proc, log, what="naive consumer")
    finally:
        stop(proc, timeout=STOP_S)
        reader.close()
    outs = [reader.outputs[k] for k in keys]
    res = steady_rate([o.timestamp_ms for o in outs])
    res["_values"] = {o.key: o.value for o in outs}
    return res


def _fp32_limit(arch: str, out: Path) -> float | None:
    """images/s this CPU could do in fp32 at its matmul peak (from the roofline result in ``out``), if measured."""
    from bench.results import load_results

    roof = load_results(out).get("roofline")
    if not roof:
        return None
    row = next((x for x in roof["rows"] if x["arch"] == arch), None)
    return row["limit_images_per_s"] if row else None


def _best_cpu_batch(arch: str, precision: str, out: Path) -> int | None:
    """The batch size at which the backbone benchmark in ``out`` measured ONNX Runtime fastest for ``arch``/``precision``."""
    from bench.results import load_results

    bb = load_results(out).get("backbone")
    if not bb or bb["config"].get("arch") != arch:
        return None
    rows = [x for x in bb["rows"] if x["backend"] == f"ort-cpu-{precision}"]
    return max(rows, key=lambda x: x["images_per_s"]["median"])["batch"] if rows else None


def run_baseline(opts: Options) -> BenchResult:
    r = BenchResult("baseline", "Baseline a user would write: kafka-python + open_clip (PyTorch, one message at a time) vs the aigis worker", opts.quick)
    reps = _stream_reps(opts)
    r.config.update(archs=opts.stream_archs, images=opts.stream_images, reps=reps, cache="off on both sides (unique images)")
    with dev_servers() as servers, tempfile.TemporaryDirectory(prefix="aigis-bench-") as tmp:
        for arch in opts.stream_archs:
            bundle = ensure_bundle(arch)
            int8 = ensure_variant(arch, "int8")
            n = opts.stream_images[arch]
            images = photo_jpegs(n, seed=_arch_seed(arch) + 1)
            rates: dict[str, list[float]] = {"naive": [], "aigis-fp32": [], "aigis-int8": []}
            runs: list[tuple[str, Path, dict[str, str]]] = [("aigis-fp32", bundle, {}), ("aigis-int8", int8, {})]
            best = _best_cpu_batch(arch, "int8", opts.out)
            tuned = f"aigis-int8, AIGIS_MAX_BATCH={best}"
            if best is not None and best != WorkerConfig.model_fields["max_batch"].default:
                # The worker's default batch cap suits small models; the backbone benchmark found this one faster for int8.
                rates[tuned] = []
                runs.append((tuned, int8, {"max_batch": str(best)}))
            agreement: list[float] = []
            for rep in range(reps):
                topics = Topics.fresh(servers.bootstrap_servers, 2)
                keys = [f"{arch}-{rep}-{i}" for i in range(n)]
                items = [(k.encode(), v) for k, v in zip(keys, images, strict=True)]
                publish(servers.bootstrap_servers, topics.uploads, items)
                timeout = 120 + n * 3.0
                print(f"  {arch} rep {rep + 1}/{reps}: naive consumer ...", flush=True)
                naive = run_naive_once(servers.bootstrap_servers, topics, arch, bundle, set(keys), Path(tmp) / f"naive-{arch}-{rep}.log", timeout)
                rates["naive"].append(naive["rate"])
                for label, path, settings in runs:
                    print(f"  {arch} rep {rep + 1}/{reps}: {label} worker ...", flush=True)
                    t = Topics.fresh(servers.bootstrap_servers, 2)  # its own input topic: warm-up first, then the same images
                    log = Path(tmp) / f"{label.split(',')[0]}-{arch}-{rep}-{len(settings)}.log"
                    res = run_worker_once(r, opts, servers, t, path, items, log, timeout, warmup_items(arch, f"{label}{rep}"), **settings)
                    rates[label].append(res["rate"])
                    if label == "aigis-fp32":
                        a = {k: json.loads(v)["score"] for k, v in res["_values"].items()}
                        b = {k: json.loads(v)["score"] for k, v in naive["_values"].items()}
                        agreement.append(max(abs(a[k] - b[k]) for k in a.keys() & b.keys()))
            naive_med = summarize(rates["naive"])["median"]
            for label, xs in rates.items():
                s = summarize(xs)
                r.add(arch=arch, consumer=label, images=n, images_per_s=s, speedup_vs_naive=s["median"] / naive_med)
                print(f"  {arch}: {label:<11} {s['median']:8.1f} img/s  ({s['median'] / naive_med:.2f}x naive)", flush=True)
            r.config.setdefault("max_score_diff_naive_vs_aigis_fp32", {})[arch] = max(agreement)
            fp32 = summarize(rates["aigis-fp32"])["median"] / naive_med
            r.target(f"aigis fp32 / naive ({arch})", ">= 3x", fp32, 3.0, "x")
            r.target(f"aigis int8 / naive ({arch})", ">= 3x", summarize(rates["aigis-int8"])["median"] / naive_med, 3.0, "x")
            if tuned in rates:
                r.target(f"aigis int8, AIGIS_MAX_BATCH={best} / naive ({arch})", ">= 3x", summarize(rates[tuned])["median"] / naive_med, 3.0, "x")
                r.note(f"{arch}: the row '{tuned}' sets the worker's batch cap to the int8 backbone's best batch size in the backbone benchmark")
            limit = _fp32_limit(arch, opts.out)
            if limit is not None and 3 * naive_med > limit:
                r.note(
                    f"{arch}: 3x the naive consumer would be {3 * naive_med:.1f} images/s, above this CPU's fp32 limit of {limit:.1f} images/s "
                    f"(roofline: matmul peak / FLOPs per image); the naive consumer is already compute-bound, so in fp32 no runtime can reach 3x here, "
                    "and the int8 variant is the route"
                )
    r.note(
        "score agreement (max |aigis - naive| per image): both decode every JPEG in full (the benchmark bundle is built without "
        "--allow-draft), so what is left is float rounding between ONNX Runtime and PyTorch"
    )
    r.note(
        "PyTorch's OpenMP threads slow down sharply when another process takes one of the two cores (see the spread of the torch rows "
        "in the backbone table): on a shared machine the naive consumer's rate varies several-fold between runs"
    )
    return r.finish()


# -- 5: cache path --------------------------------------------------------------------------------


def _bare_once(bootstrap: str, uploads: str, count: int, max_records: int, log: Path, timeout_s: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    out_topic = f"bench-bare-out-{tag}"
    create_topics(bootstrap, [out_topic], 1)
    args = [
        "--bootstrap",
        bootstrap,
        "--topic",
        uploads,
        "--out-topic",
        out_topic,
        "--group",
        f"bench-bare-{tag}",
        "--count",
        str(count),
        "--max-records",
        str(max_records),
    ]
    proc = start_module("bench.bare_loop", args, log)
    reader = OutputReader(bootstrap, [out_topic], keep_values=False)
    try:
        reader.require({f"dup-{i}" for i in range(count)}, timeout_s, proc, log, what="bare loop")
    finally:
        stop(proc, timeout=STOP_S)
        reader.close()
    return steady_rate([o.timestamp_ms for o in reader.outputs.values()])


def run_cache(opts: Options) -> BenchResult:
    r = BenchResult("cache", "Cache path: all-duplicate stream of ~50 KB JPEGs, worker vs a bare kafka-python loop", opts.quick)
    n = opts.cache_messages
    reps = _stream_reps(opts)
    distinct = [jpeg_near_size(50_000, seed=i) for i in range(8)]
    r.config.update(messages=n, distinct_images=len(distinct), image_kb=[round(len(d) / 1024, 1) for d in distinct], reps=reps, partitions=2)
    bundle = ensure_bundle("aigis-tiny")
    with dev_servers() as servers, tempfile.TemporaryDirectory(prefix="aigis-bench-") as tmp:
        boot = servers.bootstrap_servers
        uploads = Topics.fresh(boot, 2).uploads
        keys = [f"dup-{i}" for i in range(n)]
        print(f"  publishing {n} duplicate uploads ...", flush=True)
        publish(boot, uploads, [(k.encode(), distinct[i % len(distinct)]) for i, k in enumerate(keys)])

        def worker_run(label: str, log_level: str, profile: Path | None = None, **settings: Any) -> dict[str, Any]:
            t = Topics.fresh(boot, 2, uploads=uploads)  # every worker run reads the same backlog with its own group and outputs
            env = _env(r, opts, servers, t, bundle, cache=True, **settings)
            env["AIGIS_LOG_LEVEL"] = log_level
            log = Path(tmp) / f"{label}.log"
            worker = start_worker(env, log)
            reader = OutputReader(boot, t, keep_values=False)
            spy = None
            try:
                if profile is not None:
                    reader.require(set(keys[: max(1, n // 10)]), 120, worker, log)  # warm: bundle loaded, group joined, cache primed
                    spy = Profiler(worker.pid, profile)
                reader.require(set(keys), 120 + n / 100, worker, log)
            finally:
                if spy is not None and profile is not None:
                    err = spy.stop()
                    if not profile.is_file():
                        r.note(f"py-spy wrote no profile: {err.strip()}")
                stop(worker, timeout=STOP_S)
                reader.close()
            misses = sum(1 for o in reader.outputs.values() if o.topic != t.verdicts)
            res = steady_rate([o.timestamp_ms for o in reader.outputs.values()])
            res["dead_letters"] = float(misses)
            return res

        default, tuned = "aigis worker (defaults, log warning)", f"aigis worker (AIGIS_MAX_BATCH={TUNED_BATCH})"
        rows: dict[str, list[float]] = {default: [], "bare loop, 32/poll": [], tuned: []}
        for rep in range(reps):
            print(f"  rep {rep + 1}/{reps}: worker ...", flush=True)
            rows[default].append(worker_run(f"w{rep}", "warning")["rate"])
            print(f"  rep {rep + 1}/{reps}: bare loop ...", flush=True)
            rows["bare loop, 32/poll"].append(_bare_once(boot, uploads, n, 32, Path(tmp) / f"bare{rep}.log", 120 + n / 100)["rate"])
            print(f"  rep {rep + 1}/{reps}: worker with max-batch {TUNED_BATCH} ...", flush=True)
            rows[tuned].append(worker_run(f"t{rep}", "warning", max_batch=TUNED_BATCH)["rate"])
        print("  worker at log level info (one line per verdict) ...", flush=True)
        rows["aigis worker (defaults, log info)"] = [worker_run("info", "info")["rate"]]
        print("  bare loop, 500 records per poll ...", flush=True)
        rows["bare loop, 500/poll"] = [_bare_once(boot, uploads, n, 500, Path(tmp) / "bare500.log", 120 + n / 100)["rate"]]

        if available_py_spy():
            PROFILES.mkdir(parents=True, exist_ok=True)
            raw = PROFILES / "cache-worker.txt"
            raw.unlink(missing_ok=True)
            print("  worker under py-spy (profile) ...", flush=True)
            prof = worker_run("prof", "warning", raw)
            if raw.is_file():
                r.config["profile"] = {"rate_under_profiler": prof["rate"], "raw": os.path.relpath(raw, ROOT), **summarize_profile(raw)}
                metrics_share = library_share(raw, "prometheus_client")
                r.config["profile"]["prometheus_client_share"] = metrics_share
                # Issue 9's condition for prometheus_client: it may not cost more than 2 % on this benchmark.
                r.target("prometheus_client share of the worker's CPU samples", "<= 2%", 100 * metrics_share, 2.0, "%", lower_is_better=True)
        else:
            r.note("py-spy not installed: no profile (pip install -e '.[export]' installs it)")

    bare = summarize(rows["bare loop, 32/poll"])["median"]
    for label, xs in rows.items():
        s = summarize(xs)
        r.add(consumer=label, messages=n, verdicts_per_s=s, fraction_of_bare_loop=s["median"] / bare)
        print(f"  {label:<28} {s['median']:8.0f}/s  ({s['median'] / bare:.2f} of bare loop)", flush=True)
    w = summarize(rows[default])["median"]
    wt = summarize(rows[tuned])["median"]
    r.target("cache-hit verdicts/s per worker (defaults)", ">= 2000/s", w, 2000.0, "/s")
    r.target("worker / bare loop (defaults)", ">= 0.5", w / bare, 0.5)
    r.target(f"cache-hit verdicts/s per worker (AIGIS_MAX_BATCH={TUNED_BATCH})", ">= 2000/s", wt, 2000.0, "/s")
    r.target(f"worker / bare loop (AIGIS_MAX_BATCH={TUNED_BATCH})", ">= 0.5", wt / bare, 0.5)
    r.note(
        f"on the cache path every record costs per-batch overhead (Redis MGET round trip, producer flush + acknowledgement wait, commit) "
        f"shared by max-batch records; AIGIS_MAX_BATCH={TUNED_BATCH} amortises it over more records (inference still runs in batches of at most that size)"
    )
    return r.finish()


# -- 6: latency at fixed offered load ----------------------------------------------------------------


def _offered_load(bootstrap: str, topic: str, pool: list[bytes], tag: str, rate: float, seconds: float) -> dict[str, float]:
    """Open-loop producer: message i leaves at t0 + i / rate whatever the worker does; returns key -> send time."""
    count = max(10, int(rate * seconds))
    prod = open_producer(bootstrap, linger_ms=0)
    sent: dict[str, float] = {}
    t0 = time.time() + 0.2
    for i in range(count):
        due = t0 + i / rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        key = f"{tag}-{i}"
        sent[key] = time.time()
        prod.send(topic, key=key.encode(), value=with_comment(pool[i % len(pool)], key))
    prod.flush()
    prod.close()
    return sent


#: Per-batch stages whose mean time the latency breakdown reports (from the worker's aigis_stage_seconds).
BREAKDOWN_STAGES = ("batch_wait", "prepare", "decode", "inference", "deliver", "commit")


def _stage_totals(port: int) -> dict[str, tuple[float, float]]:
    """stage -> (seconds, batches) so far, and "batch" -> (records, batches), from the worker's /metrics."""
    status, body = http_get(port, "/metrics", timeout=5.0)
    out: dict[str, list[float]] = {}
    if status != 200:
        return {}
    for name, labels, value in series(body):
        if name.startswith("aigis_stage_seconds_") and name[-4:] in ("_sum", "ount"):
            out.setdefault(labels.get("stage", "?"), [0.0, 0.0])[0 if name.endswith("_sum") else 1] = value
        elif name in ("aigis_batch_size_sum", "aigis_batch_size_count"):
            out.setdefault("batch", [0.0, 0.0])[0 if name.endswith("_sum") else 1] = value
    return {k: (v[0], v[1]) for k, v in out.items()}


def _breakdown(reader: OutputReader, sent: dict[str, float], before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Where produce -> verdict time went, per upload (medians) and per batch (means over the point)."""
    queue, inside, handoff = [], [], []
    for k, t_sent in sent.items():
        out = reader.outputs[k]
        try:
            t = json.loads(out.value)["timings"]
        except (ValueError, KeyError, TypeError):
            continue
        queue.append(t["queue_ms"])
        inside.append(t["total_ms"])
        handoff.append(out.timestamp_ms - t_sent * 1000 - t["queue_ms"] - t["total_ms"])
    row: dict[str, float] = {}
    if queue:
        row.update(to_pickup_p50_ms=statistics.median(queue), in_pipeline_p50_ms=statistics.median(inside), to_produce_p50_ms=statistics.median(handoff))
    for stage in (*BREAKDOWN_STAGES, "batch"):
        s1, n1 = after.get(stage, (0.0, 0.0))
        s0, n0 = before.get(stage, (0.0, 0.0))
        if n1 > n0:
            row[f"{stage}_mean_{'records' if stage == 'batch' else 'ms'}"] = (s1 - s0) / (n1 - n0) * (1 if stage == "batch" else 1000)
    return row


def _latency_point(
    boot: str,
    reader: OutputReader,
    worker: subprocess.Popen[bytes],
    log: Path,
    uploads: str,
    pool: list[bytes],
    tag: str,
    rate: float,
    seconds: float,
    metrics_port: int | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Offer ``rate`` uploads/s for ``seconds``; latency stats (with the breakdown when the worker serves /metrics) and the rate achieved."""
    before = _stage_totals(metrics_port) if metrics_port else {}
    sent = _offered_load(boot, uploads, pool, tag, rate, seconds)
    reader.require(set(sent), seconds * 8 + 120, worker, log)
    lat = [reader.outputs[k].timestamp_ms - sent[k] * 1000 for k in sent]
    stats = latency_stats(lat)
    if metrics_port:
        stats.update(_breakdown(reader, sent, before, _stage_totals(metrics_port)))
    return stats, steady_rate([reader.outputs[k].timestamp_ms for k in sent])


def broker_floor(boot: str, fetch_max_wait_ms: int, rate: float, seconds: float, pool: list[bytes]) -> dict[str, float]:
    """Latency of a bare kafka-python consumer (no work at all) at ``rate``: the floor the broker and client set.

    Measured because the consumer's fetch wait dominates low-load latency on
    some brokers (Tansu answers a waiting fetch late when new records arrive),
    and the worker inherits kafka-python's default ``fetch_max_wait_ms``.
    """
    from kafka import KafkaConsumer

    t = Topics.fresh(boot)
    consumer = KafkaConsumer(
        t.uploads,
        bootstrap_servers=boot.split(","),
        group_id=t.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(timeout_ms=200)
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    sender = threading.Thread(target=lambda: sent.update(_offered_load(boot, t.uploads, pool, "floor", rate, seconds)), daemon=True)
    sender.start()
    end = time.monotonic() + seconds + 10
    while time.monotonic() < end and (sender.is_alive() or len(got) < len(sent)):
        for records in consumer.poll(timeout_ms=100, max_records=500).values():
            now = time.time()
            for rec in records:
                got[rec.key.decode()] = now
    consumer.close()
    sender.join()
    return latency_stats([(got[k] - sent[k]) * 1000 for k in sent if k in got])


def _breakdown_text(row: dict[str, Any]) -> str:
    """One line: per-upload medians (to pick-up, in the pipeline, pick-up to produce) and per-batch stage means."""
    if "to_pickup_p50_ms" not in row:
        return "(no /metrics)"
    parts = [
        f"upload p50: to pick-up {row['to_pickup_p50_ms']:.1f} ms, in pipeline {row['in_pipeline_p50_ms']:.1f} ms, "
        f"waiting to be produced {row['to_produce_p50_ms']:.1f} ms"
    ]
    stages = [f"{s} {row[f'{s}_mean_ms']:.1f}" for s in BREAKDOWN_STAGES if f"{s}_mean_ms" in row]
    if stages:
        parts.append("per batch (ms): " + ", ".join(stages) + (f"; {row['batch_mean_records']:.1f} records/batch" if "batch_mean_records" in row else ""))
    return "; ".join(parts)


@contextlib.contextmanager
def _latency_worker(
    r: BenchResult, opts: Options, servers: DevServers, bundle: Path, pool: list[bytes], wait: int, isolate: tuple[set[int], set[int]] | None
) -> Iterator[tuple[OutputReader, subprocess.Popen[bytes], Path, Topics, int]]:
    """A fresh topic and a warmed-up worker (pinned when ``isolate``) serving /metrics; stopped on exit."""
    boot = servers.bootstrap_servers
    t = Topics.fresh(boot, 2)
    log = Path(tempfile.mkdtemp(prefix="aigis-bench-lat-")) / f"lat-{wait}.log"
    port = free_port()
    worker = start_worker(_env(r, opts, servers, t, bundle, max_wait_ms=wait, metrics_port=port), log)
    if isolate is not None:
        pin_process(worker.pid, isolate[0])  # before it starts any thread; its threads inherit the mask
    reader = OutputReader(boot, t)
    try:
        warm = [f"warm-{i}" for i in range(4)]
        publish(boot, t.uploads, [(k.encode(), with_comment(pool[i], k)) for i, k in enumerate(warm)])
        reader.require(set(warm), 180, worker, log)
        if isolate is not None and pin_process(worker.pid, isolate[0]) < 2:
            raise RuntimeError("could not pin the worker's threads")
        yield reader, worker, log, t, port
    finally:
        stop(worker, timeout=STOP_S)
        reader.close()


def _latency_pass(
    r: BenchResult,
    opts: Options,
    servers: DevServers,
    arch: str,
    bundle: Path,
    pool: list[bytes],
    backlog: float,
    waits: list[int],
    targets: bool = False,
    isolate: tuple[set[int], set[int]] | None = None,
) -> None:
    """Capacity under a live producer, then each offered load, for each --max-wait-ms; rows into ``r``.

    ``isolate=(worker_cpus, other_cpus)``: the worker's threads on the first set, the
    broker's, Redis's and this process's (load generator, verdict reader) on the
    second, so the worker has cores of its own as it would beside a remote broker.
    """
    boot = servers.bootstrap_servers
    cores = "shared"
    if isolate is not None:
        mine, others = isolate
        for p in servers.processes:
            if p.proc is not None:
                pin_process(p.proc.pid, others)
        pin_process(os.getpid(), others)
        cores = f"worker alone on CPU {','.join(map(str, sorted(mine)))}; broker, Redis, generator on {','.join(map(str, sorted(others)))}"
    try:
        capacity = None
        for wait in waits:
            if capacity is None:
                # Capacity on a topic and worker of its own: the 1.5x overload leaves thousands of records in
                # its topic and the broker busy for a while, and the first measured point run after it on the
                # same topic came out twice as slow as the same point run later (2026-12-04: p50 51.7 vs 27.2 ms).
                with _latency_worker(r, opts, servers, bundle, pool, wait, isolate) as (reader, worker, log, t, _):
                    print(f"  {arch} ({cores}): capacity under a live producer (offered {1.5 * backlog:.1f}/s) ...", flush=True)
                    _, got = _latency_point(boot, reader, worker, log, t.uploads, pool, f"sat-{len(r.rows)}", 1.5 * backlog, opts.latency_seconds)
                capacity = got["rate"]
                if not capacity > 0:
                    raise RuntimeError(f"could not measure {arch}'s capacity (rate {capacity}); give it more images or seconds")
                key = "capacity_images_per_s" if isolate is None else "capacity_images_per_s_worker_alone"
                r.config.setdefault(key, {})[arch] = capacity
                r.config.setdefault("capacity_measured_with_max_wait_ms", wait)
                print(f"  {arch}: backlog {backlog:.1f}/s, capacity with live producer {capacity:.1f}/s", flush=True)
            with _latency_worker(r, opts, servers, bundle, pool, wait, isolate) as (reader, worker, log, t, port):
                for load in opts.latency_loads:
                    rate = load * capacity
                    print(f"  {arch}: max-wait {wait} ms, offered {rate:.1f}/s ({load:.0%}) for {opts.latency_seconds:.0f} s ...", flush=True)
                    tag = f"w{wait}-l{int(load * 100)}" + ("-alone" if isolate is not None else "")
                    settled_s = settle_cpu()  # whatever ran before (the overload, a 90 % point's queue) is digested first
                    stats, got = _latency_point(boot, reader, worker, log, t.uploads, pool, tag, rate, opts.latency_seconds, metrics_port=port)
                    r.add(
                        arch=arch,
                        cores=cores,
                        max_wait_ms=wait,
                        load=load,
                        offered_per_s=rate,
                        achieved_per_s=got["full_rate"],
                        settled_s=round(settled_s, 1),
                        **stats,
                    )
                    if load == 0.5 and targets and wait == WorkerConfig().max_wait_ms:
                        where = "" if isolate is None else ", worker on its own core"
                        r.target(f"p50 at 50% load ({arch}, defaults{where})", "<= 25 ms", stats["p50_ms"], 25.0, " ms", lower_is_better=True)
                        r.target(f"p99 at 50% load ({arch}, defaults{where})", "<= 100 ms", stats["p99_ms"], 100.0, " ms", lower_is_better=True)
                    print(
                        f"    p50 {stats['p50_ms']:.1f} ms  p99 {stats['p99_ms']:.1f} ms  (n={int(stats['n'])}, achieved {got['full_rate']:.1f}/s)",
                        flush=True,
                    )
                    print("    breakdown: " + _breakdown_text(stats), flush=True)
    finally:
        if isolate is not None:
            everything = isolate[0] | isolate[1]
            for p in servers.processes:
                if p.proc is not None:
                    pin_process(p.proc.pid, everything)
            pin_process(os.getpid(), everything)


def run_latency(opts: Options) -> BenchResult:
    r = BenchResult("latency", "Latency: produce -> verdict at 50 % and 90 % of capacity, two --max-wait-ms", opts.quick)
    r.config.update(archs=opts.stream_archs, waits_ms=opts.latency_waits_ms, loads=opts.latency_loads, seconds_per_point=opts.latency_seconds, cache="off")
    r.note("latency = verdict record timestamp (the worker's produce call) - the time the upload was handed to the producer; both clocks are this machine's")
    r.note(
        "capacity = verdicts/s the worker sustains while the load generator runs on the same machine (offered 1.5x the backlog rate); "
        "on 2 cores the generator's CPU is taken from the worker, so this is lower than the rate on a burst published in advance, which is reported beside it"
    )
    with dev_servers() as servers, tempfile.TemporaryDirectory(prefix="aigis-bench-") as tmp:
        boot = servers.bootstrap_servers
        for arch in opts.stream_archs:
            bundle = ensure_bundle(arch)
            n_cap = opts.stream_images[arch]
            cap_images = photo_jpegs(n_cap, seed=_arch_seed(arch) + 2)
            topics = Topics.fresh(boot, 2)
            items = [(f"cap-{i}".encode(), v) for i, v in enumerate(cap_images)]
            print(f"  {arch}: backlog rate on {n_cap} images ...", flush=True)
            log = Path(tmp) / f"cap-{arch}.log"
            backlog = run_worker_once(r, opts, servers, topics, bundle, items, log, 120 + n_cap * 2.0, warmup_items(arch, "cap"))["rate"]
            if not backlog > 0:
                raise RuntimeError(f"could not measure {arch}'s backlog rate from {n_cap} images; give it more (--stream-images)")
            r.config.setdefault("backlog_images_per_s", {})[arch] = backlog
            pool = photo_jpegs(32, seed=_arch_seed(arch) + 3)

            if arch == opts.stream_archs[0]:
                for fmw in (500, 20):
                    floor = broker_floor(boot, fmw, 20.0, min(opts.latency_seconds, 10.0), pool)
                    r.add(
                        arch="(bare kafka-python consumer, no work)",
                        cores="shared (nothing else running)",
                        max_wait_ms=f"fetch_max_wait_ms={fmw}",
                        load=None,
                        offered_per_s=20.0,
                        achieved_per_s=None,
                        **floor,
                    )
                    print(f"  broker floor, fetch_max_wait_ms={fmw}: p50 {floor['p50_ms']:.1f} ms, p99 {floor['p99_ms']:.1f} ms", flush=True)
            defaults_wait = WorkerConfig().max_wait_ms
            _latency_pass(r, opts, servers, arch, bundle, pool, backlog, opts.latency_waits_ms, targets=arch == opts.stream_archs[0])
            cpus = usable_cpus()
            if opts.latency_isolate and arch == opts.stream_archs[0] and len(cpus) >= 2:
                alone = {max(cpus)}
                _latency_pass(r, opts, servers, arch, bundle, pool, backlog, [defaults_wait], targets=True, isolate=(alone, cpus - alone))

    return r.finish()
