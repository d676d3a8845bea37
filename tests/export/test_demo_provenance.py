"""The demo's provenance uploads carry the evidence the table says they do, lose it all when stripped, and print as the table says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export import demo_provenance
from schemas.provenance import DecidedBy, Provenance, ProvenancePolicy, SignalKind, SignalStatus
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.provenance import ProvenanceReading, TrustList, read_provenance
from worker.model.policy import decisive_signals
from worker.pipeline.images import unreadable_reading


def test_each_kind_carries_its_evidence_and_the_stripped_copy_none(tmp_path: Path) -> None:
    env = demo_provenance.worker_env(tmp_path)
    trust = TrustList.from_file(Path(env["AIGIS_PROVENANCE_TRUST_ANCHORS"]))
    assert demo_provenance.worker_env(tmp_path) == env  # the CA is made once per work directory and reused
    found: dict[str, set[str]] = {}
    decisive: dict[str, list[SignalKind]] = {}
    uploads = demo_provenance.uploads("t", tmp_path)
    assert len({u.value for u in uploads}) == len(uploads) == 12
    for u in uploads:
        reading = read_provenance(u.value, trust=trust, image=decode_image(u.value, DecodeLimits()).image)
        found[u.upload_id] = {f"{s.kind.value}:{s.strength.value}" for s in reading.signals if s.status is SignalStatus.found}
        decisive[u.upload_id] = decisive_signals(reading.signals)
    assert found["t-prov-c2pa-trusted"] == {"c2pa:verified"} and decisive["t-prov-c2pa-trusted"] == [SignalKind.c2pa]
    assert found["t-prov-c2pa-untrusted"] == {"c2pa:signed"} and decisive["t-prov-c2pa-untrusted"] == []
    assert found["t-prov-a1111-png"] == found["t-prov-comfyui-png"] == {"generator_metadata:claimed"}
    assert found["t-prov-xmp-jpeg"] == {"iptc_digital_source_type:claimed"}
    assert found["t-prov-watermark-png"] == {"watermark:watermark"} and decisive["t-prov-watermark-png"] == [SignalKind.watermark]
    assert all(found[u.upload_id] == set() for u in uploads if u.upload_id.endswith("-stripped"))


def test_stripped_copies_have_metadata_absent_and_the_watermark_not_checked(tmp_path: Path) -> None:
    """What the README and the module say of the stripped copies: nothing found, the watermark not looked for (4:2:0 chroma)."""
    trust = TrustList.from_file(Path(demo_provenance.worker_env(tmp_path)["AIGIS_PROVENANCE_TRUST_ANCHORS"]))
    stripped = [u for u in demo_provenance.uploads("t", tmp_path) if u.upload_id.endswith("-stripped")]
    assert len(stripped) == 6
    for u in stripped:
        reading = read_provenance(u.value, trust=trust, image=decode_image(u.value, DecodeLimits()).image)
        statuses = {s.kind: s.status for s in reading.signals}
        assert statuses == {
            SignalKind.c2pa: SignalStatus.absent,
            SignalKind.iptc: SignalStatus.absent,
            SignalKind.generator: SignalStatus.absent,
            SignalKind.watermark: SignalStatus.not_checked,
        }, u.upload_id


def _verdict_doc(reading: ProvenanceReading) -> dict[str, Any]:
    """The verdict JSON the demo prints a row from, with the provenance block the worker's policy makes of ``reading``."""
    decisive = decisive_signals(reading.signals)
    block = Provenance(policy=ProvenancePolicy.decide, signals=list(reading.signals), decisive=decisive)
    return {"decided_by": (DecidedBy.provenance if decisive else DecidedBy.model).value, "provenance": json.loads(block.model_dump_json())}


def test_cell_shows_who_decided_and_what_was_found(tmp_path: Path) -> None:
    trust = TrustList.from_file(Path(demo_provenance.worker_env(tmp_path)["AIGIS_PROVENANCE_TRUST_ANCHORS"]))
    by_id = {u.upload_id: u.value for u in demo_provenance.uploads("t", tmp_path)}

    def cell(upload_id: str) -> str:
        data = by_id[upload_id]
        return demo_provenance.cell(_verdict_doc(read_provenance(data, trust=trust, image=decode_image(data, DecodeLimits()).image)))

    assert cell("t-prov-c2pa-trusted") == "provenance c2pa:verified*"  # decisive: starred, and provenance decided
    assert cell("t-prov-watermark-png") == "provenance watermark:watermark*(sdxl)"
    assert cell("t-prov-a1111-png") == "model      generator:claimed(AUTOMATIC1111 Stable Diffusion WebUI)"
    assert cell("t-prov-c2pa-trusted-stripped") == "model      -"  # stripped: nothing found, the model decides
    timed_out = demo_provenance.cell(_verdict_doc(unreadable_reading("timed out after 2s")))
    assert timed_out == "model      c2pa:unreadable, iptc:unreadable, generator:unreadable, watermark:unreadable"
    assert demo_provenance.cell({}) == "model      -"  # a verdict without a provenance block (schema version 1)
