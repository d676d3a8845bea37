"""HEIF and AVIF container (ISOBMFF) limits, read from the boxes before libheif or libavif sees the file.

HEIF (phones' HEIC) and AVIF are boxes: ``ftyp``, then ``meta`` describing
*items* (coded images, grids of them, thumbnails, EXIF) whose bytes lie
wherever ``iloc`` says, and for image sequences ``moov`` tracks. What a decode
costs is written in those boxes, so it is read from them first:

* **Declared sizes.** Every image item's ``ispe`` property (and a grid's own
  output size, and a sequence's sample-entry size) must be within the pixel
  limit. The decoder would find out, but only after allocating.
* **Grids.** A grid item is decoded as one image per tile; the tile count is
  bounded (:attr:`ContainerLimits.max_tiles`), whatever the output size.
* **Shared data.** Tiles are items, and two items' ``iloc`` extents may point at
  the same bytes: a 1000-tile grid whose tiles all reference one 300-byte coded
  tile costs a thousand decodes for a file of a few kilobytes. Extents that
  overlap are refused (no encoder writes them), so the decode work stays
  proportional to the file's bytes.
* **Item count.** Bounded too, as every item is parsed and kept by the decoder.

A ``meta`` box this parser cannot read is refused as undecodable rather than
passed on: the decoders then never see a structure whose cost was not
checked. A file cut inside its media data (the usual truncation) parses here
and fails in the decoder.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from schemas import ErrorCode
from worker.errors import InputError


@dataclass(frozen=True)
class ContainerLimits:
    max_pixels: int
    #: Coded images a grid item may be assembled from (a 48 MP phone HEIC has about 200 tiles of 512 x 512).
    max_tiles: int = 1024
    #: Items in the ``meta`` box (tiles, thumbnails, depth maps, metadata).
    max_items: int = 4096


class _Malformed(Exception):
    pass


@dataclass
class _Item:
    item_type: bytes = b""
    properties: list[int] = field(default_factory=list)
    extents: list[tuple[int, int, int]] = field(default_factory=list)  # (construction method, offset, length)


@dataclass
class ContainerSummary:
    """What the limits were checked on (exposed for tests and error messages)."""

    primary: int | None = None
    items: dict[int, _Item] = field(default_factory=dict)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # ispe of the primary item, grids, sequence samples
    tiles: int = 0


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, box end) for each box in ``data[start:end]``."""
    out = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise _Malformed("truncated box header")
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise _Malformed(f"box {kind!r} runs past its parent")
        out.append((kind, pos + header, pos + size))
        pos += size
    return out


def _uint(data: bytes, pos: int, size: int, end: int) -> tuple[int, int]:
    if size == 0:
        return 0, pos
    if pos + size > end:
        raise _Malformed("field runs past its box")
    return int.from_bytes(data[pos : pos + size], "big"), pos + size


def _full(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(version, flags, payload position) of a FullBox."""
    if pos + 4 > end:
        raise _Malformed("truncated full box")
    return data[pos], int.from_bytes(data[pos + 1 : pos + 4], "big"), pos + 4


def _parse_iinf(data: bytes, pos: int, end: int, summary: ContainerSummary, limits: ContainerLimits) -> None:
    version, _, pos = _full(data, pos, end)
    count, pos = _uint(data, pos, 2 if version == 0 else 4, end)
    if count > limits.max_items:
        raise InputError(ErrorCode.decompression_bomb, f"HEIF/AVIF file declares {count} items, limit {limits.max_items}")
    for kind, p, e in _boxes(data, pos, end):
        if kind != b"infe":
            continue
        v, _, p = _full(data, p, e)
        if v < 2:
            continue  # version 0/1 entries carry no item type (not used for images)
        item_id, p = _uint(data, p, 2 if v == 2 else 4, e)
        p += 2  # protection index
        if p + 4 > e:
            raise _Malformed("truncated infe")
        summary.items.setdefault(item_id, _Item()).item_type = data[p : p + 4]
        if len(summary.items) > limits.max_items:
            raise InputError(ErrorCode.decompression_bomb, f"HEIF/AVIF file holds more than {limits.max_items} items")


def _parse_iloc(data: bytes, pos: int, end: int, summary: ContainerSummary, limits: ContainerLimits) -> None:
    version, _, pos = _full(data, pos, end)
    if pos + 2 > end:
        raise _Malformed("truncated iloc")
    offset_size, length_size = data[pos] >> 4, data[pos] & 15
    base_size, index_size = data[pos + 1] >> 4, (data[pos + 1] & 15) if version in (1, 2) else 0
    if any(s not in (0, 4, 8) for s in (offset_size, length_size, base_size)) or index_size not in (0, 4, 8):
        raise _Malformed("iloc field sizes")
    pos += 2
    count, pos = _uint(data, pos, 2 if version < 2 else 4, end)
    if count > limits.max_items:
        raise InputError(ErrorCode.decompression_bomb, f"HEIF/AVIF file locates {count} items, limit {limits.max_items}")
    for _ in range(count):
        item_id, pos = _uint(data, pos, 2 if version < 2 else 4, end)
        method = 0
        if version in (1, 2):
            raw, pos = _uint(data, pos, 2, end)
            method = raw & 15
        pos += 2  # data reference index
        base, pos = _uint(data, pos, base_size, end)
        extents, pos = _uint(data, pos, 2, end)
        item = summary.items.setdefault(item_id, _Item())
        for _ in range(extents):
            _, pos = _uint(data, pos, index_size, end)
            offset, pos = _uint(data, pos, offset_size, end)
            length, pos = _uint(data, pos, length_size, end)
            item.extents.append((method, base + offset, length))


def _parse_iref(data: bytes, pos: int, end: int, summary: ContainerSummary, dimg: dict[int, int]) -> None:
    version, _, pos = _full(data, pos, end)
    width = 2 if version == 0 else 4
    for kind, p, e in _boxes(data, pos, end):
        from_id, p = _uint(data, p, width, e)
        n, p = _uint(data, p, 2, e)
        if p + n * width > e:
            raise _Malformed("truncated iref")
        if kind == b"dimg":
            dimg[from_id] = dimg.get(from_id, 0) + n


def _parse_iprp(data: bytes, pos: int, end: int, summary: ContainerSummary) -> dict[int, tuple[int, int]]:
    """ispe sizes by property index (1-based, as ipma counts), and each item's associations."""
    sizes: dict[int, tuple[int, int]] = {}
    for kind, p, e in _boxes(data, pos, end):
        if kind == b"ipco":
            for index, (pkind, pp, pe) in enumerate(_boxes(data, p, e), start=1):
                if pkind == b"ispe":
                    _, _, q = _full(data, pp, pe)
                    w, q = _uint(data, q, 4, pe)
                    h, q = _uint(data, q, 4, pe)
                    sizes[index] = (w, h)
        elif kind == b"ipma":
            version, flags, q = _full(data, p, e)
            entries, q = _uint(data, q, 4, e)
            for _ in range(entries):
                item_id, q = _uint(data, q, 2 if version < 1 else 4, e)
                n, q = _uint(data, q, 1, e)
                item = summary.items.setdefault(item_id, _Item())
                for _ in range(n):
                    raw, q = _uint(data, q, 2 if flags & 1 else 1, e)
                    item.properties.append(raw & (0x7FFF if flags & 1 else 0x7F))
    return sizes


def _item_bytes(data: bytes, item: _Item, idat: tuple[int, int] | None) -> bytes:
    """An item's payload from the file (method 0) or the idat box (method 1); other methods are not read."""
    out = b""
    for method, offset, length in item.extents:
        if method == 0:
            out += data[offset : offset + length]
        elif method == 1 and idat is not None:
            start, stop = idat
            out += data[start + offset : min(stop, start + offset + length)]
    return out


def _grid_size(payload: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, output width, output height) of an ImageGrid payload."""
    if len(payload) < 8:
        return None
    rows, cols = payload[2] + 1, payload[3] + 1
    if payload[1] & 1:
        if len(payload) < 12:
            return None
        w, h = struct.unpack_from(">II", payload, 4)
    else:
        w, h = struct.unpack_from(">HH", payload, 4)
    return rows, cols, w, h


def _sample_entry_sizes(data: bytes, start: int, end: int, out: list[tuple[int, int]]) -> None:
    """Coded sizes of every visual sample entry under ``moov`` (image sequences)."""
    for kind, p, e in _boxes(data, start, end):
        if kind in (b"trak", b"mdia", b"minf", b"stbl"):
            _sample_entry_sizes(data, p, e, out)
        elif kind == b"stsd":
            _, _, q = _full(data, p, e)
            q += 4  # entry count
            for _, sp, se in _boxes(data, q, e):
                if sp + 28 <= se:
                    out.append(struct.unpack_from(">HH", data, sp + 24))


def _check_overlaps(summary: ContainerSummary) -> None:
    spans = sorted((off, off + length) for item in summary.items.values() for method, off, length in item.extents if method == 0 and length > 0)
    reach = -1
    for start, stop in spans:
        if start < reach:
            raise InputError(ErrorCode.decompression_bomb, "HEIF/AVIF items share coded data (each reference would be decoded again)")
        reach = max(reach, stop)


def check_container(data: bytes, limits: ContainerLimits) -> ContainerSummary:
    """Apply the limits to a HEIF/AVIF file; raises ``InputError`` (decompression_bomb, undecodable)."""
    summary = ContainerSummary()
    try:
        _check(data, limits, summary)
    except _Malformed as exc:
        raise InputError(ErrorCode.undecodable, f"malformed HEIF/AVIF container: {exc}") from None
    for w, h in summary.sizes:
        if w * h > limits.max_pixels:
            raise InputError(ErrorCode.decompression_bomb, f"HEIF/AVIF image declares {w}x{h} = {w * h} pixels, limit {limits.max_pixels}")
    if summary.tiles > limits.max_tiles:
        raise InputError(ErrorCode.decompression_bomb, f"HEIF/AVIF grid of {summary.tiles} tiles, limit {limits.max_tiles}")
    _check_overlaps(summary)
    return summary


def _check(data: bytes, limits: ContainerLimits, summary: ContainerSummary) -> None:
    top = _boxes(data, 0, len(data)) if len(data) >= 8 else []
    metas = [(p, e) for kind, p, e in top if kind == b"meta"]
    if not metas and not any(kind == b"moov" for kind, _, _ in top):
        raise _Malformed("no meta box")
    dimg: dict[int, int] = {}
    ispe: dict[int, tuple[int, int]] = {}
    idat: tuple[int, int] | None = None
    for start, end in metas[:1]:
        _, _, pos = _full(data, start, end)
        for kind, p, e in _boxes(data, pos, end):
            if kind == b"pitm":
                v, _, q = _full(data, p, e)
                summary.primary, _ = _uint(data, q, 2 if v == 0 else 4, e)
            elif kind == b"iinf":
                _parse_iinf(data, p, e, summary, limits)
            elif kind == b"iloc":
                _parse_iloc(data, p, e, summary, limits)
            elif kind == b"iref":
                _parse_iref(data, p, e, summary, dimg)
            elif kind == b"iprp":
                ispe = _parse_iprp(data, p, e, summary)
            elif kind == b"idat":
                idat = (p, e)
    for index, (w, h) in ispe.items():  # any image item (primary, tile, thumbnail, depth map) the decoder might allocate
        if any(index in item.properties for item in summary.items.values()):
            summary.sizes.append((w, h))
    for item_id, item in summary.items.items():
        if item.item_type == b"grid":
            refs = dimg.get(item_id, 0)
            grid = _grid_size(_item_bytes(data, item, idat))
            cells = grid[0] * grid[1] if grid else 0
            summary.tiles = max(summary.tiles, refs, cells)
            if grid:
                summary.sizes.append((grid[2], grid[3]))
    for kind, p, e in top:
        if kind == b"moov":
            _sample_entry_sizes(data, p, e, summary.sizes)
