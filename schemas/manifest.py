"""The model bundle contract shared by the PyTorch side (writer) and the worker (reader).

A bundle is a directory: ``manifest.json`` plus the ONNX files it names. The
manifest pins every file by sha256 so that a worker can refuse a bundle that was
altered or half-copied, and the bundle's own identity (what verdicts and cache
keys refer to) is the sha256 of ``manifest.json`` itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.monitoring import AttributionHead, DriftReference

MANIFEST_SCHEMA_VERSION: Final = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Named preprocessing modes. ``clip``: open_clip's eval transform (shortest side resized to
#: image_size, centre crop). ``ufd``: UniversalFakeDetect's ``validate.py`` (CenterCrop(image_size) at
#: native resolution, no resize; images smaller than the crop are zero-padded, as torchvision does).
PreprocessMode = Literal["clip", "ufd"]


class Preprocess(_Model):
    """How pixels become the backbone's input: a named mode, its parameters spelled out.

    The worker serves the mode the bundle declares, and embedding/training use
    the same function (:func:`worker.ingest.preprocess.clip_input`), so heads
    train on exactly what is served.
    """

    mode: PreprocessMode = Field(
        "clip",
        description="clip: open_clip's eval transform (resize shortest side, centre crop). "
        "ufd: UniversalFakeDetect's test transform (centre crop at native resolution, no resize, zero padding below the crop size).",
    )
    image_size: int = Field(gt=0, description="Side of the square crop fed to the backbone.")
    resize_mode: Literal["shortest"] = Field("shortest", description="clip mode: resize the shortest side to image_size, then centre-crop. Unused by ufd.")
    interpolation: Literal["bicubic", "bilinear"] = Field("bicubic", description="clip mode's resize filter. Unused by ufd.")
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    allow_draft: bool = Field(
        False,
        description="Decode JPEGs with libjpeg's DCT-domain downscale (Pillow draft mode, never below image_size on the short side) before the "
        "clip resize, in embedding and serving alike. Faster on large photographs but not the pixels the paper's transform sees (it moves scores "
        "by ~1e-4), so off unless the bundle was built with --allow-draft. Always false for ufd, which reads native pixels.",
    )

    @model_validator(mode="before")
    @classmethod
    def _ufd_is_native(cls, data: Any) -> Any:
        """ufd crops native pixels: a draft-decoded (downscaled) JPEG would show it other pixels, so draft is off by construction."""
        if isinstance(data, dict) and data.get("mode") == "ufd":
            if data.get("allow_draft") is True:
                raise ValueError("preprocess mode ufd reads native-resolution pixels; allow_draft must be false")
            data = {**data, "allow_draft": False}
        return data


class Weights(_Model):
    """Where the backbone's weights came from, so a bundle says whether it is a real detector."""

    source: Literal["tag", "checkpoint", "random"] = Field(description="tag: an open_clip pretrained tag. checkpoint: a local file. random: random init.")
    tag: str | None = Field(None, description="The open_clip pretrained tag (source tag).")
    file: str | None = Field(None, description="The checkpoint's file name (source checkpoint).")
    sha256: str | None = Field(None, description="sha256 of the checkpoint file (source checkpoint).")
    seed: int | None = Field(None, description="Seed of the random init (source random).")
    openai: bool = Field(False, description="OpenAI's CLIP weights, which were trained with QuickGELU and are always run with it.")
    evidence: str | None = Field(
        None, description="Why the weights were taken for OpenAI's (a tag, a TorchScript archive, OpenAI's state-dict keys, a release sha256, or declared)."
    )

    @property
    def label(self) -> str:
        """Short form for metrics and logs: random, tag:openai, checkpoint:ViT-L-14.pt@sha256:0123456789ab."""
        if self.source == "random":
            return "random"
        if self.source == "tag":
            return f"tag:{self.tag}"
        return f"checkpoint:{self.file}@sha256:{(self.sha256 or '')[:12]}"


class Backbone(_Model):
    """The frozen open_clip image encoder, exported to ONNX."""

    architecture: str = Field(description="open_clip model name, e.g. ViT-L-14 or the project's aigis-tiny.")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or checkpoint file name; None for random weights.")
    file: str
    input_name: str = "pixel_values"
    output_name: str = "embedding"
    embed_dim: int = Field(gt=0)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    preprocess: Preprocess
    activation: Literal["gelu", "quick_gelu"] | None = Field(
        None, description="MLP activation the encoder ran with (OpenAI weights need quick_gelu). None in bundles made before it was recorded."
    )
    weights: Weights | None = Field(None, description="Where the weights came from. None in bundles made before it was recorded.")


class HeadInput(_Model):
    """One input tensor of a head graph and what the worker feeds it."""

    name: str
    source: Literal["embedding", "native_crop"] = Field(
        description="embedding: backbone output (N, D). native_crop: RGB float32 in [0,1], (N, 3, S, S), centre crop at native resolution, never resized."
    )
    crop_size: int | None = Field(None, description="S for native_crop inputs.")


class Head(_Model):
    """A detector head: an ONNX graph whose ``probability`` output is P(AI-generated)."""

    name: str = Field(description="Unique within the bundle; keys the verdict's head_scores.")
    method: str = Field(description="Registry name of the method (linear-probe, gendet, knn, ...).")
    file: str
    inputs: list[HeadInput]
    probability_output: str = "probability"
    anomaly_outputs: list[str] = Field(default_factory=list, description="Extra outputs exposed in the verdict's anomaly map (e.g. discrepancy).")
    weight: float = Field(1.0, gt=0, description="Weight in the log-odds fusion when the bundle has several heads.")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict, description="Summary of the data the head was fit on.")
    trained: bool = Field(True, description="False for a placeholder head with random weights.")


class Calibration(_Model):
    """Operating point: scores >= uncertain_high are AI, < uncertain_low are real, between is uncertain."""

    threshold: float = Field(ge=0, le=1)
    uncertain_low: float = Field(ge=0, le=1)
    uncertain_high: float = Field(ge=0, le=1)
    target_fpr: float | None = Field(None, gt=0, lt=1)
    calibrated: bool = Field(description="True when the threshold was set on held-out validation data.")
    threshold_source: Literal["validation", "paper", "placeholder"] | None = Field(
        None,
        description="validation: set on this bundle's validation split. paper: the published detector's own threshold (e.g. UFD's 0.5), "
        "not calibrated on the user's data. placeholder: an untrained head's 0.5. None in bundles made before it was recorded.",
    )
    validation: dict[str, Any] = Field(default_factory=dict, description="Metrics measured on the calibration split.")

    @model_validator(mode="after")
    def _ordered(self) -> Calibration:
        if not self.uncertain_low <= self.threshold <= self.uncertain_high:
            raise ValueError("need uncertain_low <= threshold <= uncertain_high")
        return self


class Parity(_Model):
    """PyTorch vs ONNX Runtime agreement measured at export time."""

    backbone_max_abs_diff: float
    head_max_abs_diff: dict[str, float] = Field(default_factory=dict)
    tolerance: float
    samples: int
    passed: bool


class Fidelity(_Model):
    """How closely a derived bundle (int8 / fp16 / fused graph) reproduces the fp32 bundle it was made from.

    Written by ``python -m export variant``. Measured with the worker's own
    runtime on real photographs, because a quantised backbone that drifts from
    the one the heads were trained on silently moves every score.
    """

    reference_name: str
    reference_version: str
    reference_sha256: str = Field(description="sha256 of the fp32 bundle's manifest.json this variant derives from.")
    precision: Literal["fp32", "fp16", "int8"]
    transforms: list[str] = Field(default_factory=list, description="What was applied, in order (e.g. 'fusion:clip', 'quantize_dynamic:int8/per_channel').")
    fused_operators: dict[str, int] = Field(default_factory=dict, description="Operator counts the transformer fusion produced (empty without fusion).")
    measured: bool = Field(description="False when the variant could not run where it was built (e.g. fp16 without a GPU); the fields below are then None.")
    provider: str | None = Field(None, description="ONNX Runtime provider the comparison ran on.")
    images: int = Field(0, ge=0, description="Number of real photographs (and crops of them) compared.")
    image_source: str | None = None
    embedding_cosine_min: float | None = None
    embedding_cosine_mean: float | None = None
    score_abs_diff_max: float | None = Field(None, description="Largest |variant score - fp32 score| over the images.")
    score_abs_diff_mean: float | None = None
    label_agreement: float | None = Field(None, description="Fraction of images whose label (at the bundle's calibration) is unchanged.")
    note: str | None = None


class BundleManifest(_Model):
    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    name: str
    version: str
    created_at: datetime
    backbone: Backbone
    heads: list[Head] = Field(min_length=1)
    fusion: Literal["log_odds_mean"] = Field("log_odds_mean", description="How several heads' probabilities combine: weighted mean of logits.")
    calibration: Calibration
    parity: Parity | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, description="Evaluation results recorded at build time.")
    files: dict[str, str] = Field(description="File name (relative to the bundle directory) -> sha256 hex digest, for every file the bundle needs.")
    notes: list[str] = Field(default_factory=list)
    fidelity: Fidelity | None = Field(None, description="Set on variants (int8/fp16/fused) made from an fp32 bundle: how far they drift from it.")
    drift: DriftReference | None = Field(None, description="Validation distributions the worker's label-free drift statistics compare the stream with.")
    attribution: AttributionHead | None = Field(None, description="Generator-attribution head (which family an image resembles); never fused into the score.")

    @model_validator(mode="after")
    def _files_cover_graphs(self) -> BundleManifest:
        needed = {self.backbone.file, *(h.file for h in self.heads)}
        if self.drift is not None and self.drift.novelty is not None:
            needed.add(self.drift.novelty.file)
        if self.attribution is not None:
            needed.add(self.attribution.file)
        missing = needed - set(self.files)
        if missing:
            raise ValueError(f"files map lacks a sha256 for {sorted(missing)}")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError("head names must be unique")
        return self

    @property
    def native_crop_size(self) -> int | None:
        """Largest native crop any head asks for (None when no head needs raw pixels)."""
        sizes = [i.crop_size or 0 for h in self.heads for i in h.inputs if i.source == "native_crop"]
        return max(sizes) if sizes else None
