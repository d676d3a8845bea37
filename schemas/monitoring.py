"""Manifest sections for watching a bundle in production: the drift reference and the attribution head.

Both are written by the bundle writer from the bundle's own validation split
and read by the worker; neither changes the fused score or the label.

* :class:`DriftReference`: what the live stream is compared with, without
  labels. Binned validation distributions (per class) of the fused score, of
  every head's score and of every anomaly output; the validation rate of the
  uncertain band (per class); and the embedding novelty model (a small ONNX
  graph in the bundle whose output, the distance of an image's embedding to
  the training distribution, rides in the verdict's anomaly map) with its
  validation 99th percentile.
* :class:`AttributionHead`: a multi-class head over the training set's
  generator families plus ``real``, with an ``unknown`` threshold calibrated on
  validation. It says which family an image resembles; it is never fused into
  the detection score.

Distributions are stored per class (real, fake) rather than pooled because the
live share of AI-generated images is not the validation split's (50/50 on most
training sets): the worker fits that share and compares the live histogram
with the matching mixture, so a change in how many fakes are uploaded is not
mistaken for a stale model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Anomaly-map key under which the novelty graph's output rides in verdicts and the cache.
NOVELTY_KEY = "monitor.novelty"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BinnedDistribution(_Model):
    """Shares of the validation images per bin, for real and fake images separately.

    ``edges`` are the interior bin edges, ascending: bin 0 is ``(-inf, edges[0])``,
    bin i is ``[edges[i-1], edges[i])``, the last is ``[edges[-1], +inf)``. They
    are quantiles of the pooled validation values, so every bin holds data.
    """

    edges: list[float] = Field(min_length=1)
    real: list[float] = Field(description="Share of validation real images in each bin (sums to 1).")
    fake: list[float] = Field(description="Share of validation fake images in each bin (sums to 1).")
    n_real: int = Field(ge=1)
    n_fake: int = Field(ge=1)

    @model_validator(mode="after")
    def _shapes(self) -> BinnedDistribution:
        if len(self.real) != len(self.edges) + 1 or len(self.fake) != len(self.edges) + 1:
            raise ValueError("need len(real) == len(fake) == len(edges) + 1")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly ascending")
        for name in ("real", "fake"):
            shares = getattr(self, name)
            if any(s < 0 for s in shares) or abs(sum(shares) - 1) > 1e-6:
                raise ValueError(f"{name} shares must be >= 0 and sum to 1")
        return self


class SignalReference(_Model):
    """One monitored signal of a verdict and its validation distribution."""

    signal: str = Field(description="Name in gauges and drift reports: 'score' (fused), a head name, or an anomaly key such as 'gendet.discrepancy'.")
    source: Literal["score", "head_scores", "anomaly"] = Field(description="Where the worker reads the value: the fused score, or a key of that map.")
    key: str | None = Field(None, description="Key in head_scores / anomaly (None for the fused score).")
    distribution: BinnedDistribution


class UncertainReference(_Model):
    """Validation share of images whose fused score fell in the uncertain band, per class."""

    real: float = Field(ge=0, le=1)
    fake: float = Field(ge=0, le=1)
    n_real: int = Field(ge=1)
    n_fake: int = Field(ge=1)


class NoveltyModel(_Model):
    """Distance of an embedding to the training distribution, as an ONNX graph in the bundle.

    Tied-covariance Mahalanobis distance (Lee et al., 2018) to the nearest class
    mean, the classes being ``real`` and every training generator family; the
    covariance is pooled over classes and shrunk towards a scaled identity
    (Ledoit-Wolf), which keeps it invertible when images are few against the
    embedding's dimension. The graph is one matrix product and a min.
    """

    file: str
    input_name: str = "embedding"
    output_name: str = "novelty"
    anomaly_key: str = Field(NOVELTY_KEY, description="Key of the graph's output in the verdict's anomaly map.")
    components: list[str] = Field(min_length=1, description="Classes whose means the distance is measured to.")
    shrinkage: float = Field(ge=0, le=1, description="Ledoit-Wolf shrinkage intensity towards the scaled identity.")
    fit_images: int = Field(ge=1, description="Training images the means and covariance were estimated on.")
    quantile: float = Field(0.99, gt=0, lt=1)
    threshold: float = Field(
        description="The quantile of the distance over held-out images (out-of-fold over training + validation, see n_real/n_fake): farther is 'novel'."
    )
    exceed_real: float = Field(ge=0, le=1, description="Share of held-out real images beyond the threshold.")
    exceed_fake: float = Field(ge=0, le=1, description="Share of held-out fake images beyond the threshold.")
    n_real: int = Field(ge=1)
    n_fake: int = Field(ge=1)


class DriftReference(_Model):
    """What the worker's drift statistics compare the live stream with (measured on the bundle's validation split)."""

    computed_on: str = Field(description="Which images, e.g. 'validation split (96 real, 96 fake) scored by ONNX Runtime'.")
    signals: list[SignalReference] = Field(min_length=1)
    uncertain: UncertainReference
    novelty: NoveltyModel | None = None
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> DriftReference:
        names = [s.signal for s in self.signals]
        if len(set(names)) != len(names):
            raise ValueError("signal names must be unique")
        return self


class AttributionHead(_Model):
    """A generator-attribution head: P(family) over the training families and ``real``; not fused into the score."""

    file: str
    input_name: str = "embedding"
    output_name: str = "probabilities"
    classes: list[str] = Field(min_length=2, description="Output columns, in order: the training generator families and 'real'.")
    unknown_threshold: float = Field(ge=0, le=1, description="Top probability below this is reported as family 'unknown'.")
    coverage: float = Field(gt=0, le=1, description="Share of validation images the threshold keeps attributed (the calibration target).")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    validation: dict[str, Any] = Field(default_factory=dict, description="Accuracy, per-class accuracy and confusion matrix on the validation split.")

    @model_validator(mode="after")
    def _classes(self) -> AttributionHead:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("attribution classes must be unique")
        if "unknown" in self.classes:
            raise ValueError("'unknown' is reserved for images below the threshold")
        return self


__all__ = ["NOVELTY_KEY", "AttributionHead", "BinnedDistribution", "DriftReference", "NoveltyModel", "SignalReference", "UncertainReference"]
