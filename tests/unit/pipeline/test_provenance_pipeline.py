"""Provenance through the pipeline: read from the original bytes (inline or fetched), fused into the verdict by the policy.

The bundles here have their thresholds pinned so the model's label is known in
advance (``says_real``: every score is below the threshold; ``says_ai``: every
score is above it), which makes "whatever the model says" and "nothing makes an
image real" checkable on a random-weight backbone.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devkit import provenance_images as pi
from devkit.bundles import copy_bundle, rewrite_manifest
from devkit.c2pa_signing import make_ca, make_signer, sign_image
from devkit.watermark import embed
from export.photos import load_rgb, photo_paths
from schemas import Label, UploadEvent, VerdictEvent
from schemas.provenance import DecidedBy, ProvenancePolicy, SignalKind, SignalStatus, Strength
from worker.config import WorkerConfig
from worker.ingest.decode_pool import DecodePool
from worker.ingest.provenance import read_provenance
from worker.ingest.wire import InputRecord
from worker.model.bundle import LoadedBundle
from worker.model.rollout import Models
from worker.pipeline import images
from worker.pipeline.batch import BatchProcessor
from worker.pipeline.items import PipelineSettings

CA = make_ca()
SIGNER = make_signer(CA)
STRANGER = make_signer(make_ca("stranger CA"))


def _jpeg() -> bytes:
    return pi.encode(pi.photo(96, 64), "JPEG", quality=90)


def _watermarked_png() -> bytes:
    rgb = np.asarray(load_rgb(photo_paths(include_grey=False)[0]))
    buf = io.BytesIO()
    Image.fromarray(embed(rgb, "sd1")).save(buf, "PNG")
    return buf.getvalue()


#: name -> file bytes, one per kind of evidence (made once: signing and watermarking cost a little)
FILES: dict[str, bytes] = {
    "c2pa-trusted-ai": sign_image(_jpeg(), "image/jpeg", SIGNER, "trainedAlgorithmicMedia"),
    "c2pa-trusted-camera": sign_image(_jpeg(), "image/jpeg", SIGNER, "digitalCapture"),
    "c2pa-untrusted-ai": sign_image(_jpeg(), "image/jpeg", STRANGER, "trainedAlgorithmicMedia"),
    "a1111": pi.png_with_text({"parameters": pi.a1111_parameters()}),
    "comfyui": pi.png_with_text({"prompt": pi.comfyui_prompt(), "workflow": pi.comfyui_workflow()}),
    "xmp": pi.with_xmp(pi.xmp_packet("trainedAlgorithmicMedia"), "JPEG"),
    "watermark": _watermarked_png(),
    "plain": _jpeg(),
}
DECISIVE = {"c2pa-trusted-ai": SignalKind.c2pa, "watermark": SignalKind.watermark}


def _pinned(tiny_bundle: Path, tmp_path: Path, name: str, cut: float) -> Path:
    bundle = copy_bundle(tiny_bundle, tmp_path / name)

    def edit(doc: dict) -> None:  # type: ignore[type-arg]
        doc["calibration"].update(threshold=cut, uncertain_low=cut, uncertain_high=cut, calibrated=True)

    rewrite_manifest(bundle, edit)
    return bundle


@pytest.fixture(scope="module")
def bundles(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedBundle]:
    root = tmp_path_factory.mktemp("pinned")
    return {"says_real": LoadedBundle(_pinned(tiny_bundle, root, "real", 1.0)), "says_ai": LoadedBundle(_pinned(tiny_bundle, root, "ai", 0.0))}


@pytest.fixture(scope="module")
def anchors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trust") / "anchors.pem"
    path.write_bytes(CA.cert_pem)
    return path


def _processor(bundle: LoadedBundle, pool: ThreadPoolExecutor | DecodePool, policy: ProvenancePolicy, anchors: Path | None, **cfg: object) -> BatchProcessor:
    config = WorkerConfig(bundle=bundle.path, redis_url="", provenance_policy=policy, provenance_trust_anchors=anchors, **cfg)  # type: ignore[arg-type]
    return BatchProcessor(PipelineSettings.from_config(config), Models(bundle), None, pool)


def _verdicts(proc: BatchProcessor, files: dict[str, bytes]) -> dict[str, VerdictEvent]:
    records = [InputRecord("t", 0, i, None, name.encode(), data) for i, (name, data) in enumerate(files.items())]
    out = {}
    for name, outcome in zip(files, proc.process(records), strict=True):
        assert outcome.verdict is not None, (name, outcome.event)
        out[name] = outcome.verdict
    return out


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as p:
        yield p


def test_decide_labels_from_decisive_evidence_whatever_the_model_says(bundles: dict[str, LoadedBundle], anchors: Path, pool: ThreadPoolExecutor) -> None:
    proc = _processor(bundles["says_real"], pool, ProvenancePolicy.decide, anchors)
    got = _verdicts(proc, FILES)
    off = _verdicts(_processor(bundles["says_real"], pool, ProvenancePolicy.off, None), FILES)
    for name, v in got.items():
        assert v.model_label is Label.real and v.score == off[name].score, name  # both assessments, the score untouched
        assert [s.kind for s in v.provenance.signals] == list(SignalKind) and v.provenance.policy is ProvenancePolicy.decide
        if name in DECISIVE:
            assert v.label is Label.ai_generated and v.decided_by is DecidedBy.provenance, name
            assert v.provenance.decisive == [DECISIVE[name]]
        else:
            assert v.label is Label.real and v.decided_by is DecidedBy.model and v.provenance.decisive == [], name
    assert got["c2pa-trusted-ai"].provenance.signal(SignalKind.c2pa).strength is Strength.verified  # type: ignore[union-attr]
    untrusted = got["c2pa-untrusted-ai"].provenance.signal(SignalKind.c2pa)
    assert untrusted is not None and untrusted.strength is Strength.signed and untrusted.ai_declared  # claims AI, annotates only
    assert got["a1111"].provenance.signal(SignalKind.generator).status is SignalStatus.found  # type: ignore[union-attr]
    assert got["comfyui"].provenance.signal(SignalKind.generator).generator == "ComfyUI"  # type: ignore[union-attr]
    assert got["xmp"].provenance.signal(SignalKind.iptc).ai_declared  # type: ignore[union-attr]
    assert {s.status for s in got["plain"].provenance.signals} <= {SignalStatus.absent, SignalStatus.not_checked}
    assert proc.metrics.decisions.value("provenance") == 2 and proc.metrics.decisions.value("model") == len(FILES) - 2
    assert proc.metrics.provenance_signals.value("c2pa", "found") == 3
    assert all(pi.PROMPT_MARKER not in v.model_dump_json() for v in got.values()), "no prompt text in a verdict"


def test_nothing_in_metadata_makes_an_image_real(bundles: dict[str, LoadedBundle], anchors: Path, pool: ThreadPoolExecutor) -> None:
    got = _verdicts(_processor(bundles["says_ai"], pool, ProvenancePolicy.decide, anchors), FILES)
    assert {v.label for v in got.values()} == {Label.ai_generated}
    camera = got["c2pa-trusted-camera"]
    assert camera.decided_by is DecidedBy.model and camera.provenance.signal(SignalKind.c2pa).strength is Strength.verified  # type: ignore[union-attr]


def test_annotate_attaches_every_signal_and_never_decides(bundles: dict[str, LoadedBundle], anchors: Path, pool: ThreadPoolExecutor) -> None:
    got = _verdicts(_processor(bundles["says_real"], pool, ProvenancePolicy.annotate, anchors), FILES)
    assert {v.label for v in got.values()} == {Label.real} and {v.decided_by for v in got.values()} == {DecidedBy.model}
    assert got["c2pa-trusted-ai"].provenance.signal(SignalKind.c2pa).strength is Strength.verified  # type: ignore[union-attr]
    assert got["watermark"].provenance.signal(SignalKind.watermark).payload == "sd1"  # type: ignore[union-attr]


def test_off_reads_nothing(bundles: dict[str, LoadedBundle], pool: ThreadPoolExecutor) -> None:
    got = _verdicts(_processor(bundles["says_real"], pool, ProvenancePolicy.off, None), FILES)
    assert all(v.provenance.policy is ProvenancePolicy.off and v.provenance.signals == [] for v in got.values())
    assert {v.label for v in got.values()} == {Label.real}


def test_without_trust_anchors_no_manifest_decides(bundles: dict[str, LoadedBundle], pool: ThreadPoolExecutor) -> None:
    v = _verdicts(_processor(bundles["says_real"], pool, ProvenancePolicy.decide, None), {"c": FILES["c2pa-trusted-ai"]})["c"]
    sig = v.provenance.signal(SignalKind.c2pa)
    assert v.label is Label.real and sig is not None and sig.trusted is None and sig.validation == "valid"


def test_a_reader_failure_is_an_unreadable_signal_never_a_dead_letter(
    bundles: dict[str, LoadedBundle], anchors: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kw: object) -> None:
        raise MemoryError("simulated: a parser library ran out of memory")

    monkeypatch.setattr(images, "read_provenance", broken)
    v = _verdicts(_processor(bundles["says_real"], pool, ProvenancePolicy.decide, anchors), {"c": FILES["c2pa-trusted-ai"]})["c"]
    assert {s.status for s in v.provenance.signals} == {SignalStatus.unreadable} and len(v.provenance.signals) == 4
    assert v.label is Label.real and v.decided_by is DecidedBy.model
    assert all(s.detail == "provenance stage failed: MemoryError" for s in v.provenance.signals)


def test_a_slow_provenance_read_times_out_on_its_own_budget_never_a_dead_letter(
    bundles: dict[str, LoadedBundle], anchors: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The C2PA SDK cannot be interrupted: a read stuck on one file must cost its signals, not its verdict.

    The decode limit is generous and the provenance one short: were provenance still inside the
    decode's limit, the stuck read would make this image a ``decode_timeout`` dead letter.
    """
    stuck = FILES["c2pa-trusted-ai"]
    release = threading.Event()

    def slow(data: bytes, *args: object, **kw: object) -> object:
        if data == stuck:
            release.wait(30)
        return read_provenance(data, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "read_provenance", slow)
    pool = DecodePool(1)  # one thread: the image after the stuck one needs the replacement thread
    try:
        proc = _processor(bundles["says_real"], pool, ProvenancePolicy.decide, anchors, decode_timeout_s=5.0, provenance_timeout_s=1.0)
        got = _verdicts(proc, {"stuck": stuck, "a1111": FILES["a1111"]})
        v = got["stuck"]
        assert v.label is Label.real and v.decided_by is DecidedBy.model and v.model_label is Label.real
        assert [s.status for s in v.provenance.signals] == [SignalStatus.unreadable] * 4
        assert {s.detail for s in v.provenance.signals} == {"timed out after 1s"}
        assert got["a1111"].provenance.signal(SignalKind.generator).status is SignalStatus.found  # type: ignore[union-attr]
        assert pool.timeouts == 1 and pool.abandoned == 1
        assert proc.metrics.provenance_signals.value("c2pa", "unreadable") == 1
    finally:
        release.set()
        pool.shutdown(wait=False)


def test_a_slow_decode_is_still_a_decode_timeout_with_provenance_on(bundles: dict[str, LoadedBundle], monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode keeps its own limit: provenance's budget starts only once the image is decoded."""
    release = threading.Event()
    real_decode = images.decode_image

    def slow_decode(*args: object, **kw: object) -> object:
        release.wait(30)
        return real_decode(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "decode_image", slow_decode)
    pool = DecodePool(1)
    try:
        proc = _processor(bundles["says_real"], pool, ProvenancePolicy.decide, None, decode_timeout_s=0.3, provenance_timeout_s=10.0)
        (outcome,) = proc.process([InputRecord("t", 0, 0, None, b"k", FILES["plain"])])
        assert outcome.dead_letter is not None and outcome.dead_letter.error_code.value == "decode_timeout"
    finally:
        release.set()
        pool.shutdown(wait=False)


def test_a_bad_trust_list_stops_the_worker_with_its_reason(bundles: dict[str, LoadedBundle], tmp_path: Path) -> None:
    bad = tmp_path / "anchors.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(SystemExit, match="provenance-trust-anchors"):
        PipelineSettings.from_config(WorkerConfig(bundle=bundles["says_real"].path, redis_url="", provenance_trust_anchors=bad))


class _Files(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = FILES[self.path.strip("/")]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_fetched_images_are_read_from_the_bytes_the_fetcher_got(bundles: dict[str, LoadedBundle], anchors: Path, pool: ThreadPoolExecutor) -> None:
    server = _Files()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        proc = _processor(bundles["says_real"], pool, ProvenancePolicy.decide, anchors, fetch_allowed_hosts=f"127.0.0.1:{port}")
        names = ["c2pa-trusted-ai", "watermark", "a1111"]
        records = []
        for i, name in enumerate(names):
            event = UploadEvent(upload_id=name, image_uri=f"http://127.0.0.1:{port}/{name}")
            records.append(InputRecord("t", 0, i, None, name.encode(), event.model_dump_json().encode(), (("content-type", b"application/json"),)))
        got = {o.upload_id: o.verdict for o in proc.process(records)}
    finally:
        server.shutdown()
        server.server_close()
    assert got["c2pa-trusted-ai"] is not None and got["c2pa-trusted-ai"].provenance.decisive == [SignalKind.c2pa]
    assert got["watermark"] is not None and got["watermark"].provenance.decisive == [SignalKind.watermark]
    assert got["a1111"] is not None and got["a1111"].decided_by is DecidedBy.model
    assert got["a1111"].provenance.signal(SignalKind.generator).status is SignalStatus.found  # type: ignore[union-attr]


def test_one_log_line_per_decisive_signal(bundles: dict[str, LoadedBundle], anchors: Path, pool: ThreadPoolExecutor) -> None:
    from structlog.testing import capture_logs

    proc = _processor(bundles["says_real"], pool, ProvenancePolicy.decide, anchors)
    with capture_logs() as logs:
        _verdicts(proc, FILES)
    decided = [e for e in logs if e["event"] == "provenance_decided"]
    assert sorted(e["upload_id"] for e in decided) == sorted(DECISIVE)
    by_id = {e["upload_id"]: e for e in decided}
    assert by_id["c2pa-trusted-ai"]["kind"] == "c2pa" and by_id["c2pa-trusted-ai"]["strength"] == "verified"
    assert "signer=aigis test signer" in by_id["c2pa-trusted-ai"]["evidence"]
    assert by_id["watermark"]["evidence"].startswith("payload=sd1") and by_id["watermark"]["model_label"] == "real"


@pytest.fixture
def own_logging() -> Iterator[None]:
    """The score CLI configures structlog for a process of its own: undo it for the tests after this one."""
    import structlog

    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("own_logging")
def test_score_cli_prints_the_provenance_block(bundles: dict[str, LoadedBundle], anchors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from worker.score import main

    for name in ("c2pa-trusted-ai", "a1111", "plain"):
        (tmp_path / f"{name}.{'png' if name == 'a1111' else 'jpg'}").write_bytes(FILES[name])
    args = [str(tmp_path), "--bundle", str(bundles["says_real"].path), "--providers", "CPUExecutionProvider", "--provenance-trust-anchors", str(anchors)]
    assert main([*args, "--json"]) == 0
    lines = [VerdictEvent.model_validate_json(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {v.upload_id.rsplit("/", 1)[1].split(".")[0]: v for v in lines}
    assert by_name["c2pa-trusted-ai"].decided_by is DecidedBy.provenance and by_name["c2pa-trusted-ai"].provenance.decisive == [SignalKind.c2pa]
    assert by_name["a1111"].provenance.signal(SignalKind.generator).status is SignalStatus.found  # type: ignore[union-attr]
    assert main([*args, "--provenance-policy", "off"]) == 0
    table = capsys.readouterr().out
    assert "decided_by" in table and "(policy off)" in table and "provenance" not in table.split("\n", 1)[1]
    assert main(args) == 0
    assert "c2pa:verified*" in capsys.readouterr().out
