"""Provenance metrics: one verdict's signals by kind and status, AI claims by strength, and who decided."""

from __future__ import annotations

from devkit import provenance_images as pi
from worker.ingest.provenance import read_provenance
from worker.ops.metrics import WorkerMetrics


def test_count_provenance_by_kind_status_strength_and_decider() -> None:
    m = WorkerMetrics()
    reading = read_provenance(pi.with_xmp(pi.xmp_packet("trainedAlgorithmicMedia"), "PNG"))
    m.count_provenance(reading.signals, "model")
    m.count_provenance(read_provenance(pi.encode(pi.photo(), "JPEG")).signals, "model")
    assert m.provenance_signals.value("iptc_digital_source_type", "found") == 1
    assert m.provenance_signals.value("iptc_digital_source_type", "absent") == 1
    assert m.provenance_signals.value("watermark", "not_checked") == 2
    assert m.provenance_ai.value("iptc_digital_source_type", "claimed") == 1 and m.provenance_ai.total() == 1
    assert m.decisions.value("model") == 2 and m.decisions.value("provenance") == 0
    assert 'aigis_provenance_signals_total{kind="c2pa",status="absent"} 2' in m.render()
