"""`python -m export import c2p-clip`: C2P-CLIP's release layout, converted and served, scores as its inference.py does.

The reference is C2P-CLIP's own model class rebuilt as its inference.py writes it (a ``transformers``
``CLIPModel`` without its text tower, ``fc`` on the L2-normalised projected feature, sigmoid) with its
test transform (Resize(224) bilinear, CenterCrop(224), ToTensor, Normalize). Its weights are random
and its size is the project's tiny ViT (same layer names as the released ViT-L/14: only the shapes
differ), saved and zipped as the authors released theirs. The served side is the imported bundle
run by the worker's pipeline on real photographs.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from export.cli import main
from export.clip import TINY
from export.importers.c2p_clip import open_clip_visual
from export.photos import photo_paths
from worker.model.bundle import LoadedBundle
from worker.score import score_files

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency (pip install -e '.[dev]'): C2P-CLIP's reference model")

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
TOLERANCE = 1e-4


class C2PClip(nn.Module):
    """C2P-CLIP's inference.py model (``C2P_CLIP``), on a config the size of aigis-tiny."""

    def __init__(self) -> None:
        super().__init__()
        vision = {
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 32,
            "hidden_act": "quick_gelu",
        }
        text = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16}
        self.model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))
        del self.model.text_model
        del self.model.text_projection
        del self.model.logit_scale
        self.model.fc = nn.Linear(64, 1)
        torch.nn.init.normal_(self.model.fc.weight.data, 0.0, 0.5)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=img).pooler_output
        feats = self.model.visual_projection(pooled)
        feats = feats / feats.norm(p=2, dim=-1, keepdim=True)
        return self.model.fc(feats)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("c2p")
    torch.manual_seed(0)
    model = C2PClip().eval()
    with torch.no_grad():  # transformers initialises with std 0.02: spread the weights so the photos get distinct scores
        for p in model.model.vision_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pth = root / "C2P_CLIP_release.pth"
    torch.save(model.state_dict(), pth)
    zipped = root / "C2P_CLIP_release_20240901.zip"
    with zipfile.ZipFile(zipped, "w") as zf:  # as released: a zip holding the one state-dict file (torch.hub's legacy zip)
        zf.write(pth, pth.name)
    return {"root": root, "model": model, "pth": pth, "zip": zipped}


def test_served_scores_match_c2p_clips_inference(release: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    from torchvision import transforms

    out = tmp_path / "c2p"
    assert main(["import", "c2p-clip", str(out), "--checkpoint", str(release["zip"]), "--arch", TINY]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    bb = manifest["backbone"]
    assert bb["activation"] == "quick_gelu" and bb["preprocess"]["mode"] == "clip" and bb["preprocess"]["interpolation"] == "bilinear"
    assert bb["weights"]["file"] == "C2P_CLIP_release_20240901.zip" and bb["weights"]["openai"] is False
    assert manifest["calibration"]["threshold_source"] == "paper" and not manifest["calibration"]["calibrated"]

    photos = photo_paths()
    outcomes = score_files(LoadedBundle(out), photos, max_batch=8)
    served = {Path(o.record.key.decode()).name: o.verdict.score for o in outcomes if o.verdict is not None}  # type: ignore[union-attr]
    tf = transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in photos])
    with torch.no_grad():
        paper = release["model"](x).sigmoid().flatten().numpy()
    diffs = {p.name: abs(served[p.name] - float(paper[i])) for i, p in enumerate(photos)}
    print("C2P-CLIP import, |served - inference.py|:", diffs)
    assert not manifest["backbone"]["preprocess"]["allow_draft"]  # the paper decodes every JPEG fully; so does the bundle
    assert max(diffs.values()) < TOLERANCE
    assert np.ptp(paper) > 10 * TOLERANCE


def test_the_unzipped_state_dict_imports_the_same(release: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    assert main(["import", "c2p-clip", str(tmp_path / "a"), "--checkpoint", str(release["pth"]), "--arch", TINY]) == 0
    assert not (tmp_path / "a.head.pt").exists()  # no recalibration path for this importer, so no head checkpoint


def test_layout_errors_are_clear(release: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    state = torch.load(release["pth"], weights_only=True)
    with pytest.raises(SystemExit, match="not part of C2P-CLIP's layout"):
        open_clip_visual({**state, "model.text_model.x": torch.zeros(1)}, "x")
    broken = {k: v for k, v in state.items() if "layers.1.self_attn.k_proj" not in k}
    with pytest.raises(SystemExit, match="layer 1 lacks self_attn"):
        open_clip_visual(broken, "x")
    torch.save(state, tmp_path / "s.pth")
    with pytest.raises(SystemExit, match="does not fit --arch ViT-B-16"):
        main(["import", "c2p-clip", str(tmp_path / "b"), "--checkpoint", str(tmp_path / "s.pth"), "--arch", "ViT-B-16"])
