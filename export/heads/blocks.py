"""Building blocks shared by the heads: feature standardisation, vector->tokens transformer, MLPs, batching.

Everything here is exportable to ONNX (opset 17) with the TorchScript exporter
used by :mod:`export.onnx_io`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


class Standardize(nn.Module):
    """(x - mean) / std with statistics fitted on the training split and frozen into the graph.

    CLIP embeddings are not centred and their scale depends on the backbone
    (a random-weight test encoder differs from ViT-L/14 by orders of magnitude);
    standardising makes the paper's learning rates mean the same thing on both.
    """

    # Buffers (register_buffer), named for the type checker: nn.Module.__getattr__ is typed Tensor | Module.
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: np.ndarray | torch.Tensor) -> Standardize:
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        self.mean.copy_(t.mean(dim=0))
        self.std.copy_(t.std(dim=0, unbiased=False).clamp(min=1e-6 * float(t.std()) + 1e-12))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SelfAttention(nn.Module):
    """Multi-head self-attention written out (softmax(QK^T / sqrt(d)) V).

    Not ``nn.MultiheadAttention``: with frozen weights (teacher, student) it
    takes a fused fast path (aten::_native_multi_head_attention) that has no
    ONNX export, and it would compute differently from the exported graph.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim), dim=-1)
        return self.out(torch.matmul(attn, v).transpose(1, 2).reshape(n, t, w))


class TransformerBlock(nn.Module):
    """One pre-norm transformer encoder layer: x + MHA(LN(x)); x + FFN(LN(x))."""

    def __init__(self, width: int = 196, heads: int = 4, ffn_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, width * ffn_ratio), nn.GELU(), nn.Linear(width * ffn_ratio, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class VectorTransformer(nn.Module):
    """A feature vector (N, D) -> T tokens of width W -> one transformer block -> (N, T, W).

    How a vector becomes tokens (GenDet does not say; its networks are "a
    transformer block" of width 196 applied to a CLIP feature vector): a learned
    linear projection of the D-dim vector to T x W, plus a learned position
    embedding. With a single token, self-attention is the identity (softmax over
    one key) and the block degenerates to an MLP; T > 1 tokens give attention
    something to mix while keeping every token a function of the whole vector
    (chunking the vector into T slices would tie tokens to arbitrary coordinate
    ranges of the embedding, which have no spatial meaning).
    """

    def __init__(self, in_dim: int, tokens: int = 4, width: int = 196, heads: int = 4, ffn_ratio: int = 4) -> None:
        super().__init__()
        self.tokens, self.width = tokens, width
        self.to_tokens = nn.Linear(in_dim, tokens * width)
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))
        nn.init.normal_(self.pos, std=0.02)
        self.block = TransformerBlock(width, heads, ffn_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.to_tokens(x).reshape(-1, self.tokens, self.width) + self.pos
        return self.block(t)


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Two-layer MLP (the projection heads of SimCLR/SupCon/NTF)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def minibatches(n: int, batch_size: int, gen: torch.Generator, shuffle: bool = True) -> Iterator[torch.Tensor]:
    """Index batches covering 0..n-1 once (one epoch)."""
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for lo in range(0, n, batch_size):
        yield order[lo : lo + batch_size]


def balanced_class_weight(labels: np.ndarray) -> torch.Tensor:
    """pos_weight for BCE so that an unbalanced training set does not tilt the classifier."""
    pos = float((labels == 1).sum())
    neg = float((labels == 0).sum())
    return torch.tensor(neg / pos if pos > 0 else 1.0, dtype=torch.float32)


def require_both_classes(labels: np.ndarray, method: str) -> None:
    if not ((labels == 0).any() and (labels == 1).any()):
        raise ValueError(f"{method} needs real (label 0) and fake (label 1) training samples")
