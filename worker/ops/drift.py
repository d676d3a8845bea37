"""Label-free drift statistics over a sliding window of fresh verdicts, against the bundle's validation reference.

A detector goes stale the day a new generator ships, long before anyone
labels its images. Three statistics, each compared with what the bundle's
manifest (``drift``, written at bundle time by :mod:`export.monitoring`)
measured on its validation split:

* **score shift** (``score_shift``), per signal: the fused score, each head's
  score (ensembles), each anomaly output (gendet's teacher-student
  ``discrepancy``). The population stability index between the window's
  histogram and the reference on the reference's decile bins. PSI rather
  than Jensen-Shannon: it is the symmetric KL divergence on the bins, the
  figure operators already know (0.1 "moderate", 0.25 "major"), and n times
  it is asymptotically chi-square (Pearson), so its threshold for a stated
  false-alarm probability follows from the window and reference sizes
  instead of being guessed; JS is bounded and just as usable, but has neither
  the convention nor as simple a null distribution.
* **uncertain-band rate** (``uncertain_rate``): the share of the window whose
  fused score fell in the calibrated uncertain band. A new generator the
  model half-recognises lands there first.
* **novelty rate** (``novelty_rate``, signal ``embedding``): the share of the
  window whose embedding is farther from the training distribution than the
  validation images' 99th percentile (the bundle's novelty graph output,
  ``anomaly["monitor.novelty"]``), against the validation share beyond it
  (~1%, pooled over classes). The one statistic that sees a generator the
  model takes for real: its images score like real ones but are not.

**Prevalence.** The validation split is half fake; a live stream is not, and
its fake share moves with the day. The reference is therefore stored per class
and the window is compared with the mixture ``(1 - pi) real + pi fake`` whose
``pi`` (the window's fake share) maximises the likelihood of the window's
fused-score histogram. A change in how many fakes arrive moves ``pi``
(exported as a gauge), not the alarms; the expected uncertain-band rate is
the mixture of the per-class validation rates at the same ``pi``.

**Thresholds.** Per statistic and judgement, a false-alarm probability
``alpha`` (``--drift-alpha``, default 1e-4) on a stable stream: for PSI the
scaled chi-square quantile whose mean is the PSI a stable window of this size
would show given the reference's own size (Satterthwaite); for the rates the
exact binomial alpha tail of the window's count at the reference rate's upper
99% Wilson bound (the reference's error is the same in every window, so it is
bounded, not averaged; and a 1% event's count has a far heavier right tail
than the normal's). Two floors keep a huge window from alarming on a shift too
small to matter: ``--drift-psi-min`` (0.1) and ``--drift-rate-min-excess``
(2 points).

**Reports.** A :class:`~schemas.DriftReport` is returned (for the runtime to
publish on the drift topic) and a warning is logged when a statistic goes
above its threshold; a ``recovered`` report (info log) when it has come back
below 80% of the way from its baseline to its threshold. Never once per batch.

**Cache hits do not count twice**: :meth:`DriftMonitor.observe` takes only
verdicts with ``cache == miss`` made by its own bundle; a hit or a
near-duplicate was counted when it was first scored.

Torch-free and Kafka-free; one lock per monitor, so any stage thread may call
``observe``. Cost: a few array additions per verdict and a vectorised
judgement every ``--drift-eval-every`` verdicts.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Literal

import numpy as np
import structlog

from schemas import BundleManifest, BundleRef, CacheStatus, DriftReading, DriftReport, DriftStatistic, DriftStatus, DriftWindow, VerdictEvent
from schemas.monitoring import BinnedDistribution, DriftReference, SignalReference
from worker.ops.metrics import WorkerMetrics

log = structlog.get_logger(__name__)

#: Which of the worker's bundles a monitor watches.
Role = Literal["primary", "shadow"]
#: Signal name of the novelty rate (it is about the embedding, not a score).
EMBEDDING_SIGNAL = "embedding"
#: Pseudo-count per bin added to the window's and the reference's histograms (no log of zero).
_PSEUDO = 0.5
#: Grid the fake share is fitted on.
_PI_GRID = np.linspace(0.0, 1.0, 201)
#: Quantile bins of the reference distributions (deciles); fewer when values tie.
REFERENCE_BINS = 10
#: One-sided confidence of the upper bound taken on a reference rate (its estimation error is fixed per bundle).
REFERENCE_CONFIDENCE = 0.99


@dataclass(frozen=True)
class DriftSettings:
    """The knobs of :class:`DriftMonitor` (``--drift-*`` options of the worker; :func:`worker.app.drift_settings` reads them)."""

    window_images: int = 1000
    window_s: float = 3600.0
    min_images: int = 300
    eval_every: int = 50
    alpha: float = 1e-4
    psi_min: float = 0.1
    rate_min_excess: float = 0.02
    recover_fraction: float = 0.8

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(1.0 - self.alpha)


@dataclass(frozen=True)
class Observation:
    """What the statistics read from one freshly scored image."""

    score: float
    heads: Mapping[str, float] = field(default_factory=dict)
    anomaly: Mapping[str, float] = field(default_factory=dict)
    at: float | None = None  # epoch seconds; None = now


# -- statistics (pure functions, unit-tested on their own) ----------------------------------------------------


def binned(values: np.ndarray, labels: np.ndarray, bins: int = REFERENCE_BINS) -> BinnedDistribution | None:
    """A reference distribution: quantile bins of the pooled values and each class's share per bin (labels 0 real, 1 fake).

    Used at bundle time (:mod:`export.monitoring`) and kept here, beside the
    code that reads it, so both sides bin the same way (``searchsorted``,
    right side: bin i is ``[edges[i-1], edges[i])``). None when the values
    cannot be binned (a class missing, or fewer than two distinct values).
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    v, y = v[ok], np.asarray(labels)[ok]
    if (y == 0).sum() == 0 or (y == 1).sum() == 0:
        return None
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = edges[edges > v.min()]  # an edge at the minimum would leave bin 0 empty for every class
    if not len(edges):
        return None
    idx = np.searchsorted(edges, v, side="right")
    shares = {c: np.bincount(idx[y == c], minlength=len(edges) + 1) / int((y == c).sum()) for c in (0, 1)}
    return BinnedDistribution(edges=edges.tolist(), real=shares[0].tolist(), fake=shares[1].tolist(), n_real=int((y == 0).sum()), n_fake=int((y == 1).sum()))


def chi2_quantile(q: float, k: float) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (within ~1% for k >= 3 at the tails used here)."""
    if k <= 0:
        return 0.0
    z = NormalDist().inv_cdf(q)
    h = 2.0 / (9.0 * k)
    return k * max(0.0, 1.0 - h + z * math.sqrt(h)) ** 3


def smoothed(shares: np.ndarray, n: int) -> np.ndarray:
    """Reference shares with the same pseudo-count the window gets."""
    return (np.asarray(shares, dtype=np.float64) * n + _PSEUDO) / (n + _PSEUDO * len(shares))


def psi(live: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index sum (p - q) ln(p / q), on the smoothed live histogram ``live`` (counts)."""
    counts = np.asarray(live, dtype=np.float64)
    p = (counts + _PSEUDO) / (counts.sum() + _PSEUDO * len(counts))
    return float(np.sum((p - expected) * np.log(p / expected)))


def fit_fake_share(counts: np.ndarray, real: np.ndarray, fake: np.ndarray) -> float:
    """Maximum-likelihood share pi of fakes such that the counts look drawn from (1 - pi) real + pi fake."""
    mix = (1.0 - _PI_GRID)[:, None] * real[None, :] + _PI_GRID[:, None] * fake[None, :]
    ll = (np.asarray(counts, dtype=np.float64)[None, :] * np.log(mix)).sum(axis=1)
    return float(_PI_GRID[int(np.argmax(ll))])


def psi_threshold(n: int, pi: float, real: np.ndarray, fake: np.ndarray, n_real: int, n_fake: int, dof_used: int, settings: DriftSettings) -> float:
    """PSI above which a window of ``n`` images is shifted with false-alarm probability ``alpha``.

    Under no shift, PSI ~ Pearson's X^2 / n. Its mean is the sampling noise of
    the window (B - 1 - dof_used)/n plus that of the reference histogram at
    the mixture; the quantile is that of a chi-square scaled to this mean.
    """
    b = len(real)
    q = (1.0 - pi) * real + pi * fake
    ref_var = ((1.0 - pi) ** 2) * real * (1.0 - real) / n_real + (pi**2) * fake * (1.0 - fake) / n_fake
    k = max(1, b - 1 - dof_used)
    mean = k / n + float(np.sum(ref_var / q))
    return max(settings.psi_min, mean / k * chi2_quantile(1.0 - settings.alpha, k))


def wilson_upper(rate: float, n: float, z: float) -> float:
    """Upper Wilson score bound of a binomial rate estimated on ``n`` images."""
    if n <= 0:
        return 1.0
    z2 = z * z
    centre = rate + z2 / (2 * n)
    spread = z * math.sqrt(max(rate * (1 - rate), 0.0) / n + z2 / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z2 / n))


def binomial_upper(n: int, p: float, alpha: float) -> int:
    """Smallest k with P(Binomial(n, p) > k) <= alpha (exact: rare-event tails are far heavier than the normal's)."""
    if p <= 0:
        return 0
    if p >= 1:
        return n
    k = np.arange(n + 1)
    lg = np.array([math.lgamma(i + 1) for i in range(n + 1)])
    logpmf = lg[n] - lg - lg[::-1] + k * math.log(p) + (n - k) * math.log1p(-p)
    tail = np.cumsum(np.exp(logpmf - logpmf.max())[::-1])[::-1] * math.exp(logpmf.max())  # tail[k] = P(X >= k)
    above = np.nonzero(tail[1:] <= alpha)[0]
    return int(above[0]) if len(above) else n


def rate_threshold(n: int, pi: float, real: float, fake: float, n_real: int, n_fake: int, settings: DriftSettings) -> tuple[float, float]:
    """(expected rate, rate above which the window's rate is too high), one-sided.

    The reference's rate is itself an estimate on a few hundred images and
    the error is the same in every window, so it is not averaged away: the
    threshold is the ``alpha`` tail of a binomial window at the reference
    rate's upper bound (Wilson, :data:`REFERENCE_CONFIDENCE`), the effective
    reference size being that of the per-class mixture at ``pi``.
    """
    expected = (1.0 - pi) * real + pi * fake
    ref_var = ((1.0 - pi) ** 2) * real * (1.0 - real) / n_real + (pi**2) * fake * (1.0 - fake) / n_fake
    m_eff = expected * (1.0 - expected) / ref_var if ref_var > 0 else float(min(n_real, n_fake) if 0 < pi < 1 else (n_fake if pi else n_real))
    upper = wilson_upper(expected, m_eff, NormalDist().inv_cdf(REFERENCE_CONFIDENCE))
    return expected, max(expected + settings.rate_min_excess, binomial_upper(n, upper, settings.alpha) / n)


# -- the monitor ----------------------------------------------------------------------------------------------


@dataclass
class _Signal:
    ref: SignalReference
    edges: np.ndarray
    real: np.ndarray  # smoothed shares
    fake: np.ndarray
    counts: np.ndarray  # live histogram of the window
    n: int = 0

    def bin(self, value: float | None) -> int:
        if value is None or not math.isfinite(value):
            return -1
        return int(np.searchsorted(self.edges, value, side="right"))

    def read(self, obs: Observation) -> float | None:
        if self.ref.source == "score":
            return obs.score
        table = obs.heads if self.ref.source == "head_scores" else obs.anomaly
        return table.get(self.ref.key or "")


@dataclass
class _State:
    alarm: bool = False
    reading: DriftReading | None = None


class DriftMonitor:
    """Windowed drift statistics for one bundle; ``observe`` per batch of fresh verdicts returns the reports to publish.

    Build one per served bundle (``role`` primary or shadow) with
    :meth:`for_bundle`; on a hot swap, :meth:`close` the old one (its gauges
    go) and build one for the new bundle (its window starts empty: the new
    bundle has its own reference).
    """

    def __init__(
        self,
        reference: DriftReference,
        bundle: BundleRef,
        calibration_band: tuple[float, float],
        settings: DriftSettings | None = None,
        metrics: WorkerMetrics | None = None,
        role: Role = "primary",
        worker: str | None = None,
    ) -> None:
        self.reference = reference
        self.bundle = bundle
        self.band = calibration_band
        self.settings = settings or DriftSettings()
        self.metrics = metrics if metrics is not None else WorkerMetrics()  # a registry of its own when the caller exports none (benchmarks, tests)
        self.role = role
        self.worker = worker
        self._lock = threading.Lock()
        self._signals = []
        for s in reference.signals:
            d = s.distribution
            self._signals.append(
                _Signal(
                    s,
                    np.asarray(d.edges),
                    smoothed(np.asarray(d.real), d.n_real),
                    smoothed(np.asarray(d.fake), d.n_fake),
                    np.zeros(len(d.edges) + 1, dtype=np.int64),
                )
            )
        # the fused score fits the fake share; fall back to the first signal
        self._prevalence = next((s for s in self._signals if s.ref.source == "score"), self._signals[0])
        self.novelty = reference.novelty
        # window: per observation (time, bin per signal, uncertain, novel)
        self._window: deque[tuple[float, tuple[int, ...], bool, int]] = deque()
        self._uncertain = 0
        self._novel = 0
        self._novel_n = 0
        self._since_eval = 0
        self._states: dict[tuple[DriftStatistic, str], _State] = {}
        self._fake_share: float | None = None
        self.judgements = 0

    @classmethod
    def for_bundle(
        cls,
        manifest: BundleManifest,
        bundle: BundleRef,
        settings: DriftSettings | None = None,
        metrics: WorkerMetrics | None = None,
        role: Role = "primary",
        worker: str | None = None,
    ) -> DriftMonitor | None:
        """A monitor for a bundle, or None when its manifest has no drift reference (bundles made before drift monitoring)."""
        if manifest.drift is None:
            return None
        cal = manifest.calibration
        return cls(manifest.drift, bundle, (cal.uncertain_low, cal.uncertain_high), settings, metrics, role, worker)

    # -- input ------------------------------------------------------------------------------------------------
    def observe(self, verdicts: Iterable[VerdictEvent], now: float | None = None) -> list[DriftReport]:
        """Count this batch's freshly scored verdicts of this bundle (cache hits and other bundles' verdicts are skipped)."""
        rows = [
            Observation(v.score, v.head_scores, v.anomaly, v.produced_at.timestamp())
            for v in verdicts
            if v.cache is CacheStatus.miss and v.bundle.sha256 == self.bundle.sha256
        ]
        return self.observe_scores(rows, now)

    def observe_scores(self, rows: Sequence[Observation], now: float | None = None) -> list[DriftReport]:
        """Lower-level entry (offline benchmarks, a shadow bundle's scores): count these rows, judge when due."""
        reports: list[DriftReport] = []
        with self._lock:
            for obs in rows:
                t = obs.at if obs.at is not None else (now if now is not None else time.time())
                self._add(obs, t)
                self._since_eval += 1
                if self._since_eval >= self.settings.eval_every:
                    self._since_eval = 0
                    reports += self._judge(t)
            self._expire(now if now is not None else (self._window[-1][0] if self._window else time.time()))
        for r in reports:
            (log.warning if r.status is DriftStatus.alarm else log.info)(
                "drift_alarm" if r.status is DriftStatus.alarm else "drift_recovered",
                bundle=f"{r.bundle.name}:{r.bundle.version}",
                role=r.role,
                statistic=r.statistic.value,
                signal=r.signal,
                value=round(r.value, 5),
                threshold=round(r.threshold, 5),
                expected=None if r.expected is None else round(r.expected, 5),
                window_images=r.window.images,
                fake_share=r.fake_share,
                message=r.message,
            )
        return reports

    def _add(self, obs: Observation, t: float) -> None:
        bins = tuple(s.bin(s.read(obs)) for s in self._signals)
        for s, b in zip(self._signals, bins, strict=True):
            if b >= 0:
                s.counts[b] += 1
                s.n += 1
        uncertain = self.band[0] <= obs.score < self.band[1]
        novel = -1
        if self.novelty is not None:
            d = obs.anomaly.get(self.novelty.anomaly_key)
            if d is not None and math.isfinite(d):
                novel = int(d > self.novelty.threshold)
                self._novel += novel
                self._novel_n += 1
        self._uncertain += uncertain
        self._window.append((t, bins, uncertain, novel))
        while len(self._window) > self.settings.window_images:
            self._pop()

    def _pop(self) -> None:
        _, bins, uncertain, novel = self._window.popleft()
        for s, b in zip(self._signals, bins, strict=True):
            if b >= 0:
                s.counts[b] -= 1
                s.n -= 1
        self._uncertain -= uncertain
        if novel >= 0:
            self._novel -= novel
            self._novel_n -= 1

    def _expire(self, now: float) -> None:
        cutoff = now - self.settings.window_s
        while self._window and self._window[0][0] < cutoff:
            self._pop()

    # -- judgement ----------------------------------------------------------------------------------------------
    def _readings(self) -> tuple[list[DriftReading], float]:
        st = self.settings
        p = self._prevalence
        pi = fit_fake_share(p.counts, p.real, p.fake)
        out: list[DriftReading] = []
        for s in self._signals:
            if s.n < st.min_images:
                continue
            d = s.ref.distribution
            q = (1.0 - pi) * s.real + pi * s.fake
            value = psi(s.counts, q)
            thr = psi_threshold(s.n, pi, s.real, s.fake, d.n_real, d.n_fake, 1 if s is p else 0, st)
            out.append(DriftReading(statistic=DriftStatistic.score_shift, signal=s.ref.signal, value=value, threshold=thr, alarm=value > thr))
        n = len(self._window)
        u = self.reference.uncertain
        if n >= st.min_images and self.band[0] < self.band[1]:
            exp, thr = rate_threshold(n, pi, u.real, u.fake, u.n_real, u.n_fake, st)
            rate = self._uncertain / n
            out.append(DriftReading(statistic=DriftStatistic.uncertain_rate, signal="score", value=rate, threshold=thr, expected=exp, alarm=rate > thr))
        nv = self.novelty
        if nv is not None and self._novel_n >= st.min_images:
            # pooled over classes (pi = 0 with the pooled rate): the quantile is pooled by construction, the per-class
            # means make both classes' distances comparable, and splitting a 1% event by class would mostly add noise
            m = nv.n_real + nv.n_fake
            pooled = (nv.exceed_real * nv.n_real + nv.exceed_fake * nv.n_fake) / m
            exp, thr = rate_threshold(self._novel_n, 0.0, pooled, pooled, m, m, st)
            rate = self._novel / self._novel_n
            out.append(DriftReading(statistic=DriftStatistic.novelty_rate, signal=EMBEDDING_SIGNAL, value=rate, threshold=thr, expected=exp, alarm=rate > thr))
        return out, pi

    def _judge(self, now: float) -> list[DriftReport]:
        self._expire(now)
        readings, pi = self._readings()
        if not readings:
            return []
        self.judgements += 1
        self._fake_share = pi
        reports = []
        for r in readings:
            state = self._states.setdefault((r.statistic, r.signal), _State())
            state.reading = r
            if not state.alarm and r.alarm:
                state.alarm = True
                reports.append(self._report(r, DriftStatus.alarm, readings, pi))
            elif state.alarm:
                base = r.expected or 0.0
                if r.value < base + self.settings.recover_fraction * (r.threshold - base):
                    state.alarm = False
                    reports.append(self._report(r, DriftStatus.recovered, readings, pi))
        self._export(readings, pi)
        return reports

    def _report(self, r: DriftReading, status: DriftStatus, readings: list[DriftReading], pi: float) -> DriftReport:
        what = {
            DriftStatistic.score_shift: f"the distribution of {r.signal!r} moved away from validation (PSI {r.value:.3f}, threshold {r.threshold:.3f})",
            DriftStatistic.uncertain_rate: f"{r.value:.1%} of images fall in the uncertain band (expected {r.expected or 0:.1%}, threshold {r.threshold:.1%})",
            DriftStatistic.novelty_rate: f"{r.value:.1%} of images lie beyond the training distribution's p99 (expected {r.expected or 0:.1%}, "
            f"threshold {r.threshold:.1%})",
        }[r.statistic]
        verb = "alarm" if status is DriftStatus.alarm else "recovered"
        message = f"drift {verb} for {self.bundle.name}:{self.bundle.version} ({self.role}): {what}; estimated fake share {pi:.0%}"
        started = datetime.fromtimestamp(self._window[0][0], UTC) if self._window else None
        ended = datetime.fromtimestamp(self._window[-1][0], UTC) if self._window else None
        self.metrics.drift_reports.inc(1, self.role, self.bundle.name, self.bundle.version, r.statistic.value, status.value)
        return DriftReport(
            bundle=self.bundle,
            role=self.role,
            status=status,
            statistic=r.statistic,
            signal=r.signal,
            value=r.value,
            threshold=r.threshold,
            expected=r.expected,
            fake_share=pi,
            window=DriftWindow(
                images=len(self._window), started_at=started, ended_at=ended, max_images=self.settings.window_images, max_seconds=self.settings.window_s
            ),
            readings=readings,
            message=message[:2000],
            worker=self.worker,
        )

    # -- gauges -------------------------------------------------------------------------------------------------
    def _labels(self, r: DriftReading) -> tuple[str, ...]:
        return (self.role, self.bundle.name, self.bundle.version, r.statistic.value, r.signal)

    def _export(self, readings: list[DriftReading], pi: float) -> None:
        m = self.metrics
        ref = (self.role, self.bundle.name, self.bundle.version)
        m.drift_window.set(len(self._window), *ref)
        m.drift_fake_share.set(pi, *ref)
        for r in readings:
            labels = self._labels(r)
            m.drift_value.set(r.value, *labels)
            m.drift_threshold.set(r.threshold, *labels)
            m.drift_alarm.set(1.0 if self._states[(r.statistic, r.signal)].alarm else 0.0, *labels)
            if r.expected is not None:
                m.drift_expected.set(r.expected, *labels)

    def close(self) -> None:
        """Remove this bundle's series from the gauges (call when the bundle stops being served)."""
        m = self.metrics
        with self._lock:
            ref = (self.role, self.bundle.name, self.bundle.version)
            m.drift_window.remove(*ref)
            m.drift_fake_share.remove(*ref)
            for state in self._states.values():
                if state.reading is not None:
                    labels = self._labels(state.reading)
                    for g in (m.drift_value, m.drift_threshold, m.drift_alarm, m.drift_expected):
                        g.remove(*labels)

    # -- inspection ---------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, object]:
        """The window and the latest readings (for tests, the demo and debugging)."""
        with self._lock:
            return {
                "images": len(self._window),
                "fake_share": self._fake_share,
                "judgements": self.judgements,
                "readings": [s.reading for s in self._states.values() if s.reading is not None],
                "alarms": sorted(f"{k[0].value}:{k[1]}" for k, s in self._states.items() if s.alarm),
            }


__all__ = [
    "EMBEDDING_SIGNAL",
    "REFERENCE_BINS",
    "DriftMonitor",
    "DriftSettings",
    "Observation",
    "binned",
    "chi2_quantile",
    "fit_fake_share",
    "psi",
    "psi_threshold",
    "rate_threshold",
    "smoothed",
]
