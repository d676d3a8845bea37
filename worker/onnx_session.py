"""ONNX Runtime sessions behind a small interface, providers chosen by config.

The worker asks for providers in order of preference (default CUDA then CPU);
those this onnxruntime build or machine cannot offer are dropped with a log
line, and CPU is always the last resort, so the same configuration runs on a
GPU node and on a laptop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

log = structlog.get_logger(__name__)

CPU = "CPUExecutionProvider"


def resolve_providers(requested: Sequence[str]) -> list[str]:
    """Keep the requested providers this runtime offers, in order; CPU last if nothing else."""
    available = set(ort.get_available_providers())
    chosen = [p for p in requested if p in available]
    dropped = [p for p in requested if p not in available]
    if dropped:
        log.info("providers_unavailable", dropped=dropped, available=sorted(available))
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


class OnnxModel:
    """One inference session; ``run`` maps input names to arrays and returns outputs by name."""

    def __init__(self, path: Path, providers: Sequence[str], intra_op_threads: int = 0) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        opts.log_severity_level = 3
        self.path = path
        wanted = resolve_providers(providers)
        # onnxruntime-gpu lists CUDA as available even where libcudart/cuDNN are
        # missing, then prints a C++ error while falling back. Silence its logger
        # for the attempt and report the fallback once, in our own log.
        ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
        finally:
            ort.set_default_logger_severity(2)
        fell_back = [p for p in wanted if p not in self.session.get_providers()]
        if fell_back:
            log.info("providers_failed_to_initialise", path=path.name, failed=fell_back, using=self.session.get_providers())
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self.output_names
        values = self.session.run(names, dict(feeds))
        return dict(zip(names, values, strict=True))
