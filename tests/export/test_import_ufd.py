"""`python -m export import ufd`: UniversalFakeDetect's real released probe on a ViT-L/14 checkpoint of OpenAI's layout, served.

The probe is the real file (tests/fixtures/ufd/fc_weights.pth, MIT). OpenAI's weights cannot be
downloaded here, so the test writes a ViT-L-14 checkpoint of OpenAI's layout (fp16 tensors plus
input_resolution / context_length / vocab_size) with random weights. The reference is open_clip's own
OpenAI loader (``open_clip.load_openai_model``: QuickGELU, fp32 on CPU) with validate.py's transform
and the fc, i.e. UFD's forward pass; the served side is the imported bundle run by the worker's pipeline.

ViT-L/14 is 428M parameters: writing the checkpoint takes ~5 s and 0.9 GB of disk, each ONNX export of
the image tower ~40 s and 1.2 GB, a CPU forward ~2 s per image here. The module builds one import and
one recalibrated bundle (a few minutes in all, marked slow); the refusals run on the tiny config.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from export.cli import main
from export.clip import TINY, register_project_configs
from export.photos import photo_paths
from worker.model.bundle import LoadedBundle
from worker.score import score_files

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ufd"
FC = FIXTURES / "fc_weights.pth"
FC_SHA256 = "477100745713bcc957beb2b40859536859b6483fd6301b3b9293151b194c7847"
TOLERANCE = 1e-4
PHOTOS = [p for p in photo_paths() if p.name in ("astronaut.png", "coffee.png", "retina.jpg", "coins.png")]


def _openai_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v.half() for k, v in model.state_dict().items()}
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    return state


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ufd")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14", pretrained=None, force_quick_gelu=True)
    ckpt = root / "ViT-L-14.pt"
    torch.save(_openai_layout(model), ckpt)
    del model
    out = root / "ufd"
    assert main(["import", "ufd", str(out), "--clip-checkpoint", str(ckpt), "--fc", str(FC)]) == 0
    return {"root": root, "ckpt": ckpt, "out": out, "head": root / "ufd.head.pt"}


@pytest.mark.slow
def test_imported_bundle_declares_the_papers_setup(imported: dict[str, Path]) -> None:
    manifest = json.loads((imported["out"] / "manifest.json").read_text())
    bb = manifest["backbone"]
    assert bb["architecture"] == "ViT-L-14" and bb["embed_dim"] == 768 and bb["activation"] == "quick_gelu"
    assert bb["weights"]["openai"] is True and bb["weights"]["file"] == "ViT-L-14.pt" and "input_resolution" in bb["weights"]["evidence"]
    assert bb["preprocess"]["mode"] == "ufd" and bb["preprocess"]["allow_draft"] is False and bb["preprocess"]["image_size"] == 224
    cal = manifest["calibration"]
    assert (cal["threshold"], cal["calibrated"], cal["threshold_source"]) == (0.5, False, "paper")
    (head,) = manifest["heads"]
    assert head["method"] == "linear-probe" and head["training"]["files"]["--fc"] == {"file": "fc_weights.pth", "sha256": FC_SHA256}
    assert any("not calibrated on your data" in n for n in manifest["notes"])
    assert imported["head"].is_file()


@pytest.mark.slow
def test_served_scores_match_ufds_forward_pass(imported: dict[str, Path]) -> None:
    from torchvision import transforms

    bundle = LoadedBundle(imported["out"])
    outcomes = score_files(bundle, PHOTOS, max_batch=4)
    served = {Path(o.record.key.decode()).name: o.verdict.score for o in outcomes if o.verdict is not None}  # type: ignore[union-attr]
    assert len(served) == len(PHOTOS)

    reference = open_clip.load_openai_model(str(imported["ckpt"]), precision="fp32", device="cpu").eval()  # open_clip's OpenAI path
    tf = transforms.Compose(
        [transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])]
    )
    fc = torch.nn.Linear(768, 1)
    fc.load_state_dict(torch.load(FC, map_location="cpu", weights_only=True))
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in PHOTOS])
    with torch.no_grad():
        paper = fc(reference.encode_image(x)).sigmoid().flatten().numpy()
    diffs = {p.name: abs(served[p.name] - float(paper[i])) for i, p in enumerate(PHOTOS)}
    print("UFD import, |served - validate.py forward|:", diffs)
    assert max(diffs.values()) < TOLERANCE
    assert np.ptp(paper) > 10 * TOLERANCE  # the photographs get different scores: the check can see a wrong feature


@pytest.mark.slow
def test_bundle_head_recalibrates_the_imported_probe(imported: dict[str, Path], tmp_path: Path) -> None:
    from export.synth import SynthConfig, make_dataset

    make_dataset(tmp_path / "data", SynthConfig(seed=5, image_size=256, train_per_class=5, test_per_class=1, generators=("tconv",)))
    ckpt = str(imported["ckpt"])
    assert main(["embed", str(tmp_path / "data" / "train"), str(tmp_path / "emb"), "--pretrained", ckpt, "--preprocess", "ufd", "--batch-size", "5"]) == 0
    out = tmp_path / "ufd-cal"
    assert main(["bundle", str(out), "--data", str(tmp_path / "emb"), "--head", str(imported["head"]), "--pretrained", ckpt, "--target-fpr", "0.5"]) == 0
    manifest = LoadedBundle(out).manifest
    assert manifest.calibration.calibrated and manifest.calibration.threshold_source == "validation"
    assert manifest.backbone.preprocess.mode == "ufd" and manifest.backbone.activation == "quick_gelu"
    assert manifest.heads[0].training["loaded_from"] == str(imported["head"])
    assert any("published detector imported" in n for n in manifest.notes)
    # the recalibrated bundle serves the same released probe: only the operating point moved
    a = LoadedBundle(imported["out"]).score_embeddings(np.ones((2, 768), np.float32)).probability
    b = LoadedBundle(out).score_embeddings(np.ones((2, 768), np.float32)).probability
    assert np.allclose(a, b, atol=1e-7)

    # embeddings made with the clip mode cannot calibrate the ufd probe (the meta is what the check reads)
    import shutil

    shutil.copytree(tmp_path / "emb", tmp_path / "emb-clip")
    meta = json.loads((tmp_path / "emb-clip" / "meta.json").read_text())
    meta["preprocess"].update(mode="clip", allow_draft=True)
    (tmp_path / "emb-clip" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="--preprocess ufd"):
        main(["bundle", str(tmp_path / "x"), "--data", str(tmp_path / "emb-clip"), "--head", str(imported["head"]), "--pretrained", ckpt])


def test_import_refuses_weights_that_are_not_openais(tmp_path: Path) -> None:
    register_project_configs()
    torch.save(open_clip.create_model(TINY, pretrained=None).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(SystemExit, match="not recognisably OpenAI's CLIP"):
        main(["import", "ufd", str(tmp_path / "out"), "--clip-checkpoint", str(tmp_path / "plain.pt"), "--fc", str(FC)])
    torch.save({"weight": torch.zeros(2, 768)}, tmp_path / "bad-fc.pth")
    with pytest.raises(SystemExit, match="'bias'"):
        main(["import", "ufd", str(tmp_path / "out"), "--clip-checkpoint", str(tmp_path / "plain.pt"), "--fc", str(tmp_path / "bad-fc.pth")])
    with pytest.raises(SystemExit, match="no such file"):
        main(["import", "ufd", str(tmp_path / "out"), "--clip-checkpoint", str(tmp_path / "missing.pt"), "--fc", str(FC)])
    assert not (tmp_path / "out").exists()


def test_import_help_teaches_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["import", "ufd", "--help"])
    text = capsys.readouterr().out
    for needed in ("--clip-checkpoint", "--fc", "QuickGELU", "CenterCrop(224)", "0.5", "fc_weights.pth", "81.38", "93.38", "--head", "recalibrate"):
        assert needed.lower() in text.lower(), needed
