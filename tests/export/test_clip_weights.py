"""The backbone is the one the papers used: OpenAI weights run with QuickGELU, random weights only on request, provenance recorded.

Checkpoints are written by the tests with random weights in the layouts the real files have: a state
dict of OpenAI's layout (its weights plus input_resolution / context_length / vocab_size), a
TorchScript archive, a plain open_clip state dict, and the image tower alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from export.cli import build_parser
from export.clip import (
    RANDOM_INIT_NOTICE,
    TINY,
    activation_of,
    inspect_checkpoint,
    load_encoder,
    openai_release_hashes,
    plan_tag,
    register_project_configs,
)
from export.embed import encoder_fingerprint
from worker.model.bundle import LoadedBundle


def _reference_model(quick_gelu: bool, seed: int = 3) -> torch.nn.Module:
    register_project_configs()
    torch.manual_seed(seed)
    return open_clip.create_model(TINY, pretrained=None, force_quick_gelu=quick_gelu).eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    model = _reference_model(quick_gelu=True)
    state = model.state_dict()
    out = {}
    openai = {k: v.half() for k, v in state.items()}  # OpenAI ships fp16 tensors
    openai.update(input_resolution=torch.tensor(224), context_length=torch.tensor(16), vocab_size=torch.tensor(49408))
    torch.save(openai, out.setdefault("openai", root / "openai-layout.pt"))
    torch.save(state, out.setdefault("plain", root / "plain.pt"))
    torch.save({k: v for k, v in state.items() if k.startswith("visual.")}, out.setdefault("visual", root / "visual-only.pt"))
    torch.jit.save(torch.jit.script(model), out.setdefault("torchscript", root / "scripted.pt"))
    return out


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_openai_layout_checkpoint_runs_with_quick_gelu_and_matches_open_clip(ckpts: dict[str, Path]) -> None:
    enc, _, _ = load_encoder(TINY, str(ckpts["openai"]))
    assert enc.activation == "quick_gelu" and enc.weights.openai and "input_resolution" in (enc.weights.evidence or "")
    assert enc.weights.source == "checkpoint" and enc.weights.file == "openai-layout.pt" and len(enc.weights.sha256 or "") == 64
    ref_quick, ref_gelu = _reference_model(True), _reference_model(False)
    for ref in (ref_quick, ref_gelu):
        ref.load_state_dict({k: v.float() for k, v in torch.load(ckpts["plain"]).items()})
    x = _pixels()
    with torch.no_grad():
        ours, quick, gelu = enc(x), ref_quick.encode_image(x), ref_gelu.encode_image(x)
    # fp16 storage rounds the weights; the activation moves the embedding by far more than that
    assert torch.allclose(ours, quick, atol=5e-3), float((ours - quick).abs().max())
    assert float((ours - gelu).abs().max()) > 10 * float((ours - quick).abs().max())


def test_torchscript_archive_is_recognised_as_openai_format(ckpts: dict[str, Path]) -> None:
    facts, _ = inspect_checkpoint(ckpts["torchscript"])
    assert facts.torchscript and "TorchScript" in (facts.openai_evidence or "")
    enc, _, _ = load_encoder(TINY, str(ckpts["torchscript"]))
    assert enc.activation == "quick_gelu" and enc.weights.openai


def test_a_plain_state_dict_runs_as_its_config_says_unless_declared_openai(ckpts: dict[str, Path]) -> None:
    enc, _, _ = load_encoder(TINY, str(ckpts["plain"]))
    assert enc.activation == "gelu" and not enc.weights.openai and enc.weights.evidence is None
    declared, _, _ = load_encoder(TINY, str(ckpts["plain"]), assume_openai=True)
    assert declared.activation == "quick_gelu" and declared.weights.openai and declared.weights.evidence == "declared with --openai-weights"
    # same weights, other activation: another encoder, so embeddings made with one are refused for the other
    assert encoder_fingerprint(enc) != encoder_fingerprint(declared)


def test_an_undeclared_checkpoint_of_an_openai_architecture_is_refused(tmp_path: Path) -> None:
    """An open_clip-format file of ViT-L-14 cannot show whether it is OpenAI's (QuickGELU) or LAION's (GELU): the user must say."""
    ckpt = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"visual.class_embedding": torch.zeros(4)}, ckpt)  # refused before any model is built, so a stub suffices
    with pytest.raises(SystemExit, match=r"--openai-weights .* or --not-openai-weights"):
        load_encoder("ViT-L-14", str(ckpt))
    for declared in (True, False):  # declared either way, it gets past the question (and fails on the stub's missing weights)
        with pytest.raises(SystemExit, match=r"cannot load|missing"):
            load_encoder("ViT-L-14", str(ckpt), assume_openai=declared)
    args = build_parser().parse_args(["embed", "data", "out", "--pretrained", str(ckpt), "--not-openai-weights"])
    assert args.openai_weights is False
    assert build_parser().parse_args(["embed", "data", "out"]).openai_weights is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["embed", "data", "out", "--openai-weights", "--not-openai-weights"])


def test_an_image_tower_checkpoint_loads_strictly(ckpts: dict[str, Path], tmp_path: Path) -> None:
    enc, _, _ = load_encoder(TINY, str(ckpts["visual"]), assume_openai=True)
    ref = _reference_model(True)
    with torch.no_grad():
        assert torch.allclose(enc(_pixels(1)), ref.encode_image(_pixels(1)), atol=1e-5)
    broken = torch.load(ckpts["visual"])
    broken.pop("visual.ln_post.weight")
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(SystemExit, match="1 missing"):
        load_encoder(TINY, str(tmp_path / "broken.pt"))


def test_open_clip_tags_say_which_need_quick_gelu() -> None:
    weights, quick = plan_tag("ViT-L-14", "openai")
    assert quick and weights.openai and weights.label == "tag:openai"
    weights, quick = plan_tag("ViT-L-14", "laion2b_s32b_b82k")
    assert not quick and not weights.openai
    with pytest.raises(SystemExit, match="neither a checkpoint file nor an open_clip tag"):
        plan_tag("ViT-L-14", "no-such-tag")


def test_openai_release_hashes_come_from_open_clip_registry() -> None:
    # the sha256 is the directory of OpenAI's download URL for ViT-L-14.pt
    assert openai_release_hashes()["b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"] == "ViT-L-14"


def test_random_weights_only_when_asked_for() -> None:
    with pytest.raises(SystemExit, match="--random-weights"):
        load_encoder(TINY, None)
    with pytest.raises(SystemExit, match="contradict"):
        load_encoder(TINY, "openai", random_weights=True)
    enc, _, _ = load_encoder(TINY, None, random_weights=True, seed=5)
    assert enc.weights.source == "random" and enc.weights.seed == 5 and enc.weights.label == "random"


def test_only_the_random_init_notice_is_filtered_and_only_for_random_weights(ckpts: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    load_encoder(TINY, None, random_weights=True)
    assert not [r for r in caplog.records if r.getMessage().startswith(RANDOM_INIT_NOTICE)]
    # outside that call open_clip's notice reaches the logs as usual: nothing was silenced globally
    register_project_configs()
    open_clip.create_model(TINY, pretrained=None)
    assert [r for r in caplog.records if r.getMessage().startswith(RANDOM_INIT_NOTICE)]
    source = (Path(__file__).resolve().parents[2] / "export" / "clip.py").read_text()
    assert "simplefilter" not in source and "filterwarnings" not in source and "setLevel" not in source


def test_cli_refuses_random_weights_unless_asked(tmp_path: Path) -> None:
    from export.cli import main

    with pytest.raises(SystemExit, match="--random-weights"):
        main(["bundle", str(tmp_path / "b"), "--arch", TINY])
    from PIL import Image

    (tmp_path / "d" / "g" / "0_real").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "d" / "g" / "0_real" / "a.png")
    with pytest.raises(SystemExit, match="--random-weights"):
        main(["embed", str(tmp_path / "d"), str(tmp_path / "e"), "--arch", TINY])
    assert not (tmp_path / "e" / "meta.json").exists()


def test_manifest_records_weights_and_activation(ckpts: dict[str, Path], tmp_path: Path) -> None:
    from export.bundle import write_placeholder_bundle

    manifest = write_placeholder_bundle(tmp_path / "b", TINY, str(ckpts["openai"]), preprocess_mode="ufd")
    raw = json.loads((tmp_path / "b" / "manifest.json").read_text())["backbone"]
    assert raw["activation"] == "quick_gelu" and raw["weights"]["openai"] is True and raw["weights"]["file"] == "openai-layout.pt"
    assert raw["preprocess"]["mode"] == "ufd" and raw["preprocess"]["allow_draft"] is False
    bundle = LoadedBundle(tmp_path / "b")
    assert bundle.weights_label == f"checkpoint:openai-layout.pt@sha256:{manifest.backbone.weights.sha256[:12]}"  # type: ignore[union-attr]
    assert activation_of(torch.nn.Sequential(open_clip.transformer.QuickGELU())) == "quick_gelu"
    assert manifest.calibration.threshold_source == "placeholder"
    # and the served backbone is the QuickGELU one
    enc, _, _ = load_encoder(TINY, str(ckpts["openai"]))
    x = _pixels(2)
    with torch.no_grad():
        want = enc(x).numpy()
    assert np.max(np.abs(bundle.embed(x.numpy()) - want)) < 1e-4
