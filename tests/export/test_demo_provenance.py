"""The demo's provenance uploads carry the evidence the table says they do, and lose it all when stripped."""

from __future__ import annotations

from pathlib import Path

from export import demo_provenance
from schemas.provenance import SignalKind, SignalStatus
from worker.ingest.decode import DecodeLimits, decode_image
from worker.ingest.provenance import TrustList, read_provenance
from worker.model.policy import decisive_signals


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
