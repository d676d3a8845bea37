"""One image's bytes to the tensors every bundle of its batch reads, and its provenance (runs on a decode thread).

Decoded once whatever the number of bundles: the primary's backbone input and
native crop, the shadow's own tensors when its preprocessing differs, and the
pHash when the near-duplicate index is on. Draft (DCT-domain) JPEG decoding is
used only when every bundle of the batch was built to see it (``--allow-draft``,
recorded in the manifest, so training saw the same pixels) and none reads
native-resolution pixels (:attr:`Models.draft_side`).

Provenance is read here too, from the *original* bytes (the metadata and the
C2PA hard binding are about those exact bytes; nothing here re-encodes them)
plus the decoded image for the watermark, so the image is decoded once for
both. It runs only for images that decode: an undecodable file is a dead
letter whatever its metadata says, and a decodable one always gets its
verdict, because the stage turns every parser failure into an ``unreadable``
signal instead of raising, and a read that overruns
``--provenance-timeout-s`` (its own budget, after the decode's) into four
``unreadable`` signals, "timed out", beside the decoded image
(:func:`~worker.ingest.decode_pool.restart_limit`).
"""

from __future__ import annotations

import dataclasses
import time

from PIL import Image

from schemas import ErrorCode
from schemas.provenance import C2paSignal, GeneratorSignal, IptcSignal, SignalStatus, WatermarkSignal
from worker.cache.phash import phash
from worker.errors import InputError
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.decode_pool import restart_limit
from worker.ingest.preprocess import clip_input, native_crop
from worker.ingest.provenance import ProvenanceReading, read_provenance
from worker.model.rollout import Models
from worker.pipeline.items import Prepared, ProvenanceSettings


def prepare_image(data: bytes, models: Models, limits: DecodeLimits, with_phash: bool, provenance: ProvenanceSettings | None = None) -> Prepared:
    """Decode under ``limits``, preprocess for every bundle of ``models`` and read provenance; ``InputError`` for bad input."""
    t0 = time.perf_counter()
    primary, shadow = models.primary, models.shadow
    own = shadow if shadow is not None and not models.shadow_same_input else None
    try:
        img = decode_image(data, limits, models.draft_side).image
        pixels = clip_input(img, primary.preprocess)
        native = native_crop(img, primary.native_crop_size) if primary.native_crop_size else None
        hashed = phash(img) if with_phash else None
        shadow_pixels = clip_input(img, own.preprocess) if own else None
        shadow_native = native_crop(img, own.native_crop_size) if own and own.native_crop_size else None
    except InputError:
        raise
    except Exception as exc:  # a decoder or resampler blowing up on odd data is still bad input
        raise InputError(ErrorCode.undecodable, f"image processing failed: {type(exc).__name__}: {exc}") from None
    decode_ms = (time.perf_counter() - t0) * 1000
    prepared = Prepared(pixels, native, decode_ms, hashed, shadow_pixels, shadow_native)
    if provenance is None or not provenance.reads:
        return prepared
    # The decode's time limit ends here; provenance gets its own (in a DecodePool; elsewhere nothing is limited).
    budget = provenance.timeout_s

    def timed_out() -> Prepared:  # the watchdog's answer if the read overruns (made then, not on every image)
        return dataclasses.replace(prepared, provenance=unreadable_reading(f"timed out after {budget:g}s"), provenance_ms=budget * 1000)

    if not restart_limit(budget if budget > 0 else None, timed_out):
        return prepared  # the decode already overran: the waiter has its decode_timeout, this result is discarded
    t1 = time.perf_counter()
    reading = read_image_provenance(data, provenance, img)
    return dataclasses.replace(prepared, provenance=reading, provenance_ms=(time.perf_counter() - t1) * 1000)


def read_image_provenance(data: bytes, settings: ProvenanceSettings, image: Image.Image | None) -> ProvenanceReading:
    """``read_provenance`` under the worker's settings; never raises (a failure is four ``unreadable`` signals).

    The reader already guards each signal; this catches what escapes it (a
    ``MemoryError`` in a library, a bug), so that a decodable image can never
    become a dead letter because of its metadata.
    """
    try:
        return read_provenance(data, settings.limits, settings.trust, image=image)
    except Exception as exc:
        return unreadable_reading(f"provenance stage failed: {type(exc).__name__}")


def unreadable_reading(why: str) -> ProvenanceReading:
    """Every signal kind ``unreadable`` for one reason: the stage as a whole failed or ran out of time."""
    kinds = (C2paSignal, IptcSignal, GeneratorSignal, WatermarkSignal)
    return ProvenanceReading(tuple(k(status=SignalStatus.unreadable, detail=why) for k in kinds))
