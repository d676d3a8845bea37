"""Drift reports from the live stream: one monitor per served bundle, following hot swaps, published on the drift topic.

The statistics themselves are :mod:`worker.ops.drift` (Kafka-free); this
module keeps a :class:`~worker.ops.drift.DriftMonitor` for the primary and the
shadow bundle the rollout serves now (a swapped-in bundle gets a fresh window
against its own reference; the old monitor's gauges are dropped), feeds each
delivered batch's verdicts to them, and hands back the reports for the deliver
stage to publish. The primary monitor reads each fresh verdict's own scores;
the shadow monitor reads the shadow scores riding on fresh verdicts (without a
novelty distance: the shadow's embedding is not in the verdict).

It is given what it uses and no more: the drift settings (built from the
worker's configuration by :func:`worker.app.drift_settings`), where the served
bundles are read from (anything with ``current() -> Models``: the
:class:`~worker.model.rollout.Rollout`, or a fixed :class:`Models`), the
metrics, and the worker's id for the reports.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from schemas import CacheStatus, DriftReport
from worker.model.bundle import LoadedBundle
from worker.model.rollout import Models
from worker.ops.drift import DriftMonitor, DriftSettings, Observation, Role
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.outcomes import Outcome


class ServedModels(Protocol):
    """Where the bundles served now are read from (:class:`~worker.model.rollout.Rollout`, :class:`Models`)."""

    def current(self) -> Models: ...


class DriftReports:
    """The drift monitors of the bundles served now; ``settings`` None: no monitoring (``--no-drift-monitor``)."""

    def __init__(self, settings: DriftSettings | None, rollout: ServedModels, metrics: WorkerMetrics, worker: str | None = None) -> None:
        self.settings = settings
        self.rollout = rollout
        self.metrics = metrics
        self.worker = worker
        self._lock = threading.Lock()
        self._monitors: dict[Role, tuple[str, DriftMonitor | None]] = {}

    def observe(self, outcomes: Sequence[Outcome]) -> list[DriftReport]:
        """The reports this delivered batch raises (usually none)."""
        if self.settings is None:
            return []
        models = self.rollout.current()
        verdicts = [o.verdict for o in outcomes if o.verdict is not None]
        with self._lock:
            primary, shadow = self._monitor(models, "primary"), self._monitor(models, "shadow")
            reports = primary.observe(verdicts) if primary is not None else []
            if shadow is not None:
                rows = [
                    Observation(v.shadow.score, v.shadow.head_scores, {}, v.produced_at.timestamp())
                    for v in verdicts
                    if v.shadow is not None and v.cache is CacheStatus.miss and v.shadow.bundle.sha256 == shadow.bundle.sha256
                ]
                reports += shadow.observe_scores(rows)
        return reports

    def _monitor(self, models: Models, role: Role) -> DriftMonitor | None:
        bundle: LoadedBundle | None = models.primary if role == "primary" else models.shadow
        sha = bundle.sha256 if bundle is not None else ""
        known = self._monitors.get(role)
        if known is not None and known[0] == sha:
            return known[1]
        if known is not None and known[1] is not None:
            known[1].close()  # the swapped-out bundle's gauges go with it
        monitor = None
        if bundle is not None:
            monitor = DriftMonitor.for_bundle(bundle.manifest, bundle.ref, self.settings, self.metrics, role=role, worker=self.worker)
        self._monitors[role] = (sha, monitor)
        return monitor

    def close(self) -> None:
        with self._lock:
            for _, monitor in self._monitors.values():
                if monitor is not None:
                    monitor.close()
            self._monitors.clear()
