"""The physical limit: FLOPs per image for a backbone, and what this CPU can do per second.

FLOPs are counted two ways and both are reported: analytically from the
open_clip ViT's shapes (patch embedding, per block QKV / attention / output /
MLP, final projection), and with ``torch.utils.flop_counter`` as a cross-check.
The counter sees the matmuls and convolutions but not the fused
scaled-dot-product-attention kernel on CPU, so it comes out lower by exactly the
attention-core term; the analytic figure is the one used for the limit.

The roofline is the best fp32 matrix-multiply rate this machine sustains
(large square matmuls in torch and numpy, all cores): an upper bound on what any
runtime can get out of a backbone that is ~99 % matmul.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def vit_flops(encoder: torch.nn.Module) -> dict[str, Any]:
    """Analytic FLOPs (2 per multiply-add) of one image through an open_clip VisionTransformer."""
    visual: Any = getattr(encoder, "visual", encoder)  # open_clip's VisionTransformer: attributes read by name
    conv = visual.conv1
    width = conv.out_channels
    patch = conv.kernel_size[0]
    tokens = visual.positional_embedding.shape[0]
    patches = tokens - 1
    blocks = list(visual.transformer.resblocks)
    mlp = blocks[0].mlp.c_fc.out_features
    proj = visual.proj.shape[1] if getattr(visual, "proj", None) is not None else 0
    per_block = {
        "qkv": 2 * tokens * width * 3 * width,
        "attention_core": 2 * 2 * tokens * tokens * width,
        "attention_out": 2 * tokens * width * width,
        "mlp": 2 * 2 * tokens * width * mlp,
    }
    parts = {
        "patch_embed": 2 * patches * 3 * patch * patch * width,
        **{k: v * len(blocks) for k, v in per_block.items()},
        "projection": 2 * width * proj,
    }
    return {
        "gflops": sum(parts.values()) / 1e9,
        "parts_gflops": {k: v / 1e9 for k, v in parts.items()},
        "shape": {"tokens": tokens, "width": width, "layers": len(blocks), "mlp": mlp, "patch": patch, "embed_dim": proj or width},
    }


def counted_flops(encoder: torch.nn.Module, image_size: int) -> float:
    """GFLOPs that torch's flop counter sees for one image.

    Grad mode stays on so that nn.MultiheadAttention takes its decomposed path
    (the no-grad fast path is one opaque kernel the counter does not count).
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as fc, torch.enable_grad():
        encoder(x)
    return fc.get_total_flops() / 1e9


def matmul_peak_gflops(n: int = 2048, seconds: float = 2.0) -> dict[str, float]:
    """Best sustained fp32 GFLOP/s of an n x n matmul, torch and numpy, over ~``seconds`` each."""
    out: dict[str, float] = {}
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    flop = 2.0 * n**3

    def best(fn: Callable[[], object]) -> float:
        fn()
        bests: list[float] = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(bests) < 3:
            t0 = time.perf_counter()
            fn()
            bests.append(time.perf_counter() - t0)
        return flop / min(bests) / 1e9

    out["torch_fp32"] = best(lambda: torch.mm(a, b))
    an, bn = a.numpy(), b.numpy()
    out["numpy_fp32"] = best(lambda: np.dot(an, bn))
    out["threads_torch"] = float(torch.get_num_threads())
    return out
