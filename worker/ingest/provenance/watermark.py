"""Decoder for the DWT-DCT invisible watermark Stable Diffusion's reference scripts embed.

The algorithm (``dwtDct`` of the MIT-licensed ``invisible-watermark`` package,
as its 0.2.0 release implements it; re-implemented here from its description,
in numpy and PyWavelets):

* convert BGR to YUV as OpenCV does for 8-bit images and take the U plane (the
  encoder is configured with scales ``[0, 36, 36]`` but only loops over the
  first two planes, so Y (scale 0) is skipped and U is the only plane written);
* one level of the Haar DWT over the largest multiple-of-4 crop; in the LL band,
  4x4 blocks in raster order carry payload bits ``0, 1, ..., L-1, 0, 1, ...``;
* in each block the coefficient of largest magnitude (other than the first) is
  quantised with step 36: ``(|v| // 36 + 0.25 + 0.5 * bit) * 36``, so
  ``|v| mod 36 > 18`` reads as 1;
* the reference decoder takes a majority vote per payload bit.

A 4x4 LL block is exactly an 8x8 pixel tile, so every tile can be read on its
own, and the decoder below reads a bounded number of whole tile rows (at most
``watermark_max_tiles`` tiles, in bands spread over the image) instead of the
whole image: its cost does not grow with resolution past ~1 MP.

Payloads (the reference scripts):

* ``sd1``: the bytes ``StableDiffusionV1`` (136 bits), CompVis ``scripts/txt2img.py``;
* ``sd2``: the bytes ``SDV2`` (32 bits), Stability-AI/stablediffusion ``scripts/txt2img.py``;
* ``sdxl``: the 48 bits ``0b101100111110110010010000011110111011000110011110``,
  Stability-AI/generative-models and diffusers' SDXL watermarker.

Decision: the per-bit majority of the reference decoder is reported
(``bit_errors``) but does not decide. The encoder itself loses whole bits on
many images (clipping in saturated regions: the reference decoder reads 36 of
136 bits wrong on scikit-image's ``coffee`` straight after embedding), while
the fraction of tiles that carry their payload bit stays far from chance. That
fraction, balanced over the payload's 0 and 1 bits (so that a flat image,
whose tiles all read 0, scores exactly 0.5 whatever the payload's mix of bits),
is the statistic: a match is ``agreement >= MATCH_AGREEMENT``. Measured on
real photographs (``python -m bench.provenance``), unmarked images stay near
0.5; images straight from the reference encoder score 0.70 to 0.87.

What it cannot see: JPEG with chroma subsampling (the watermark lives in the
chroma plane, which 4:2:0 halves) and lossy WebP erase it, so such files are
"not checked"; resizing, cropping (moves the tile grid) and rotation erase it
too; and an image decoded at reduced size (the worker's JPEG draft mode) has
lost the geometry, so it is "not checked" as well. Images under 256 x 256
(the reference decoder's minimum) are "not checked", never "absent".
"""

from __future__ import annotations

import numpy as np
import pywt
from PIL import Image

from worker.ingest.provenance.models import Container, ProvenanceLimits, SignalStatus, Strength, WatermarkSignal

STEP = 36
MATCH_AGREEMENT = 0.62
_TILE = 8


def _bits(data: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(bool)


PAYLOADS: dict[str, np.ndarray] = {
    "sd1": _bits(b"StableDiffusionV1"),
    "sd2": _bits(b"SDV2"),
    "sdxl": np.array([c == "1" for c in bin(0b101100111110110010010000011110111011000110011110)[2:]]),
}


def u_plane(rgb: np.ndarray) -> np.ndarray:
    """The U plane of OpenCV's 8-bit BGR->YUV conversion, bit for bit (fixed point, 14 fractional bits, rounded).

    Y = (4899 R + 9617 G + 1868 B) >> 14 (rounded), U = 128 + 0.492 (B - Y) with 0.492 = 8061 / 2**14.
    """
    r = rgb[..., 0].astype(np.int32)
    g = rgb[..., 1].astype(np.int32)
    b = rgb[..., 2].astype(np.int32)
    y = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
    u = ((b - y) * 8061 + (128 << 14) + (1 << 13)) >> 14
    return np.clip(u, 0, 255)


def tile_bits(rgb: np.ndarray) -> np.ndarray:
    """The bit each whole 8x8 tile of ``rgb`` (H x W x 3, uint8, H and W multiples of 8) carries, in raster order."""
    th, tw = rgb.shape[0] // _TILE, rgb.shape[1] // _TILE
    ll = pywt.dwt2(u_plane(rgb).astype(np.float64), "haar")[0]
    blocks = ll.reshape(th, 4, tw, 4).transpose(0, 2, 1, 3).reshape(th * tw, 16)[:, 1:]
    pos = np.argmax(np.abs(blocks), axis=1)
    value = np.abs(blocks[np.arange(blocks.shape[0]), pos])
    return np.mod(value, STEP) > STEP / 2


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


def band_rows(tile_rows: int, tiles_per_row: int, max_tiles: int, bands: int = 8) -> list[tuple[int, int]]:
    """(first, end) tile rows to read: all rows if they fit in ``max_tiles``, else ``bands`` evenly spread bands that do."""
    if tile_rows * tiles_per_row <= max_tiles:
        return [(0, tile_rows)]
    needed = max(1, max_tiles // max(tiles_per_row, 1))
    bands = max(1, min(bands, needed))
    height = max(1, needed // bands)
    if bands == 1:
        starts = [(tile_rows - height) // 2]
    else:
        starts = [round(k * (tile_rows - height) / (bands - 1)) for k in range(bands)]
    out: list[tuple[int, int]] = []
    for s in starts:
        if out and s < out[-1][1]:
            s = out[-1][1]
        if s < tile_rows:
            out.append((s, min(tile_rows, s + height)))
    return out


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


def _decode(image: Image.Image | np.ndarray, orientation: int, limits: ProvenanceLimits) -> WatermarkSignal:
    if isinstance(image, Image.Image) and orientation == 1:
        array = None
        w, h = image.size
    else:
        array = np.asarray(image)
        array = _undo_orientation(array, orientation)
        h, w = array.shape[:2]
    th, tw = h // _TILE, w // _TILE
    indices, bits = [], []
    for r0, r1 in band_rows(th, tw, limits.watermark_max_tiles):
        box = (0, r0 * _TILE, tw * _TILE, r1 * _TILE)
        if array is None:
            assert isinstance(image, Image.Image)
            strip = np.asarray(image.crop(box))
        else:
            strip = np.ascontiguousarray(array[box[1] : box[3], : box[2]])
        bits.append(tile_bits(strip))
        indices.append(np.arange(r0 * tw, r1 * tw))
    tiles = np.concatenate(bits)
    index = np.concatenate(indices)
    best: tuple[float, str, int] | None = None
    for name, payload in PAYLOADS.items():
        agreement, errors = score(tiles, index, payload)
        if best is None or agreement > best[0]:
            best = (agreement, name, errors)
    assert best is not None
    agreement, name, errors = best
    found = agreement >= MATCH_AGREEMENT
    return WatermarkSignal(
        status=SignalStatus.found if found else SignalStatus.absent,
        strength=Strength.watermark if found else Strength.none,
        ai_declared=found,
        payload=name if found else None,
        agreement=round(agreement, 4),
        bit_errors=errors,
        tiles=int(tiles.size),
    )


def score(tiles: np.ndarray, index: np.ndarray, payload: np.ndarray) -> tuple[float, int]:
    """(balanced tile agreement, majority-vote bit errors) of tile bits against one payload."""
    n = payload.size
    slot = index % n
    expected = payload[slot]
    ones, zeros = expected, ~expected
    hit1 = float(tiles[ones].mean()) if ones.any() else 0.5
    hit0 = float((~tiles[zeros]).mean()) if zeros.any() else 0.5
    votes = np.bincount(slot, weights=tiles, minlength=n)
    counts = np.bincount(slot, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        decoded = votes / counts * 255 > 127
    errors = int(np.sum((decoded != payload) | (counts == 0)))
    return 0.5 * (hit1 + hit0), errors


def expected_tiles(width: int, height: int, limits: ProvenanceLimits) -> int:
    """Tiles the decoder reads for an image of this size (for cost estimates)."""
    th, tw = height // _TILE, width // _TILE
    return sum(r1 - r0 for r0, r1 in band_rows(th, tw, limits.watermark_max_tiles)) * tw


__all__ = ["MATCH_AGREEMENT", "PAYLOADS", "band_rows", "expected_tiles", "read_watermark", "score", "tile_bits", "u_plane"]
