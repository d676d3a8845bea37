"""Frequency stream fused with the CLIP embedding (AIRL, "Artifact-Invariant Representation Learning"; seed 004).

Two inputs: the CLIP embedding and a native-resolution S x S centre crop
(``native_crop``; the worker's :func:`worker.ingest.preprocess.native_crop`, never a
resized image: resampling erases the upsampling traces this stream looks for).

Frequency stream, all inside the ONNX graph (:class:`HighPassDCT`): grayscale
(ITU-R BT.601 weights) -> minus its mean -> 2-D DCT-II as two MatMuls with a
constant orthonormal basis (C X C^T) -> **high-pass**: the DC coefficient and
every low frequency u + v < ``lowcut`` x S are set to 0 -> log1p(|c| / eps) ->
divided by each frequency's training RMS -> a small CNN (three stride-2 3x3
convolutions, 8/16/32 channels, average pooling to 4x4 so that coarse
frequency *position* survives: a spectrum is not translation invariant) ->
128-d. AIRL looks at "the high frequency spectral noise generated when
upsampling" and detects "by isolating the high-frequency residuals"; the
high-pass keeps the image's content (its DC and low frequencies, which carry
the semantics the other stream already sees) out of this stream. Every step
maps a zero residual to zero, so a flat image, or any image's low-frequency
part, gives an all-zero frequency input. Semantic stream: the standardised
CLIP embedding -> 128-d (the paper's RGB stream is an EfficientNet-B4; here
CLIP is the design's frozen backbone). Fusion: concatenation -> Linear + ReLU
(128) -> logit.

Loss: supervised contrastive loss on a projection of the fused feature with
two classes, real and fake, so that all generators are one class (the paper's
"force the model to apply all fakes to a single class") plus BCE
(class-balanced ``pos_weight``, ours, as in :mod:`export.heads.gendet`).

Training augmentation, for the robustness the paper reports ("a mixture of
Blur and JPEG compression"): every epoch each training crop is, with
probability ``blur_prob`` (0.5), Gaussian-blurred with sigma ~ U[0, 3) and,
with probability ``jpeg_prob`` (0.5), JPEG round-tripped at a quality drawn
from 30..100: UniversalFakeDetect's draws (:mod:`export.augment`), applied to
the 64-px crop (the embedding was computed once from the clean image, so only
the frequency stream sees the degraded pixels; ``embed --augment`` covers the
semantic stream).

The paper gives no hyper-parameters; chosen here and configurable: crop 64,
low-frequency cut 1/4 of the crop side (u + v < 16 at 64 px: 136 of 4096
coefficients, periods longer than ~8 px), temperature 0.1, CE weight 1.0,
AdamW lr 1e-3, weight decay 1e-4, 30 epochs, batch 64, the augmentation
probabilities above.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from export.augment import AugmentSpec, gaussian_blur, jpeg_round_trip
from export.heads.base import EmbeddingSet, FitReport, HeadConfig, HeadMethod
from export.heads.blocks import Standardize, balanced_class_weight, minibatches, mlp, require_both_classes
from export.heads.losses import supcon_loss

GRAY = (0.299, 0.587, 0.114)


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis C (n x n): DCT(X) = C X C^T, inverse C^T Y C."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.astype(np.float32)


class FreqConfig(HeadConfig):
    crop_size: int = 64
    channels: tuple[int, int, int] = (8, 16, 32)
    feature: int = 128
    proj_dim: int = 128
    tau: float = 0.1
    ce_weight: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 30
    batch_size: int = 64
    log_eps: float = 1e-4
    lowcut: float = 0.25
    blur_prob: float = 0.5
    jpeg_prob: float = 0.5


class LogDCT(nn.Module):
    """RGB crop in [0,1] (N, 3, S, S) -> standardised log |DCT-II| of its grayscale (N, 1, S, S), DC included.

    The stream before the high-pass (:class:`HighPassDCT`); kept so that freq
    checkpoints saved with it still load and export as they were trained.
    """

    # Buffers (register_buffer), named for the type checker: nn.Module.__getattr__ is typed Tensor | Module.
    basis: torch.Tensor
    gray: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.register_buffer("basis", torch.from_numpy(dct_matrix(size)))
        self.register_buffer("gray", torch.tensor(GRAY).view(1, 3, 1, 1))
        self.register_buffer("mean", torch.zeros(1, 1, size, size))
        self.register_buffer("std", torch.ones(1, 1, size, size))
        self.eps = eps

    def spectrum(self, crop: torch.Tensor) -> torch.Tensor:
        g = (crop * self.gray).sum(dim=1, keepdim=True)
        coeffs = torch.matmul(torch.matmul(self.basis, g), self.basis.t())
        return torch.log(coeffs.abs() + self.eps)

    @torch.no_grad()
    def fit(self, crops: torch.Tensor, batch: int = 256) -> LogDCT:
        specs = torch.cat([self.spectrum(crops[lo : lo + batch]) for lo in range(0, len(crops), batch)])
        self.mean.copy_(specs.mean(dim=0, keepdim=True))
        self.std.copy_(specs.std(dim=0, keepdim=True, unbiased=False).clamp(min=1e-3))
        return self

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return (self.spectrum(crop) - self.mean) / self.std


def lowpass_mask(size: int, lowcut: float) -> np.ndarray:
    """1 where a DCT coefficient (u, v) is kept (u + v >= lowcut * size, never DC), 0 where the high-pass drops it."""
    cut = max(1, round(lowcut * size))
    u, v = np.indices((size, size))
    return ((u + v) >= cut).astype(np.float32)


class HighPassDCT(nn.Module):
    """RGB crop in [0,1] (N, 3, S, S) -> scaled log1p(|high-pass DCT-II| / eps) of its grayscale (N, 1, S, S)."""

    # Buffers (register_buffer), named for the type checker: nn.Module.__getattr__ is typed Tensor | Module.
    basis: torch.Tensor
    gray: torch.Tensor
    keep: torch.Tensor
    scale: torch.Tensor

    def __init__(self, size: int, eps: float, lowcut: float) -> None:
        super().__init__()
        self.register_buffer("basis", torch.from_numpy(dct_matrix(size)))
        self.register_buffer("gray", torch.tensor(GRAY).view(1, 3, 1, 1))
        self.register_buffer("keep", torch.from_numpy(lowpass_mask(size, lowcut)).view(1, 1, size, size))
        self.register_buffer("scale", torch.ones(1, 1, size, size))
        self.eps = eps

    def coefficients(self, crop: torch.Tensor) -> torch.Tensor:
        """DCT-II of the grayscale residual (image minus its mean), low frequencies zeroed."""
        g = (crop * self.gray).sum(dim=1, keepdim=True)
        g = g - g.mean(dim=(2, 3), keepdim=True)
        return torch.matmul(torch.matmul(self.basis, g), self.basis.t()) * self.keep

    def unscaled(self, crop: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.coefficients(crop).abs() / self.eps)

    @torch.no_grad()
    def fit(self, crops: torch.Tensor, batch: int = 256) -> HighPassDCT:
        """Per-frequency RMS over the training crops (RMS, not std: a zero residual must stay zero)."""
        sq = sum((self.unscaled(crops[lo : lo + batch]) ** 2).sum(dim=0, keepdim=True) for lo in range(0, len(crops), batch))
        rms = torch.sqrt(torch.as_tensor(sq) / max(1, len(crops)))
        self.scale.copy_(rms.clamp(min=1e-3))
        return self

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return self.unscaled(crop) / self.scale


class FreqNet(nn.Module):
    """The fused two-stream network; ``features`` feeds both the classifier and the SupCon projection."""

    def __init__(self, dim: int, cfg: FreqConfig) -> None:
        super().__init__()
        s = cfg.crop_size
        if s % 32:
            raise ValueError(f"freq crop_size must be a multiple of 32, got {s}")
        c1, c2, c3 = cfg.channels
        self.dct: nn.Module = HighPassDCT(s, cfg.log_eps, cfg.lowcut)
        self.cnn = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(s // 32),
            nn.Flatten(),
            nn.Linear(c3 * 16, cfg.feature),
            nn.ReLU(),
        )
        self.std = Standardize(dim)
        self.semantic = nn.Sequential(nn.Linear(dim, cfg.feature), nn.ReLU())
        self.fuse = nn.Sequential(nn.Linear(2 * cfg.feature, cfg.feature), nn.ReLU())
        self.classifier = nn.Linear(cfg.feature, 1)

    def features(self, embedding: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.semantic(self.std(embedding)), self.cnn(self.dct(crop))], dim=1))

    def forward(self, embedding: torch.Tensor, native_crop: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(self.features(embedding, native_crop))).squeeze(-1)


def degrade(crops: torch.Tensor, rng: np.random.Generator, cfg: FreqConfig) -> tuple[torch.Tensor, int]:
    """UFD's blur / JPEG draws on a batch of [0,1] crops (N, 3, S, S); returns the batch and how many crops were changed."""
    spec = AugmentSpec()
    out = crops.clone()
    changed = 0
    for i in range(len(crops)):
        sigma = float(rng.uniform(*spec.blur_sigma)) if rng.random() < cfg.blur_prob else None
        quality = int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1)) if rng.random() < cfg.jpeg_prob else None
        if sigma is None and quality is None:
            continue
        rgb = np.clip(np.rint(crops[i].permute(1, 2, 0).numpy() * 255.0), 0, 255).astype(np.uint8)
        if sigma is not None:
            rgb = gaussian_blur(rgb, sigma)
        if quality is not None:
            rgb = np.ascontiguousarray(jpeg_round_trip(rgb, quality))
        out[i] = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)
        changed += 1
    return out, changed


class Freq(HeadMethod):
    name = "freq"
    paper = "Generalizable Deepfake Detection via Artifact-Invariant Representation Learning (AIRL), seed 004"
    Config = FreqConfig
    inputs = ("embedding", "native_crop")
    config: FreqConfig

    def __init__(self, config: FreqConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.crop_size = self.config.crop_size  # instance value: the manifest asks the worker for this crop
        self.net: FreqNet | None = None

    def fit(self, train: EmbeddingSet, val: EmbeddingSet | None = None, progress: bool = False) -> FitReport:
        from tqdm import tqdm

        cfg = self.config
        require_both_classes(train.labels, self.name)
        if train.native is None:
            raise ValueError(f"freq needs native crops: embed the dataset with `python -m export embed --native-crop {cfg.crop_size}`")
        if train.native.shape[-1] != cfg.crop_size:
            raise ValueError(
                f"freq crop_size is {cfg.crop_size} but the embeddings hold {train.native.shape[-1]}px crops; re-embed with --native-crop {cfg.crop_size}"
            )
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        net = FreqNet(train.dim, cfg)
        x = torch.from_numpy(train.embeddings)
        crops = torch.from_numpy(train.native)
        y = torch.from_numpy(train.labels)
        net.std.fit(train.embeddings)
        assert isinstance(net.dct, HighPassDCT)
        net.dct.fit(crops)
        rng = np.random.default_rng(cfg.seed)
        proj = mlp(cfg.feature, cfg.feature, cfg.proj_dim)
        params = [p for n, p in net.named_parameters() if not n.startswith(("std.", "dct."))] + list(proj.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        bce = nn.BCEWithLogitsLoss(pos_weight=balanced_class_weight(train.labels))
        history: list[dict[str, Any]] = []
        for epoch in tqdm(range(1, cfg.epochs + 1), desc="freq", disable=not progress):
            net.train()
            sums, batches, augmented = np.zeros(3), 0, 0
            for idx in minibatches(len(x), cfg.batch_size, gen):
                if len(idx) < 2:
                    continue
                batch_crops, n_aug = degrade(crops[idx], rng, cfg)
                augmented += n_aug
                feats = net.features(x[idx], batch_crops)
                l_con = supcon_loss(proj(feats), y[idx], cfg.tau)
                l_ce = bce(net.classifier(feats).squeeze(-1), y[idx].float())
                loss = l_con + cfg.ce_weight * l_ce
                opt.zero_grad()
                loss.backward()
                opt.step()
                sums += [loss.item(), l_con.item(), l_ce.item()]
                batches += 1
            sums /= max(1, batches)
            history.append({"stage": "freq", "epoch": epoch, "loss": sums[0], "supcon": sums[1], "ce": sums[2], "augmented": augmented / len(x)})
        self.net = net.eval()
        return FitReport(epochs=cfg.epochs, final_loss=float(history[-1]["loss"]) if history else float("nan"), history=history)

    def inference_module(self) -> nn.Module:
        if self.net is None:
            raise RuntimeError("freq is not fitted")
        return self.net.eval()
