"""Decoder for the DWT-DCT invisible watermark Stable Diffusion's reference scripts embed.

The algorithm (``dwtDct`` of the MIT-licensed ``invisible-watermark`` package,
as its 0.2.0 release implements it; re-implemented here from its description,
in numpy, with the Haar LL band computed exactly as PyWavelets computes it):

* convert BGR to YUV as OpenCV does and take the U plane (the encoder is
  configured with scales ``[0, 36, 36]`` but only loops over the first two
  planes, so Y (scale 0) is skipped and U is the only plane written). Which
  OpenCV conversion depends on what the caller handed the encoder: the SD 1/2
  scripts pass 8-bit BGR (fixed-point YUV, U centred on 128: domain ``u8``);
  SDXL (Stability's generative-models and diffusers) passes float32 BGR in
  0..255 (float YUV, U centred on 0.5: domain ``f32``). The quantisation
  lattice does not survive the change of offset (and the coefficient of largest
  magnitude moves), so an SDXL mark is unreadable in the 8-bit domain and the
  decoder reads both;
* one level of the Haar DWT over the largest multiple-of-4 crop; in the LL band,
  4x4 blocks in raster order carry payload bits ``0, 1, ..., L-1, 0, 1, ...``;
* in each block the coefficient of largest magnitude (other than the first) is
  quantised with step 36: ``(|v| // 36 + 0.25 + 0.5 * bit) * 36``, so
  ``|v| mod 36 > 18`` reads as 1;
* the reference decoder takes a majority vote per payload bit.

A 4x4 LL block is exactly an 8x8 pixel tile, so every tile can be read on its
own, and the decoder reads windows of tiles spread over the image instead of
the whole image: first ``watermark_probe_tiles`` tiles (512, i.e.
32K pixels), which settle an unmarked image (agreement under
``PROBE_AGREEMENT``), and only for a promising one up to
``watermark_max_tiles`` (4096, 262K pixels). Its cost does not grow with
resolution, and for the usual unmarked image it is that of 32K pixels.

Payloads (the reference scripts) and the domain each is read in (:data:`HYPOTHESES`):

* ``sd1``: the bytes ``StableDiffusionV1`` (136 bits), CompVis ``scripts/txt2img.py``, ``u8``;
* ``sd2``: the bytes ``SDV2`` (32 bits), Stability-AI/stablediffusion ``scripts/txt2img.py``, ``u8``;
* ``sdxl``: the 48 bits ``0b101100111110110010010000011110111011000110011110``,
  Stability-AI/generative-models and diffusers' SDXL watermarker, ``f32``
  (and ``u8``, for tools that hand the encoder 8-bit images).

Decision: the per-bit majority of the reference decoder is reported
(``bit_errors``) but does not decide. The encoder itself loses whole bits on
many images (clipping in saturated regions: the reference decoder reads 36 of
136 bits wrong on scikit-image's ``coffee`` straight after embedding), while
the fraction of tiles that carry their payload bit stays far from chance. That
fraction, balanced over the payload's 0 and 1 bits (so that a flat image,
whose tiles all read 0, scores exactly 0.5 whatever the payload's mix of bits),
is the statistic: a match is ``agreement >= MATCH_AGREEMENT`` (0.62). Measured
by ``python -m bench.provenance`` on the real photographs installed packages
ship (19 photos, 3185 crops, flips, rescales and 4:4:4 re-encodes): unmarked
images reach at most 0.546 read whole (0.560 with the first-look exit), none
reaches 0.62; marked ones (the same photos and 2x2 / 4x4 mosaics of them, each
payload) score 0.665 and up.

What it cannot see: JPEG with chroma subsampling (the watermark lives in the
chroma plane, which 4:2:0 halves) and lossy WebP erase it, so such files are
"not checked"; resizing, cropping (moves the tile grid) and rotation erase it
too; and an image decoded at reduced size (the worker's JPEG draft mode) has
lost the geometry, so it is "not checked" as well. Images under 256 x 256
(the reference decoder's minimum) are "not checked", never "absent".
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.ingest.provenance.models import Container, ProvenanceLimits, SignalStatus, Strength, WatermarkSignal

STEP = 36
MATCH_AGREEMENT = 0.62
#: Below this on the first look (``watermark_probe_tiles`` tiles) an image is unmarked without reading more: marked
#: images score 0.70 and up, and the first look's spread is a few hundredths.
PROBE_AGREEMENT = 0.56
_TILE = 8
#: Images up to this many pixels are copied out of Pillow whole (one copy is cheaper than eight crops); larger ones per window.
_COPY_WHOLE_PIXELS = 1 << 20


def _bits(data: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(bool)


PAYLOADS: dict[str, np.ndarray] = {
    "sd1": _bits(b"StableDiffusionV1"),
    "sd2": _bits(b"SDV2"),
    "sdxl": np.array([c == "1" for c in bin(0b101100111110110010010000011110111011000110011110)[2:]]),
}


#: (payload, colour domain) pairs the decoder tests; the best-scoring one is reported.
HYPOTHESES: tuple[tuple[str, str], ...] = (("sd1", "u8"), ("sd2", "u8"), ("sdxl", "f32"), ("sdxl", "u8"))
_DOMAINS = ("u8", "f32")


def u_plane(rgb: np.ndarray) -> np.ndarray:
    """The U plane of OpenCV's 8-bit BGR->YUV conversion, bit for bit (fixed point, 14 fractional bits, rounded).

    Y = (4899 R + 9617 G + 1868 B) >> 14 (rounded), U = 128 + 0.492 (B - Y) with 0.492 = 8061 / 2**14.
    """
    return _planes(rgb, ("u8",))["u8"].astype(np.int32)


def u_plane_f32(rgb: np.ndarray) -> np.ndarray:
    """The U plane of OpenCV's float32 BGR->YUV conversion of ``rgb`` as 0..255 floats: 0.492 (B - Y) + 0.5 (no clipping)."""
    return _planes(rgb, ("f32",))["f32"]


_F = np.float32


def _planes(rgb: np.ndarray, domains: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The U plane in each domain, from one float32 copy of the channels.

    The 8-bit fixed-point formula is evaluated in float32 too, exactly: every
    intermediate is an integer below 2**24, and scaling by 2**-14 is exact.
    """
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
    out: dict[str, np.ndarray] = {}
    if "u8" in domains:
        y = np.floor((r * _F(4899) + g * _F(9617) + b * _F(1868) + _F(1 << 13)) * _F(1 / (1 << 14)))
        u = np.floor(((b - y) * _F(8061) + _F((128 << 14) + (1 << 13))) * _F(1 / (1 << 14)))
        out["u8"] = np.clip(u, _F(0), _F(255), out=u)
    if "f32" in domains:
        y = r * _F(0.299) + g * _F(0.587) + b * _F(0.114)
        out["f32"] = (b - y) * _F(0.492) + _F(0.5)
    return out


#: PyWavelets' Haar filter tap (1/sqrt(2)).
_HAAR = 0.7071067811865476


def haar_ll(plane: np.ndarray) -> np.ndarray:
    """The LL band of one level of the 2-D Haar DWT, bit for bit what ``pywt.dwt2(plane, "haar")[0]`` returns for even sizes.

    PyWavelets filters rows (axis 0) then columns, each output being
    ``c * x[2i] + c * x[2i+1]`` in the input's precision (float32 stays
    float32); doing the same products and sums in numpy gives the same numbers
    (tested against PyWavelets) at a tenth of the cost, as the three detail
    bands are never computed.
    """
    c = plane.dtype.type(_HAAR)
    rows = c * plane[0::2] + c * plane[1::2]
    return c * rows[:, 0::2] + c * rows[:, 1::2]


def _bits_of(plane: np.ndarray, th: int, tw: int) -> np.ndarray:
    b = np.abs(haar_ll(plane)).reshape(th, 4, tw, 4)  # (tile row, row in block, tile column, column in block)
    # |largest-magnitude coefficient| of each 4x4 block but its first: max over block rows, then over block columns,
    # with column 0 taken over rows 1..3 only. Pairwise maxima of strided views beat a max over two axes.
    m = np.maximum(np.maximum(b[:, 0], b[:, 1]), np.maximum(b[:, 2], b[:, 3]))  # (th, tw, 4)
    m[..., 0] = np.maximum(np.maximum(b[:, 1, :, 0], b[:, 2, :, 0]), b[:, 3, :, 0])
    value = np.maximum(np.maximum(m[..., 0], m[..., 1]), np.maximum(m[..., 2], m[..., 3])).ravel()
    return np.mod(value, STEP) > STEP / 2


def tile_bits(rgb: np.ndarray, domain: str = "u8") -> np.ndarray:
    """The bit each whole 8x8 tile of ``rgb`` (H x W x 3, uint8, H and W multiples of 8) carries in ``domain``, in raster order."""
    return tile_bits_all(rgb, (domain,))[domain]


def tile_bits_all(rgb: np.ndarray, domains: tuple[str, ...]) -> dict[str, np.ndarray]:
    """:func:`tile_bits` for several domains, sharing the colour conversion."""
    th, tw = rgb.shape[0] // _TILE, rgb.shape[1] // _TILE
    planes = _planes(rgb, domains)
    # The 8-bit domain's reference decoder hands PyWavelets uint8, which it reads as float64; the float domain stays float32.
    return {d: _bits_of(planes[d].astype(np.float64) if d == "u8" else planes[d], th, tw) for d in domains}


def _undo_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Invert the EXIF transpose the decode step applied (views, no copy)."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(a, 1)
    if orientation == 7:
        return a[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(a, -1)
    return a


def tile_windows(tile_rows: int, tiles_per_row: int, max_tiles: int, windows: int = 8) -> list[tuple[int, int, int, int]]:
    """Windows of tiles to read, (row0, row1, col0, col1) in tile units: the whole image if it fits in ``max_tiles``,
    else ``windows`` equal, non-overlapping windows spread down the image and zig-zagging across it.

    Spreading matters: a watermark survives poorly in flat or saturated areas (a
    sky, a black border), and one window there must not decide for the image.
    """
    if tile_rows * tiles_per_row <= max_tiles:
        return [(0, tile_rows, 0, tiles_per_row)]
    k = max(1, min(windows, tile_rows))
    per = max(1, max_tiles // k)
    width = min(tiles_per_row, per)
    height = max(1, min(tile_rows // k, per // width))
    rows = [round(i * (tile_rows - height) / (k - 1)) for i in range(k)] if k > 1 else [(tile_rows - height) // 2]
    cols = [round(j * (tiles_per_row - width) / (k - 1)) for j in range(k)] if k > 1 else [(tiles_per_row - width) // 2]
    zigzag = [cols[i] if i % 2 == 0 else cols[k - 1 - i] for i in range(k)]
    return [(r, r + height, c, c + width) for r, c in zip(rows, zigzag, strict=True)]


def _not_checked(why: str) -> WatermarkSignal:
    return WatermarkSignal(status=SignalStatus.not_checked, detail=why)


def read_watermark(image: Image.Image | np.ndarray | None, container: Container | None, limits: ProvenanceLimits) -> WatermarkSignal:
    """Check decoded pixels for the SD watermark; never raises.

    ``image`` is what the decode step produced (RGB, EXIF orientation applied,
    first frame); ``container`` is the byte-level walk of the same file, which
    says whether the pixels still can hold the watermark (native size, lossless
    or 4:4:4) and how to undo the orientation.
    """
    if image is None:
        return _not_checked("no decoded pixels were given")
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            return _not_checked(f"pixels are {image.mode}, not RGB")
        width, height = image.size
    else:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            return _not_checked("pixels are not an H x W x 3 uint8 array")
        height, width = image.shape[:2]
    orientation = container.orientation if container is not None else 1
    if container is not None:
        if container.lossy and container.chroma_subsampled:
            kind = "lossy WebP" if container.format == "WEBP" else f"{container.format} with chroma subsampling"
            return _not_checked(f"{kind}: the watermark lives in the chroma plane, which the codec stores at reduced resolution")
        if container.width and container.height:
            native = (container.height, container.width) if orientation in (5, 6, 7, 8) else (container.width, container.height)
            if (width, height) != native:
                return _not_checked(f"decoded at {width}x{height}, the file is {native[0]}x{native[1]}: the watermark needs native-resolution pixels")
    if width * height < limits.watermark_min_pixels:
        return _not_checked(f"{width}x{height} is under the decoder's minimum of {limits.watermark_min_pixels} pixels")
    try:
        return _decode(image, orientation, limits)
    except (ValueError, MemoryError) as exc:
        return WatermarkSignal(status=SignalStatus.unreadable, detail=f"watermark decode failed: {type(exc).__name__}")


def _read_tiles(image: Image.Image | np.ndarray, array: np.ndarray | None, th: int, tw: int, max_tiles: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({domain: tile bits}, tile indices in the full image's raster order) of the :func:`tile_windows`; at most ``max_tiles`` tiles."""
    windows = tile_windows(th, tw, max_tiles)
    strips = []
    for r0, r1, c0, c1 in windows:  # only the windows' pixels are ever copied out of the image
        box = (c0 * _TILE, r0 * _TILE, c1 * _TILE, r1 * _TILE)
        if array is None:
            assert isinstance(image, Image.Image)
            strips.append(np.asarray(image.crop(box)))
        else:
            strips.append(array[box[1] : box[3], box[0] : box[2]])
    # Windows share one size, so they stack into one array and are decoded in one pass (tiles never straddle windows).
    pixels = np.ascontiguousarray(strips[0] if len(strips) == 1 else np.concatenate(strips))
    tiles = tile_bits_all(pixels, _DOMAINS)
    index = np.concatenate([(np.arange(r0, r1)[:, None] * tw + np.arange(c0, c1)[None, :]).ravel() for r0, r1, c0, c1 in windows])
    return tiles, index


def _best(tiles: dict[str, np.ndarray], index: np.ndarray) -> tuple[float, str, int]:
    """(agreement, payload, bit errors) of the best-scoring hypothesis."""
    scored = []
    for name, payload in PAYLOADS.items():
        slot = index % payload.size
        counts = np.bincount(slot, minlength=payload.size).astype(np.float64)
        for hyp_name, domain in HYPOTHESES:
            if hyp_name == name:
                scored.append((*_score(tiles[domain], slot, counts, payload), name))
    agreement, errors, name = max(scored, key=lambda t: t[0])
    return agreement, name, errors


def _decode(image: Image.Image | np.ndarray, orientation: int, limits: ProvenanceLimits) -> WatermarkSignal:
    if isinstance(image, Image.Image) and orientation == 1 and image.size[0] * image.size[1] > _COPY_WHOLE_PIXELS:
        array = None  # large: copy only the windows' pixels out of Pillow
        w, h = image.size
    else:
        array = _undo_orientation(np.asarray(image), orientation)
        h, w = array.shape[:2]
    th, tw = h // _TILE, w // _TILE
    # A first look at a few tiles settles almost every unmarked image; only a promising one is read in full.
    tiles, index = _read_tiles(image, array, th, tw, min(limits.watermark_probe_tiles, limits.watermark_max_tiles))
    agreement, name, errors = _best(tiles, index)
    if agreement >= PROBE_AGREEMENT and index.size < min(th * tw, limits.watermark_max_tiles):
        tiles, index = _read_tiles(image, array, th, tw, limits.watermark_max_tiles)
        agreement, name, errors = _best(tiles, index)
    found = agreement >= MATCH_AGREEMENT
    return WatermarkSignal(
        status=SignalStatus.found if found else SignalStatus.absent,
        strength=Strength.watermark if found else Strength.none,
        ai_declared=found,
        payload=name if found else None,
        agreement=round(agreement, 4),
        bit_errors=errors,
        tiles=int(index.size),
    )


def score(tiles: np.ndarray, index: np.ndarray, payload: np.ndarray) -> tuple[float, int]:
    """(balanced tile agreement, majority-vote bit errors) of tile bits against one payload.

    Agreement: the mean of (fraction of tiles meant to carry 1 that read 1) and
    (fraction meant to carry 0 that read 0). Bit errors: payload bits whose
    majority vote (the reference decoder's ``mean * 255 > 127``) is wrong, or
    that no tile carries.
    """
    slot = index % payload.size
    return _score(tiles, slot, np.bincount(slot, minlength=payload.size).astype(np.float64), payload)


def _score(tiles: np.ndarray, slot: np.ndarray, counts: np.ndarray, payload: np.ndarray) -> tuple[float, int]:
    votes = np.bincount(slot, weights=tiles, minlength=payload.size)  # tiles reading 1, per payload bit
    ones, zeros = counts[payload].sum(), counts[~payload].sum()
    hit1 = votes[payload].sum() / ones if ones else 0.5
    hit0 = (counts[~payload] - votes[~payload]).sum() / zeros if zeros else 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        decoded = votes / counts * 255 > 127
    errors = int(np.sum((decoded != payload) | (counts == 0)))
    return float(0.5 * (hit1 + hit0)), errors


def expected_tiles(width: int, height: int, max_tiles: int) -> int:
    """Tiles the decoder reads from an image of this size with this cap (for cost estimates)."""
    return sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in tile_windows(height // _TILE, width // _TILE, max_tiles))


__all__ = [
    "HYPOTHESES",
    "MATCH_AGREEMENT",
    "PAYLOADS",
    "expected_tiles",
    "haar_ll",
    "read_watermark",
    "score",
    "tile_bits",
    "tile_windows",
    "u_plane",
    "u_plane_f32",
]
