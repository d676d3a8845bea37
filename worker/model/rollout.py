"""Model rollout without a restart: hot swap of the bundle, and a shadow bundle.

The worker watches ``manifest.json`` of its bundle (and of the shadow bundle)
every ``--bundle-watch-interval-s`` and on SIGHUP. When the manifest's sha256
differs from the loaded one, the new bundle is loaded and verified *beside* the
old one (every file's sha256, fresh ONNX Runtime sessions) and only then
swapped in; the next batch uses it, the batch in flight finishes on the old one.
A bundle that fails to load (half-copied files, bad manifest) is refused with a
log line and a metric, the old one keeps serving, and the load is retried with
backoff, so a copy that completes later is picked up by itself.

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
from collections.abc import Callable
from pathlib import Path

import structlog

from worker.config import WorkerConfig
from worker.model.bundle import MANIFEST, LoadedBundle
from worker.ops.metrics import WorkerMetrics

log = structlog.get_logger(__name__)


def manifest_sha(bundle_dir: Path) -> str | None:
    try:
        return hashlib.sha256((bundle_dir / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return None


def load_bundle(cfg: WorkerConfig, path: Path) -> LoadedBundle:
    return LoadedBundle(path, cfg.provider_list, cfg.intra_op_threads)


class BundleWatcher:
    """Keeps the current (primary, shadow) pair and swaps in new versions as they appear."""

    def __init__(
        self,
        cfg: WorkerConfig,
        on_swap: Callable[[LoadedBundle, LoadedBundle | None], None],
        metrics: WorkerMetrics | None = None,
        loader: Callable[[WorkerConfig, Path], LoadedBundle] = load_bundle,
    ) -> None:
        assert cfg.bundle is not None
        self.cfg = cfg
        self.metrics = metrics
        self._loader = loader
        self._on_swap = on_swap
        self.primary = loader(cfg, cfg.bundle)
        self.shadow = loader(cfg, cfg.shadow_bundle) if cfg.shadow_bundle else None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failed: dict[Path, tuple[str | None, float, float]] = {}  # path -> (manifest sha, retry at, backoff)
        self._thread = threading.Thread(target=self._run, name="bundle-watch", daemon=True)
        self._publish_info()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self, *_: object) -> None:
        """SIGHUP handler: check now, retrying even a bundle that failed a moment ago."""
        self._failed.clear()
        self._wake.set()

    def _publish_info(self) -> None:
        if self.metrics is None:
            return
        values = {("primary", self.primary.ref.name, self.primary.ref.version, self.primary.sha256): 1.0}
        if self.shadow is not None:
            values[("shadow", self.shadow.ref.name, self.shadow.ref.version, self.shadow.sha256)] = 1.0
        self.metrics.bundle_info.replace(values)

    def _run(self) -> None:
        interval = self.cfg.bundle_watch_interval_s or None
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
            new = self._loader(self.cfg, path)
        except Exception as exc:
            backoff = min(60.0, (failed[2] * 2) if failed and failed[0] == sha else max(1.0, self.cfg.bundle_watch_interval_s))
            self._failed[path] = (sha, time.monotonic() + backoff, backoff)
            if self.metrics is not None:
                self.metrics.bundle_reloads.inc(1, "failed")
            log.error("bundle_reload_refused", path=str(path), error=str(exc)[:500], keeping=current.sha256, retry_in_s=backoff)
            return None
        self._failed.pop(path, None)
        return new

    def check(self) -> bool:
        """Load and swap in whatever changed; True when a swap happened."""
        primary = self._candidate(self.cfg.bundle, self.primary)  # type: ignore[arg-type]
        shadow = self._candidate(self.cfg.shadow_bundle, self.shadow) if (self.cfg.shadow_bundle and self.shadow) else None
        if primary is None and shadow is None:
            return False
        old = self.primary
        self.primary = primary or self.primary
        self.shadow = shadow or self.shadow
        self._on_swap(self.primary, self.shadow)
        self._publish_info()
        if self.metrics is not None:
            self.metrics.bundle_reloads.inc(1, "swapped")
        log.info(
            "bundle_swapped",
            previous=old.sha256,
            bundle=self.primary.ref.name,
            version=self.primary.ref.version,
            sha256=self.primary.sha256,
            shadow=self.shadow.sha256 if self.shadow else None,
        )
        return True
