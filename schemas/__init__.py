"""Contracts: event models on the topics and the model-bundle manifest.

Imports nothing from ``worker`` or ``export``; both of those import this.
"""

from schemas.events import (
    DEAD_LETTER_SCHEMA_VERSION,
    UPLOAD_SCHEMA_VERSION,
    VERDICT_SCHEMA_VERSION,
    BundleRef,
    CacheStatus,
    DeadLetter,
    ErrorCode,
    Label,
    ShadowScore,
    SourceRecord,
    Thresholds,
    Timings,
    UploadEvent,
    VerdictEvent,
    b64encode,
    utcnow,
)
from schemas.manifest import (
    Backbone,
    BundleManifest,
    Calibration,
    Fidelity,
    Head,
    HeadInput,
    Parity,
    Preprocess,
)

__all__ = [
    "DEAD_LETTER_SCHEMA_VERSION",
    "UPLOAD_SCHEMA_VERSION",
    "VERDICT_SCHEMA_VERSION",
    "Backbone",
    "BundleManifest",
    "BundleRef",
    "CacheStatus",
    "Calibration",
    "DeadLetter",
    "ErrorCode",
    "Fidelity",
    "Head",
    "HeadInput",
    "Label",
    "Parity",
    "Preprocess",
    "ShadowScore",
    "SourceRecord",
    "Thresholds",
    "Timings",
    "UploadEvent",
    "VerdictEvent",
    "b64encode",
    "utcnow",
]
