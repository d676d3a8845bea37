"""Embed the Stable Diffusion DWT-DCT watermark, torch-free, for unit tests and the demo.

The reference encoder (``invisible-watermark``'s ``dwtDct``) imports torch and
OpenCV, so the worker's unit tests cannot use it; this is the same algorithm
written from its description with numpy and PyWavelets (see
:mod:`worker.ingest.provenance.watermark` for the algorithm). It differs from
the reference in what does not matter for reading the mark: it rounds instead
of truncating when writing U back, and reconstructs the image with the detail
bands in their proper order (the reference swaps horizontal and vertical
details, a harmless bug). Like the reference scripts, it embeds SD 1/2
payloads in OpenCV's 8-bit YUV and the SDXL payload in its float YUV (see the
decoder's docstring for why that matters). That the worker's decoder reads what the *reference*
encoder writes is proven separately, in ``tests/export/test_watermark_reference.py``.
"""

from __future__ import annotations

import numpy as np
import pywt

from worker.ingest.provenance.watermark import PAYLOADS, STEP, u_plane, u_plane_f32


def _yuv(rgb: np.ndarray, domain: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Y, U, V planes (float64) and the chroma offset, as OpenCV computes them for 8-bit (``u8``) or float32 (``f32``) input."""
    if domain == "u8":
        r, g, b = (rgb[..., k].astype(np.int32) for k in range(3))
        y = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
        v = ((r - y) * 14369 + (128 << 14) + (1 << 13)) >> 14  # 0.877 * 2**14
        return y.astype(np.float64), u_plane(rgb).astype(np.float64), np.clip(v, 0, 255).astype(np.float64), 128.0
    f = rgb.astype(np.float64)
    yf = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    return yf, u_plane_f32(rgb).astype(np.float64), (f[..., 0] - yf) * 0.877 + 0.5, 0.5


def embed(rgb: np.ndarray, payload: str | np.ndarray = "sdxl", step: int = STEP, domain: str | None = None) -> np.ndarray:
    """``rgb`` (H x W x 3 uint8) with ``payload`` (a name from :data:`PAYLOADS` or a bool array) embedded in its U plane.

    ``domain``: ``u8`` (the SD 1/2 scripts: 8-bit YUV) or ``f32`` (SDXL: float YUV); by default the one the
    payload's reference script uses.
    """
    bits = PAYLOADS[payload] if isinstance(payload, str) else np.asarray(payload, dtype=bool)
    if domain is None:
        domain = "f32" if isinstance(payload, str) and payload == "sdxl" else "u8"
    h, w = rgb.shape[:2]
    h4, w4 = h // 4 * 4, w // 4 * 4
    y, u, v, offset = _yuv(rgb, domain)
    ll, details = pywt.dwt2(u[:h4, :w4], "haar")
    bh, bw = ll.shape[0] // 4, ll.shape[1] // 4
    blocks = ll[: bh * 4, : bw * 4].reshape(bh, 4, bw, 4).transpose(0, 2, 1, 3).reshape(bh * bw, 16)
    pos = np.argmax(np.abs(blocks[:, 1:]), axis=1) + 1
    rows = np.arange(blocks.shape[0])
    value = blocks[rows, pos]
    bit = bits[rows % bits.size].astype(np.float64)
    quantised = (np.abs(value) // step + 0.25 + 0.5 * bit) * step
    blocks[rows, pos] = np.where(value >= 0, quantised, -quantised)
    ll[: bh * 4, : bw * 4] = blocks.reshape(bh, bw, 4, 4).transpose(0, 2, 1, 3).reshape(bh * 4, bw * 4)
    u = u.copy()
    u[:h4, :w4] = pywt.idwt2((ll, details), "haar")
    uu, vv = u - offset, v - offset
    r = y + 1.140 * vv
    g = y - 0.395 * uu - 0.581 * vv
    b = y + 2.032 * uu
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)
