"""64-bit perceptual hash (pHash) in numpy, and Hamming-distance search helpers.

pHash: greyscale, resize to 32x32, 2-D DCT-II, keep the 8x8 lowest frequencies,
one bit per coefficient: above the median of the 63 AC coefficients or not
(the DC term is kept in the hash but left out of the median, as in the usual
pHash). Re-encoding, rescaling and mild colour changes move few bits, so two
uploads of the same picture land within a small Hamming distance.

Why pHash and not PDQ: PDQ needs a 64x64 Jarosz filter and 256 bits for its
quality; pHash is 30 lines of numpy, 64 bits fit one integer, and the
near-duplicate lookup only has to be good enough to skip re-scoring a
re-encoded copy, with the threshold the operator picks.

Search: a hash is split into ``bands = max_distance + 1`` bands. By pigeonhole,
two hashes within ``max_distance`` bits agree exactly on at least one band, so
exact band lookups (Redis sets) find every candidate; the true distance is then
checked on the full 64 bits.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_BITS = 64
_N = 32


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_D = _dct_matrix(_N)


def phash(img: Image.Image) -> int:
    """The 64-bit pHash of an image as an unsigned int."""
    grey = np.asarray(img.convert("L").resize((_N, _N), Image.Resampling.LANCZOS), dtype=np.float64)
    coeffs = (_D @ grey @ _D.T)[:8, :8].reshape(-1)
    median = np.median(coeffs[1:])
    bits = coeffs > median
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def band_layout(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of each band for a given distance; widths differ by at most one bit."""
    bands = max(1, min(HASH_BITS, max_distance + 1))
    base, extra = divmod(HASH_BITS, bands)
    out, shift = [], 0
    for i in range(bands):
        width = base + (1 if i < extra else 0)
        out.append((shift, width))
        shift += width
    return out


def bands(h: int, layout: list[tuple[int, int]]) -> list[int]:
    return [(h >> shift) & ((1 << width) - 1) for shift, width in layout]
