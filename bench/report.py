"""``python -m bench.report``: markdown tables, the plot and the README section, from the JSON results.

  python -m bench.report                 write OUT/results.md and OUT/backbone_throughput.png
  python -m bench.report --readme        also replace README.md's "performance" section with them

Nothing here measures anything: every number comes from ``OUT/NAME.json``
written by ``python -m bench``, with the machine and command recorded there.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.machine import one_line
from bench.results import load_results

ROOT = Path(__file__).resolve().parents[1]
PLOT = "backbone_throughput.png"
FULL_COMMAND = "python -m bench --all --out bench/results && python -m bench.report --out bench/results --readme"
ORDER = ["roofline", "backbone", "decode", "streaming", "baseline", "cache", "latency", "uri", "scaling", "provenance", "augment"]


def f(x: Any, digits: int = 3) -> str:
    """Three significant digits, no scientific notation for the magnitudes that occur here."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not isinstance(x, (int, float)):
        return str(x)
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - mag)
    return f"{x:,.{decimals}f}"


def spread(s: dict[str, Any] | None) -> str:
    """'123 (118–130)': median with min–max over the repetitions."""
    if not s or s.get("median") is None:
        return "–"
    if s.get("n", 1) <= 1:
        return f(s["median"])
    return f"{f(s['median'])} ({f(s['min'])}–{f(s['max'])})"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- one renderer per benchmark ---------------------------------------------------------------------


def _roofline(d: dict[str, Any]) -> str:
    peak = d["config"]["peak_gflops"]
    m = d["config"]["matmul"]
    rows = [
        (r["arch"], f(r["gflops_per_image"]), f(r["gflops_counted_by_torch"]), f(r["attention_core_gflops"]), f(r["limit_images_per_s"])) for r in d["rows"]
    ]
    head = (
        f"fp32 matmul peak on this machine: **{f(peak)} GFLOP/s** (torch {f(m['torch_fp32'])}, numpy {f(m['numpy_fp32'])}; "
        f"{int(m.get('threads_torch', 0))} threads). A ViT backbone is ~99 % matmul, so images/s cannot exceed peak / FLOPs per image in fp32."
    )
    return head + "\n\n" + table(["backbone", "GFLOP / image (analytic)", "torch flop counter", "of which attention core", "fp32 limit, images/s"], rows)


def _backbone(d: dict[str, Any]) -> str:
    batches = sorted({r["batch"] for r in d["rows"]})
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in d["rows"]:
        by.setdefault(r["backend"], {})[r["batch"]] = r
    rows = []
    for backend, per in by.items():
        any_row = next(iter(per.values()))
        best = max(per.values(), key=lambda r: r["images_per_s"]["median"])
        rows.append(
            (
                backend,
                any_row["precision"],
                *(spread(per[b]["images_per_s"]) if b in per else "–" for b in batches),
                f(any_row["cosine_vs_fp32_min"], 5),
                f(best["speedup_vs_torch_cpu"]) + "x" if best.get("speedup_vs_torch_cpu") else "–",
            )
        )
    cfg = d["config"]
    head = (
        f"{cfg['arch']}, images/s, median (min–max) of {cfg['reps']} runs per cell; torch threads {cfg['torch_threads']}, "
        f"ORT intra-op {cfg['ort_intra_op_threads']}; PyTorch vs ORT fp32 max |diff| {f(cfg['torch_vs_ort_fp32_max_abs_diff'])}."
    )
    fused = {k: v.get("fused_operators") for k, v in (cfg.get("variant_fidelity") or {}).items() if v.get("fused_operators")}
    tail = ""
    if fused:
        tail = "\n\nFusions found by ONNX Runtime's transformer optimiser: " + "; ".join(
            f"{k}: {', '.join(f'{op} {n}' for op, n in sorted(ops.items()))}" for k, ops in fused.items()
        )
    return (
        head
        + "\n\n"
        + table(["backend", "precision", *[f"batch {b}" for b in batches], "cosine vs fp32 (min)", "vs PyTorch, same batch (at its best batch)"], rows)
        + tail
    )


def _decode(d: dict[str, Any]) -> str:
    threads = sorted({r["threads"] for r in d["rows"]})
    by: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in d["rows"]:
        by.setdefault((r["image"], r["mode"]), {})[r["threads"]] = r
    rows = []
    for (image, mode), per in by.items():
        first = next(iter(per.values()))
        st = first["stages"]
        fid = first.get("fidelity_vs_full")
        rows.append(
            (
                f"{image} ({first['file_kb']} KB)",
                mode,
                "×".join(str(x) for x in st["decoded_size"]),
                f"{f(st['decode_ms'])} / {f(st['resize_crop_ms'])} / {f(st['normalize_ms'])}",
                *(spread(per[t]["images_per_s"]) if t in per else "–" for t in threads),
                f"{f(fid['embedding_cosine'], 4)} ({f(fid['mean_abs_diff'])})" if fid else "–",
            )
        )
    return table(
        [
            "image",
            "mode",
            "decoded to",
            "ms decode / resize+crop / normalise (1 thread)",
            *[f"img/s, {t} thr" for t in threads],
            "vs full: emb. cosine (mean |Δpx|)",
        ],
        rows,
    )


def _streaming(d: dict[str, Any]) -> str:
    rows = [(r["arch"], r["mode"], r["images"], spread(r["images_per_s"]), f(r["ratio_to_offline"])) for r in d["rows"]]
    return table(["bundle", "mode", "images", "images/s", "ratio to offline"], rows) + _tuning(d["rows"])


def _tuning(rows: Sequence[dict[str, Any]]) -> str:
    """One generated sentence per bundle: which single-setting change helped most, from the sweep rows."""
    lines = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        default = next((r for r in rows if r["arch"] == arch and r["mode"].startswith("streaming (")), None)
        sweeps = [r for r in rows if r["arch"] == arch and r["mode"].startswith("streaming, ")]
        if default is None or not sweeps:
            continue
        best = max(sweeps, key=lambda r: r["ratio_to_offline"])
        setting = best["mode"].removeprefix("streaming, ")
        if best["ratio_to_offline"] > default["ratio_to_offline"]:
            lines.append(f"{arch}: `{setting}` lifts streaming from {f(default['ratio_to_offline'])} to {f(best['ratio_to_offline'])} of offline")
        else:
            lines.append(f"{arch}: the defaults are best of the settings tried ({f(default['ratio_to_offline'])} of offline)")
    if not lines:
        return ""
    return (
        "\n\n**Tuning, from the sweep rows above:** " + "; ".join(lines) + ". On few cores a small backbone is decode-bound (give the decoder the"
        " core ONNX Runtime would take), a large one inference-bound (keep ORT's threads); on a GPU node neither competes."
    )


def _baseline(d: dict[str, Any]) -> str:
    rows = [(r["arch"], r["consumer"], r["images"], spread(r["images_per_s"]), f(r["speedup_vs_naive"]) + "x") for r in d["rows"]]
    agree = d["config"].get("max_score_diff_naive_vs_aigis_fp32") or {}
    tail = "\n\nLargest score difference, naive vs aigis fp32 on the same image: " + ", ".join(f"{k} {f(v)}" for k, v in agree.items()) if agree else ""
    return table(["bundle", "consumer", "images", "images/s", "vs naive"], rows) + tail


def _cache(d: dict[str, Any]) -> str:
    rows = [(r["consumer"], r["messages"], spread(r["verdicts_per_s"]), f(r["fraction_of_bare_loop"])) for r in d["rows"]]
    out = table(["consumer", "messages", "verdicts/s", "of bare loop"], rows)
    prof = d["config"].get("profile")
    if prof and prof.get("samples"):
        libs = ", ".join(f"{x['name']} {x['share']:.0%}" for x in prof["libraries"][:8])
        threads = ", ".join(f"{x['name']} {x['share']:.0%}" for x in prof["threads"][:6])
        top = "; ".join(f"`{x['name']}` {x['share']:.0%}" for x in prof["self"][:8])
        out += (
            f"\n\nProfile of the worker on this stream (py-spy --gil: where Python holds the interpreter lock; {prof['samples']} samples, "
            f"{f(prof['rate_under_profiler'])} verdicts/s under the profiler): by thread {threads}; by library (self time) {libs}; "
            f"hottest functions (self) {top}. Raw stacks: `{prof['raw']}`."
        )
    return out


def _latency(d: dict[str, Any]) -> str:
    cap = d["config"].get("capacity_images_per_s") or {}
    rows = [
        (
            r["arch"],
            r.get("cores", "–"),
            r["max_wait_ms"],
            f"{r['load']:.0%}" if r.get("load") is not None else "–",
            f(r["offered_per_s"]),
            f(r["achieved_per_s"]),
            f(r["p50_ms"]),
            f(r["p90_ms"]),
            f(r["p99_ms"]),
            f(r.get("to_pickup_p50_ms")),
            f(r.get("in_pipeline_p50_ms")),
            int(r["n"]),
        )
        for r in d["rows"]
    ]
    backlog = d["config"].get("backlog_images_per_s") or {}
    head = (
        "Capacity measured in the same run, with the load generator running beside the worker: "
        + ", ".join(f"{k} {f(v)} images/s (on a backlog burst: {f(backlog.get(k))})" for k, v in cap.items())
        + "."
    )
    alone = d["config"].get("capacity_images_per_s_worker_alone") or {}
    if alone:
        head += (
            " With the worker alone on one core and the broker, Redis and load generator on the other: "
            + ", ".join(f"{k} {f(v)} images/s" for k, v in alone.items())
            + " (its loads are fractions of that)."
        )
    cols = ["bundle", "cores", "--max-wait-ms", "load", "offered/s", "achieved/s", "p50 ms", "p90 ms", "p99 ms", "to pick-up p50 ms", "in pipeline p50 ms", "n"]
    foot = (
        "To pick-up: from the producer's send to the start of the worker's prepare stage (broker, fetch, poll, micro-batch wait); "
        "in pipeline: from there to the verdict's produce call. The bare-consumer rows have no worker: their p50..p99 are how old a record "
        "is when a consumer that does nothing receives it (20 uploads/s, nothing else running)."
    )
    return head + "\n\n" + table(cols, rows) + "\n\n" + foot


def _uri(d: dict[str, Any]) -> str:
    rows = [
        (r["arch"], r["mode"], r["images"], f(r["images_per_s"]), f(r.get("ratio_to_inline")), r["store_requests"], r.get("store_peak_in_flight") or "–")
        for r in d["rows"]
    ]
    head = f"The store answers every GET after {f(d['config']['fetch_delay_ms'])} ms; the worker runs at its defaults.\n\n"
    return head + table(["bundle", "events", "images", "images/s", "of inline", "GETs", "most GETs in flight"], rows)


def _scaling(d: dict[str, Any]) -> str:
    rows = [
        (
            r["arch"],
            r["precision"],
            f(r["gflops_per_image"]),
            r["batch"],
            spread(r["images_per_s"]),
            f(r["achieved_gflops_per_s"]),
            f"{r['fraction_of_fp32_peak']:.0%}" if r.get("fraction_of_fp32_peak") else "–",
        )
        for r in d["rows"]
    ]
    out = table(["backbone", "precision", "GFLOP / image", "batch", "images/s", "effective GFLOP/s", "of fp32 matmul peak"], rows)
    return (
        out + "\n\nEffective GFLOP/s = images/s x FLOPs per image; int8 rows can exceed the fp32 matmul peak because integer dot products run at a higher rate."
    )


def _provenance(d: dict[str, Any]) -> str:
    miss = [r for r in d["rows"] if r["part"] == "miss_path"]
    reader = [r for r in d["rows"] if r["part"] == "reader"]
    fp = next((r for r in d["rows"] if r["part"] == "false_positives"), None)
    reps = d["config"]["reps"]
    parts = [
        f"Per image on the cache-miss path (`prepare_image` as the decode pool runs it, median of {reps} run{'s' if reps != 1 else ''}; "
        "provenance off vs `decide` with a trust list):",
        table(
            ["image", "prepare, provenance off (ms)", "decode + preprocess (ms)", "provenance stage (ms)", "share"],
            [(r["image"], f(r["prepare_off_ms"]), f(r["decode_ms"]), f(r["provenance_ms"]), f"{r['share_of_decode']:.1%}") for r in miss],
        ),
    ]
    if reader:
        parts.append("The reader alone, on an image decoded once and read repeatedly:")
        parts.append(
            table(
                ["image", "decode", "worker decode (ms)", "provenance stage (ms)", "share"],
                [(r["image"], r["decode"], f(r["decode_ms"]), f(r["provenance_ms"]), f"{r['share_of_decode']:.1%}") for r in reader],
            )
        )
    if fp:
        bound = f" (95% upper bound {fp['upper_95']:.2%})" if fp.get("upper_95") is not None else ""
        parts.append(
            f"Watermark false positives on {fp['photos']} real photographs in {fp['trials']} variants: **{fp['false_positives']}**{bound}; "
            f"highest unmarked agreement {f(fp['null_agreement_max'])} (read whole: {f(fp['null_agreement_max_without_early_exit'])}) "
            f"against the {f(fp['threshold'])} threshold; marked copies detected {fp['marked_detected']}/{fp['marked']}, "
            f"lowest agreement {f(fp['marked_agreement_min'])}."
        )
    return "\n\n".join(parts)


def _augment(d: dict[str, Any]) -> str:
    c = d["config"]
    head = (
        f"`export embed --augment K` on {c['images']} synthetic {c['image_size']} x {c['image_size']} training images, "
        f"{c['arch']} ({c['weights']} weights), median of {c['reps']} run{'s' if c['reps'] != 1 else ''}:\n\n"
    )
    rows = [(r["mode"], r["augment"], spread(r["images_per_s"]), f(r["embeddings_per_s"])) for r in d["rows"]]
    return head + table(["mode", "K", "images/s", "embeddings/s"], rows)


RENDER = {
    "roofline": _roofline,
    "backbone": _backbone,
    "decode": _decode,
    "streaming": _streaming,
    "baseline": _baseline,
    "cache": _cache,
    "latency": _latency,
    "uri": _uri,
    "scaling": _scaling,
    "provenance": _provenance,
    "augment": _augment,
}


def _targets(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name in ORDER:
        for t in (results.get(name) or {}).get("targets", []):
            met = "met" if t["met"] else ("**not met**" if t["met"] is not None else "n/a")
            rows.append((name, t["name"], t["goal"], f(t["measured"]) + (t.get("unit") or ""), met))
    return table(["benchmark", "target", "goal", "measured", ""], rows) if rows else ""


def _limit_sentence(results: dict[str, dict[str, Any]]) -> str:
    roof, bb = results.get("roofline"), results.get("backbone")
    if not roof or not bb:
        return ""
    arch = bb["config"]["arch"]
    row = next((r for r in roof["rows"] if r["arch"] == arch), None)
    if not row:
        return ""
    best: dict[str, float] = {}
    for r in bb["rows"]:
        if r["device"] == "cpu" and r["precision"] == "fp32":
            best[r["runtime"]] = max(best.get(r["runtime"], 0.0), r["images_per_s"]["median"])
    ort = best.get("onnxruntime")
    limit = row["limit_images_per_s"]
    s = (
        f"**Physical limit.** {arch} costs {f(row['gflops_per_image'])} GFLOP per image; this CPU's fp32 matmul peak is "
        f"{f(roof['config']['peak_gflops'])} GFLOP/s, so fp32 inference cannot exceed {f(limit)} images/s here."
    )
    if ort:
        s += f" The best ONNX Runtime fp32 row reaches {f(ort)} images/s, {ort / limit:.0%} of that limit."
    int8 = [r["images_per_s"]["median"] for r in bb["rows"] if r["device"] == "cpu" and r["precision"] == "int8"]
    if int8:
        s += (
            f" int8 ({f(max(int8))} images/s at best) is bounded by the integer dot-product rate instead "
            "(VNNI: about 4x the fp32 FMA rate), which is why it can pass the fp32 line."
        )
    large = next((r for r in roof["rows"] if r["arch"] == "ViT-L-14"), None)
    if large and arch != "ViT-L-14":
        s += (
            f" For ViT-L-14, the production backbone, the same arithmetic gives {f(large['gflops_per_image'])} GFLOP per image "
            f"and at most {f(large['limit_images_per_s'])} images/s in fp32 on this CPU."
        )
    return s


def render(results: dict[str, dict[str, Any]], out_dir: Path, for_readme: bool = False) -> str:
    if not results:
        return "_No benchmark results yet: run `python -m bench --quick` (or `--all`)._\n"
    first = next(iter(results.values()))
    machine = first["machine"]
    quick = any(d.get("quick") for d in results.values())
    loads = ", ".join(f"{n} {d['machine'].get('loadavg_start', ['?'])[0]}→{(d['machine'].get('loadavg_end') or ['?'])[0]}" for n, d in results.items())
    v = machine.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime-gpu", "onnxruntime", "torch", "open_clip_torch", "numpy", "pillow", "kafka-python") if k in v)
    parts = []
    if quick:
        parts.append(
            "> **Quick run** (`--quick`: small models, short runs) on a machine shared with other work, to validate the harness. "
            "The numbers are indicative only; the full run below replaces them."
        )
    by_machine: dict[str, list[str]] = {}
    for name, res in results.items():
        by_machine.setdefault(one_line(res["machine"]), []).append(name)
    if len(by_machine) == 1:
        parts.append(f"Machine: {one_line(machine)}; Python {v.get('python')}, {libs}.")
    else:  # benchmarks re-run on another day can land on another machine of the same size: say which ran where
        where = "; ".join(f"{m} ({', '.join(names)})" for m, names in by_machine.items())
        parts.append(f"Machines: {where}. Python {v.get('python')}, {libs}.")
    commands = ", ".join(f"`{c}`" for c in dict.fromkeys(d["command"] for d in results.values()))
    parts.append(f"Produced by: {commands}. Full run and README refresh: `{FULL_COMMAND}`.")
    parts.append(f"1-minute load average at start→end of each benchmark (2 cores: above ~2 the machine was busy): {loads}.")
    limit = _limit_sentence(results)
    if limit:
        parts.append(limit)
    targets = _targets(results)
    if targets:
        parts.append("### Targets\n\n" + targets)
    png = (out_dir if out_dir.is_absolute() else ROOT / out_dir) / PLOT
    if png.is_file():
        link = os.path.relpath(png, ROOT) if for_readme else PLOT
        parts.append(f"![throughput vs batch size per backend]({link})")
    for name in ORDER:
        d = results.get(name)
        if not d:
            continue
        body = RENDER[name](d) if d.get("rows") else f"_skipped: {d.get('skipped') or 'no rows'}_"
        notes = "".join(f"\n- {n}" for n in d.get("notes", []))
        parts.append(f"### {d['title']}\n\n{body}" + (f"\n\nNotes:{notes}" if notes else "") + f"\n\n_{d['duration_s']:.0f} s, {d['started_at']}_")
    return "\n\n".join(parts) + "\n"


def plot(results: dict[str, dict[str, Any]], out_dir: Path) -> Path | None:
    """Throughput vs batch size, one line per backend (log scale: backends differ by an order of magnitude)."""
    bb = results.get("backbone")
    if not bb or not bb.get("rows"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    series: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for r in bb["rows"]:
        series.setdefault(r["backend"], []).append((r["batch"], r["images_per_s"]))
    for name, pts in series.items():
        pts.sort()
        xs = [b for b, _ in pts]
        med = [s["median"] for _, s in pts]
        lo = [s["median"] - s["min"] for _, s in pts]
        hi = [s["max"] - s["median"] for _, s in pts]
        ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=name)
    roof = results.get("roofline")
    if roof:
        row = next((r for r in roof["rows"] if r["arch"] == bb["config"]["arch"]), None)
        if row:
            ax.axhline(row["limit_images_per_s"], color="grey", linestyle="--", linewidth=1, label="fp32 matmul-peak limit")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (median, min–max bars)")
    m = bb["machine"]
    ax.set_title(f"{bb['config']['arch']} backbone, {m.get('physical_cores')} cores {m.get('cpu')}" + (" (quick run)" if bb.get("quick") else ""), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = out_dir / PLOT
    fig.savefig(out)
    plt.close(fig)
    return out


def write_markdown(out_dir: Path) -> Path:
    results = _ordered(load_results(out_dir))
    plot(results, out_dir)
    path = out_dir / "results.md"
    path.write_text("# aigis benchmark results\n\n" + render(results, out_dir))
    return path


def _ordered(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: results[k] for k in ORDER if k in results}


BEGIN, END = "<!-- section:performance -->", "<!-- /section:performance -->"

INTRO = """## Performance

Speed is measured by a benchmark command, never asserted in tests. `python -m bench`
runs each comparison in one process run on one machine (several repetitions, median
and spread) and writes JSON + markdown to `bench/results/`; this section is generated
from those files by `python -m bench.report --readme`. Bundle variants for serving
faster come from `python -m export variant BUNDLE OUT --precision int8|fp16 [--fuse]`
(fidelity to fp32 recorded in the variant's manifest)."""


def update_readme(readme: Path, body: str) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} markers")
    readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{INTRO}\n\n{body.rstrip()}\n{END}", text, count=1))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="Directory holding the benchmarks' JSON (default bench/results).")
    p.add_argument("--readme", action="store_true", help="Also rewrite README.md's performance section.")
    p.add_argument("--readme-path", type=Path, default=ROOT / "README.md")
    args = p.parse_args(argv)
    results = _ordered(load_results(args.out))
    if not results:
        print(f"no benchmark results in {args.out}: run `python -m bench --quick` first", file=sys.stderr)
        return 1
    md = write_markdown(args.out)
    print(f"wrote {md}")
    if args.readme:
        update_readme(args.readme_path, render(results, args.out, for_readme=True))
        print(f"updated the performance section of {args.readme_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
