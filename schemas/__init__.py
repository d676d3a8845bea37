"""Contracts: event models on the topics and the model-bundle manifest.

Imports nothing from ``worker`` or ``export``; both of those import this.
"""

from schemas.attribution import UNKNOWN_FAMILY, Attribution
from schemas.drift import DRIFT_REPORT_SCHEMA_VERSION, DriftReading, DriftReport, DriftStatistic, DriftStatus, DriftWindow
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
from schemas.feedback import DECISION_SCHEMA_VERSION, DecisionLabel, DecisionSource, ModeratorDecision
from schemas.manifest import (
    Backbone,
    BundleManifest,
    Calibration,
    Fidelity,
    Head,
    HeadInput,
    Parity,
    Preprocess,
    PreprocessMode,
    Weights,
)

__all__ = [
    "DEAD_LETTER_SCHEMA_VERSION",
    "DECISION_SCHEMA_VERSION",
    "DRIFT_REPORT_SCHEMA_VERSION",
    "UNKNOWN_FAMILY",
    "UPLOAD_SCHEMA_VERSION",
    "VERDICT_SCHEMA_VERSION",
    "Attribution",
    "Backbone",
    "BundleManifest",
    "BundleRef",
    "CacheStatus",
    "Calibration",
    "DeadLetter",
    "DecisionLabel",
    "DecisionSource",
    "DriftReading",
    "DriftReport",
    "DriftStatistic",
    "DriftStatus",
    "DriftWindow",
    "ErrorCode",
    "Fidelity",
    "Head",
    "HeadInput",
    "Label",
    "ModeratorDecision",
    "Parity",
    "Preprocess",
    "PreprocessMode",
    "ShadowScore",
    "SourceRecord",
    "Thresholds",
    "Timings",
    "UploadEvent",
    "VerdictEvent",
    "Weights",
    "b64encode",
    "utcnow",
]
