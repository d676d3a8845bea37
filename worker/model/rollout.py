"""Model rollout without a restart: the single owner of the bundles being served.

:class:`Rollout` holds the current :class:`Models` (primary bundle, optional
shadow) and is the only object that changes it. The pipeline asks for
``rollout.current()`` once per batch and keeps that snapshot until the batch is
finished, so a swap can never mix two bundles inside one batch; nothing else
keeps a reference to a bundle.

The rollout watches ``manifest.json`` of its bundle (and of the shadow bundle)
every ``watch_interval_s`` and on SIGHUP (:meth:`Rollout.request_reload`). When
a manifest's sha256 differs from the loaded one, the new bundle is loaded and
verified *beside* the old one (every file's sha256, fresh ONNX Runtime
sessions) and only then swapped in; the next batch uses it, the batch in flight
finishes on the old one. A bundle that fails to load (half-copied files, bad
manifest) is refused with a log line and a metric, the old one keeps serving,
and the load is retried with backoff, so a copy that completes later is picked
up by itself.

Publish a new bundle by writing its ONNX files first and ``manifest.json`` last
(write to a temporary name and rename), or by repointing a symlink to a
complete directory.

Cache keys contain the bundle sha256, so a swapped-in bundle never serves the
old bundle's scores.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType

import structlog

from worker.model.bundle import MANIFEST, LoadedBundle
from worker.ops.metrics import WorkerMetrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Models:
    """The bundles one batch is served with; immutable, so a batch keeps the snapshot it started with.

    A fixed snapshot is its own source (:meth:`current`), which is how the
    offline scorer and the evaluation run the pipeline on one bundle.
    """

    primary: LoadedBundle
    shadow: LoadedBundle | None = None

    def current(self) -> Models:
        return self

    @property
    def bundles(self) -> list[LoadedBundle]:
        return [self.primary] + ([self.shadow] if self.shadow is not None else [])

    @cached_property
    def draft_side(self) -> int | None:
        """Shortest side JPEG draft decoding may shrink to; None when any bundle needs native pixels."""
        if all(b.preprocess.allow_draft and b.native_crop_size is None for b in self.bundles):
            return max(b.preprocess.image_size for b in self.bundles)
        return None

    @cached_property
    def shadow_same_input(self) -> bool:
        """The shadow reads exactly the primary's tensors, so none are computed twice."""
        s = self.shadow
        return s is not None and s.preprocess == self.primary.preprocess and s.native_crop_size == self.primary.native_crop_size


def manifest_sha(bundle_dir: Path) -> str | None:
    try:
        return hashlib.sha256((bundle_dir / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return None


def bundle_loader(providers: Sequence[str], intra_op_threads: int = 0, spinning: bool = True) -> Callable[[Path], LoadedBundle]:
    """How the rollout loads a bundle: the configured providers, thread count and spinning."""
    return lambda path: LoadedBundle(path, providers, intra_op_threads, spinning=spinning)


class Rollout:
    """Owns the current :class:`Models` and swaps in new versions as they appear (context manager: the watch thread)."""

    def __init__(
        self,
        bundle: Path,
        shadow_bundle: Path | None,
        load: Callable[[Path], LoadedBundle],
        watch_interval_s: float,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.paths = (bundle, shadow_bundle)
        self.watch_interval_s = watch_interval_s
        self.metrics = metrics or WorkerMetrics.unexposed()
        self._load = load
        self._models = Models(load(bundle), load(shadow_bundle) if shadow_bundle else None)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failed: dict[Path, tuple[str | None, float, float]] = {}  # path -> (manifest sha, retry at, backoff)
        self._thread = threading.Thread(target=self._run, name="bundle-watch", daemon=True)
        self._publish_info()

    def current(self) -> Models:
        return self._models  # one attribute read: a swap is one attribute write

    def __enter__(self) -> Rollout:
        self._thread.start()
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self, *_: object) -> None:
        """SIGHUP handler: check now, retrying even a bundle that failed a moment ago."""
        self._failed.clear()
        self._wake.set()

    def _publish_info(self) -> None:
        m = self._models
        values: dict[tuple[str, ...], float] = {("primary", m.primary.ref.name, m.primary.ref.version, m.primary.sha256, m.primary.weights_label): 1.0}
        if m.shadow is not None:
            values[("shadow", m.shadow.ref.name, m.shadow.ref.version, m.shadow.sha256, m.shadow.weights_label)] = 1.0
        self.metrics.bundle_info.replace(values)

    def _run(self) -> None:
        interval = self.watch_interval_s or None
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception:  # the watcher must never die; the old bundle keeps serving
                log.exception("bundle_watch_failed")

    def _candidate(self, path: Path, current: LoadedBundle) -> LoadedBundle | None:
        sha = manifest_sha(path)
        if sha is None or sha == current.sha256:
            return None
        failed = self._failed.get(path)
        if failed is not None and failed[0] == sha and time.monotonic() < failed[1]:
            return None
        try:
            new = self._load(path)
        except Exception as exc:
            backoff = min(60.0, (failed[2] * 2) if failed and failed[0] == sha else max(1.0, self.watch_interval_s))
            self._failed[path] = (sha, time.monotonic() + backoff, backoff)
            self.metrics.bundle_reloads.inc(1, "failed")
            log.error("bundle_reload_refused", path=str(path), error=str(exc)[:500], keeping=current.sha256, retry_in_s=backoff)
            return None
        self._failed.pop(path, None)
        return new

    def check(self) -> bool:
        """Load and swap in whatever changed; True when a swap happened."""
        old = self._models
        bundle, shadow_bundle = self.paths
        primary = self._candidate(bundle, old.primary)
        shadow = self._candidate(shadow_bundle, old.shadow) if (shadow_bundle and old.shadow) else None
        if primary is None and shadow is None:
            return False
        self._models = new = Models(primary or old.primary, shadow or old.shadow)
        self._publish_info()
        self.metrics.bundle_reloads.inc(1, "swapped")
        log.info(
            "bundle_swapped",
            previous=old.primary.sha256,
            bundle=new.primary.ref.name,
            version=new.primary.ref.version,
            sha256=new.primary.sha256,
            shadow=new.shadow.sha256 if new.shadow else None,
        )
        return True
