"""The provenance stage's entry point: one call per image, all four signals.

:func:`read_provenance` is pure (it reads only its arguments: no files, no
network, no global state but a per-thread c2pa context cache), thread-safe,
bounded by :class:`~worker.ingest.provenance.models.ProvenanceLimits`, and never
raises for anything the file contains: a parser that fails turns its signal
into ``unreadable`` and the others still run.

It takes the *original* bytes (metadata and the C2PA hard binding are about
those bytes; a re-encoded copy has neither) and, optionally, the decoded RGB
image the decode step already made, for the watermark. Without the image the
watermark is ``not_checked``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from worker.ingest.provenance.c2pa_reader import read_c2pa
from worker.ingest.provenance.containers import walk
from worker.ingest.provenance.generators import TEXT_KEYS, generator_signal
from worker.ingest.provenance.models import (
    C2paSignal,
    Container,
    GeneratorSignal,
    IptcSignal,
    ProvenanceLimits,
    ProvenanceReading,
    Signal,
    SignalStatus,
    WatermarkSignal,
)
from worker.ingest.provenance.trust import TrustList
from worker.ingest.provenance.watermark import read_watermark
from worker.ingest.provenance.xmp import iptc_signal, parse_packets

DEFAULT_LIMITS = ProvenanceLimits()
_METADATA_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")
#: Formats the decode step accepts whose containers this stage does not walk yet (lossy or not, orientation, metadata).
_UNPARSED_CONTAINERS = ("AVIF", "HEIF")
_KINDS = (C2paSignal, IptcSignal, GeneratorSignal, WatermarkSignal)


def _guard(kind: type[Signal], fn: Callable[[], Signal]) -> Signal:
    """Run one signal's reader; an exception (a bug, or a library failing on hostile data) makes that signal unreadable."""
    try:
        return fn()
    except Exception as exc:
        return kind(status=SignalStatus.unreadable, detail=f"reader failed: {type(exc).__name__}")


def read_provenance(
    data: bytes,
    limits: ProvenanceLimits = DEFAULT_LIMITS,
    trust: TrustList | None = None,
    image: Image.Image | np.ndarray | None = None,
) -> ProvenanceReading:
    """Read every provenance signal of one file.

    ``data``: the file's original bytes. ``trust``: the C2PA trust anchors
    (None: report signers, trust none). ``image``: the decode step's RGB result
    (``DecodedImage.image``: orientation applied, native resolution or a JPEG
    draft), for the watermark; None leaves the watermark ``not_checked``.
    """
    if len(data) > limits.max_bytes:
        why = f"file is {len(data)} bytes, over the provenance limit of {limits.max_bytes}"
        return ProvenanceReading(tuple(k(status=SignalStatus.not_checked, detail=why) for k in _KINDS))
    try:
        container = walk(data, limits, TEXT_KEYS)
    except Exception as exc:  # the walk catches what it expects; anything else must not cost the upload
        why = f"container walk failed: {type(exc).__name__}"
        container = Container(problems=[why], text_problems=[why], xmp_problems=[why], c2pa_problems=[why])
    signals: list[Signal] = []
    if container.format in _METADATA_FORMATS:
        facts = parse_packets(container.xmp, limits)
        container.c2pa_remote = facts.remote_manifest
        signals.append(_guard(C2paSignal, lambda: read_c2pa(data, container, limits, trust)))
        signals.append(_guard(IptcSignal, lambda: iptc_signal(container, facts)))
        signals.append(_guard(GeneratorSignal, lambda: generator_signal(container)))
    else:
        why = f"{container.format or 'unrecognised'} files are not scanned for metadata"
        signals += [C2paSignal(status=SignalStatus.not_checked, detail=why), IptcSignal(status=SignalStatus.not_checked, detail=why)]
        signals.append(GeneratorSignal(status=SignalStatus.not_checked, detail=why))
    if container.format in _UNPARSED_CONTAINERS:
        signals.append(WatermarkSignal(status=SignalStatus.not_checked, detail=f"{container.format} containers are not parsed by the provenance stage"))
    else:
        signals.append(_guard(WatermarkSignal, lambda: read_watermark(image, container if container.format else None, limits)))
    return ProvenanceReading(tuple(signals))
