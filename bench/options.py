"""Settings shared by every benchmark: one place that says what --quick changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Options:
    out: Path = Path("bench/results")
    quick: bool = False
    reps: int = 5
    #: backbone comparison (benchmark 1)
    backbone_arch: str = "ViT-B-16"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    #: model-size scaling (benchmark 7)
    scaling_archs: list[str] = field(default_factory=lambda: ["aigis-tiny", "ViT-B-16", "ViT-L-14"])
    scaling_batches: list[int] = field(default_factory=lambda: [1, 8])
    #: streaming benchmarks (3, 4, 6) run on each of these bundles
    stream_archs: list[str] = field(default_factory=lambda: ["aigis-tiny", "ViT-B-16"])
    #: images per streaming run, per arch (tiny is fast, ViT-B-16 ~5 img/s on 2 cores)
    stream_images: dict[str, int] = field(default_factory=lambda: {"aigis-tiny": 2048, "ViT-B-16": 160, "ViT-L-14": 48})
    #: one streaming run per entry, each changing worker settings from their defaults (benchmark 3)
    stream_sweep: list[dict[str, str]] = field(
        default_factory=lambda: [{"intra_op_threads": "1"}, {"decode_threads": "1"}, {"decode_threads": "3"}, {"max_batch": "8"}]
    )
    cache_messages: int = 12_000
    latency_seconds: float = 30.0
    latency_waits_ms: list[int] = field(default_factory=lambda: [5, 50])
    latency_loads: list[float] = field(default_factory=lambda: [0.5, 0.9])
    #: Also measure with the worker alone on one core and the broker, Redis and load generator on the others.
    latency_isolate: bool = True
    decode_threads: list[int] = field(default_factory=lambda: [1, 2, 4])
    decode_images: int = 12
    #: variants of each colour photo the watermark false-positive count reads (benchmark provenance; grey photos get a tenth)
    provenance_variants: int = 200
    worker_log_level: str = "warning"
    #: extra AIGIS_* settings for every worker the benchmarks start (e.g. {"AIGIS_MAX_BATCH": "16"})
    worker_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick_defaults(cls, out: Path) -> Options:
        """Small enough to validate the harness in a few minutes on a busy 2-core machine."""
        return cls(
            out=out,
            quick=True,
            reps=3,
            backbone_arch="aigis-tiny",
            batch_sizes=[1, 8, 32],
            scaling_archs=["aigis-tiny", "ViT-B-16"],
            scaling_batches=[1, 4],
            stream_archs=["aigis-tiny"],
            stream_images={"aigis-tiny": 192, "ViT-B-16": 24, "ViT-L-14": 8},
            stream_sweep=[],
            cache_messages=2000,
            latency_seconds=6.0,
            decode_threads=[1, 2],
            decode_images=4,
            provenance_variants=4,
        )
