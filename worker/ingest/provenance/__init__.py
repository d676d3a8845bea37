"""Provenance evidence from an image's own bytes: C2PA manifests, IPTC digital source type, generator metadata, invisible watermark.

The pipeline calls one function per image, after decoding, in the decode thread::

    reading = read_provenance(data, limits, trust, image=decoded.image)

(:func:`~worker.ingest.provenance.reader.read_provenance`: pure, thread-safe,
bounded, never raises for hostile data) and hands ``reading`` to
:func:`worker.model.policy.apply_provenance` with the model's score. One module
per signal kind; the records are in :mod:`worker.ingest.provenance.models` (and
:mod:`schemas.provenance`, as they are part of the verdict).
"""

from worker.ingest.provenance.models import ProvenanceLimits, ProvenanceReading
from worker.ingest.provenance.reader import DEFAULT_LIMITS, read_provenance
from worker.ingest.provenance.trust import TrustList, TrustListError

#: Bumped whenever a reader's output for the same bytes can change (a parser fix, a new payload, a threshold):
#: part of the cache key material (worker.model.policy.policy_fingerprint), so cached provenance is re-read.
READER_VERSION = 2

__all__ = ["DEFAULT_LIMITS", "READER_VERSION", "ProvenanceLimits", "ProvenanceReading", "TrustList", "TrustListError", "read_provenance"]
