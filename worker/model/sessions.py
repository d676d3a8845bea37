"""ONNX Runtime sessions behind a small interface, providers chosen by config.

The worker asks for providers in order of preference (default CUDA then CPU);
those this onnxruntime build or machine cannot offer are dropped with a log
line, and CPU is always the last resort, so the same configuration runs on a
GPU node and on a laptop.

IO binding: when a session runs on CUDA, inputs are bound once per call and
outputs are bound to a device, so the backbone's embedding can stay on the GPU
and feed the heads without a round trip through host memory
(:meth:`OnnxModel.run_bound`). On CPU plain ``run`` is as fast and simpler, so
binding is used only where the provider is CUDA (``io_binding=None``, the
default); tests force it on CPU to exercise the same code path.
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

    def __init__(
        self,
        path: Path,
        providers: Sequence[str],
        intra_op_threads: int = 0,
        io_binding: bool | None = None,
        disabled_optimizers: Sequence[str] = (),
        spinning: bool = True,
    ) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        if not spinning:  # idle intra-op threads sleep instead of spin-waiting for the next run (see WorkerConfig.intra_op_spinning)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.path = path
        wanted = resolve_providers(providers)
        # onnxruntime-gpu lists CUDA as available even where libcudart/cuDNN are
        # missing, then prints a C++ error while falling back. Silence its logger
        # for the attempt and report the fallback once, in our own log.
        ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted, disabled_optimizers=list(disabled_optimizers))
        finally:
            ort.set_default_logger_severity(2)
        fell_back = [p for p in wanted if p not in self.session.get_providers()]
        if fell_back:
            log.info("providers_failed_to_initialise", path=path.name, failed=fell_back, using=self.session.get_providers())
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self.device = "cuda" if on_cuda else "cpu"
        self.io_binding = on_cuda if io_binding is None else io_binding

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self.output_names
        values = self.session.run(names, dict(feeds))
        return dict(zip(names, values, strict=True))

    def run_bound(
        self, feeds: Mapping[str, np.ndarray | ort.OrtValue], outputs: Sequence[str] | None = None, keep_on_device: frozenset[str] = frozenset()
    ) -> dict[str, np.ndarray | ort.OrtValue]:
        """Run with IO binding: numpy inputs are copied to the device once, OrtValues are used in place.

        Outputs named in ``keep_on_device`` come back as OrtValues on this
        session's device (to feed another session); the rest as numpy arrays.
        """
        names = list(outputs) if outputs is not None else self.output_names
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            binding.bind_output(name, self.device if name in keep_on_device else "cpu")
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {name: (v if name in keep_on_device else v.numpy()) for name, v in zip(names, values, strict=True)}
