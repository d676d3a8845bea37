"""C2P-CLIP's released detector (fine-tuned CLIP ViT-L/14 image encoder + classifier), served as its inference.py runs it.

Why this one as the second importer: of the candidates (RINE, C2P-CLIP,
FatFormer), C2P-CLIP is the one whose released checkpoint maps onto this
project's bundle as it is: an image encoder (OpenAI's ViT-L/14 architecture,
fine-tuned, with the LoRA merged so the release loads with ``strict=True`` into
a plain ``transformers`` ``CLIPModel`` vision tower) and one linear layer on
the L2-normalised 768-d projected feature. RINE's classifier reads the CLS
token of every intermediate encoder block, which needs a backbone output the
worker does not have; FatFormer inserts forgery-aware adapters (with a
frequency branch) into the encoder and compares against text-prompt features,
an architecture open_clip does not build.

The checkpoint layout, established from chuangchuangtan/C2P-CLIP-DeepfakeDetection's
``inference.py`` (``C2P_CLIP`` module: ``self.model = CLIPModel.from_pretrained(
'openai/clip-vit-large-patch14')`` with the text tower deleted and ``self.model.fc
= nn.Linear(768, 1)``; the release is loaded with ``load_state_dict(strict=True)``):

    model.vision_model.embeddings.{class_embedding, patch_embedding.weight, position_embedding.weight}
    model.vision_model.pre_layrnorm.{weight,bias}
    model.vision_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}
    model.vision_model.encoder.layers.{i}.{layer_norm1,layer_norm2}.{weight,bias}
    model.vision_model.encoder.layers.{i}.mlp.{fc1,fc2}.{weight,bias}
    model.vision_model.post_layernorm.{weight,bias}
    model.visual_projection.weight          (768, 1024), no bias
    model.fc.{weight,bias}                  (1, 768), (1,)

:func:`open_clip_visual` renames it to open_clip's image tower (q, k and v
stacked into ``in_proj``; ``visual_projection.weight`` transposed into
``proj``); the activation is QuickGELU, as the HF config of
``openai/clip-vit-large-patch14`` says (``hidden_act: quick_gelu``).
"""

from __future__ import annotations

import argparse
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from export.clip import encoder_from_visual_state
from export.importers import Importer
from export.importers.common import ReleasedHead, ReleasedProbe, add_output_arguments, read_linear, require_file, write_imported
from schemas import Preprocess, Weights
from worker.model.bundle import file_sha256

PAPER = "Tan et al., C2P-CLIP: Injecting Category Common Prompt in CLIP to Enhance Generalization in Deepfake Detection (2024)"
VISION = "model.vision_model."
_LAYER = re.compile(r"^model\.vision_model\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_TOP_NAMES = {
    VISION + "embeddings.class_embedding": "class_embedding",
    VISION + "embeddings.patch_embedding.weight": "conv1.weight",
    VISION + "embeddings.position_embedding.weight": "positional_embedding",
    VISION + "pre_layrnorm.weight": "ln_pre.weight",
    VISION + "pre_layrnorm.bias": "ln_pre.bias",
    VISION + "post_layernorm.weight": "ln_post.weight",
    VISION + "post_layernorm.bias": "ln_post.bias",
}
#: Buffers older transformers versions saved with the weights; not weights.
_IGNORED = {VISION + "embeddings.position_ids"}

DESCRIPTION = f"""\
Serve C2P-CLIP ({PAPER}) from its released checkpoint, as its inference.py runs it
(chuangchuangtan/C2P-CLIP-DeepfakeDetection):

  backbone    CLIP ViT-L/14 image encoder fine-tuned by the authors (LoRA merged), QuickGELU,
              pooled CLS token after post_layernorm, visual_projection: 768-d
  head        the released nn.Linear(768, 1) on the L2-normalised feature, sigmoid
  preprocess  clip mode with torchvision's Resize(224) default, bilinear: shortest side to 224,
              CenterCrop(224), ToTensor, CLIP mean/std
  threshold   0.5, the paper's (inference.py reports accuracy at 0.5), recorded as uncalibrated

Files:
  --checkpoint  the authors' release C2P_CLIP_release_20240901.zip (the URL is inference.py's
                --model_path default), or the single file inside it: a torch.save'd state dict
                of the layout in this module's docstring.

Example:
  python -m export import c2p-clip bundles/c2p --checkpoint C2P_CLIP_release_20240901.zip

Recalibration with `bundle --head` is not offered for this importer: it needs the fine-tuned
encoder as an embedding checkpoint with bilinear clip preprocessing, which `embed` does not build.
"""


def read_release(path: Path) -> dict[str, torch.Tensor]:
    """The release's state dict: the zip as published (one member, as ``torch.hub`` reads it) or the file inside it."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            names = [m.filename for m in members]
            is_torch_zip = any(n.endswith("/data.pkl") for n in names)
            if not is_torch_zip:
                if len(members) != 1:
                    raise SystemExit(f"--checkpoint {path} is a zip of {len(members)} files; the release holds exactly one state dict")
                with tempfile.TemporaryDirectory() as tmp:
                    inner = Path(zf.extract(members[0], tmp))
                    return _load(inner, path)
    return _load(path, path)


def _load(path: Path, shown: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SystemExit(f"--checkpoint {shown} is not a readable state dict of tensors: {exc}") from None
    if not isinstance(state, dict):
        raise SystemExit(f"--checkpoint {shown} holds a {type(state).__name__}, not a state dict")
    return state


def open_clip_visual(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """C2P-CLIP's (transformers) image-tower names -> open_clip's ``visual`` names; every tensor accounted for."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state.items():
        if key in _IGNORED or key.startswith("model.fc."):
            continue
        if key in _TOP_NAMES:
            out[_TOP_NAMES[key]] = value
        elif key == "model.visual_projection.weight":
            out["proj"] = value.t().contiguous()
        elif m := _LAYER.match(key):
            i, rest = int(m.group(1)), m.group(2)
            if rest in _LAYER_NAMES:
                out[f"transformer.resblocks.{i}.{_LAYER_NAMES[rest]}"] = value
            elif (qm := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)) is not None:
                qkv.setdefault(i, {})[f"{qm.group(1)}.{qm.group(2)}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise SystemExit(f"{source}: {len(unknown)} tensors are not part of C2P-CLIP's layout (e.g. {unknown[:3]}); is this the C2P-CLIP release?")
    if not out:
        raise SystemExit(f"{source} holds no C2P-CLIP image-encoder tensors (expected keys under {VISION!r})")
    for i, parts in sorted(qkv.items()):
        missing = {f"{p}.{t}" for p in "qkv" for t in ("weight", "bias")} - set(parts)
        if missing:
            raise SystemExit(f"{source}: layer {i} lacks self_attn {sorted(missing)}")
        out[f"transformer.resblocks.{i}.attn.in_proj_weight"] = torch.cat([parts["q.weight"], parts["k.weight"], parts["v.weight"]])
        out[f"transformer.resblocks.{i}.attn.in_proj_bias"] = torch.cat([parts["q.bias"], parts["k.bias"], parts["v.bias"]])
    return out


class C2PClipImporter(Importer):
    name = "c2p-clip"
    summary = "C2P-CLIP's released fine-tuned CLIP ViT-L/14 and classifier (clip preprocessing, bilinear; threshold 0.5)"
    description = DESCRIPTION

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_output_arguments(parser, default_name="c2p-clip")
        parser.add_argument("--checkpoint", type=Path, required=True, metavar="PATH", help="C2P_CLIP_release_20240901.zip, or the state dict inside it.")
        parser.add_argument(
            "--arch",
            default="ViT-L-14",
            help="open_clip config the release fits (default ViT-L-14, the released model; tests use the project's tiny config).",
        )

    def run(self, args: argparse.Namespace) -> int:
        ckpt = require_file(args.checkpoint, "--checkpoint")
        state = read_release(ckpt)
        fc = read_linear(ckpt, "--checkpoint", weight_key="model.fc.weight", bias_key="model.fc.bias", state=state)
        weights = Weights(source="checkpoint", file=ckpt.name, sha256=file_sha256(ckpt), openai=False)
        encoder = encoder_from_visual_state(args.arch, open_clip_visual(state, str(ckpt)), weights, quick_gelu=True, source=str(ckpt))
        image_size: Any = encoder.visual.image_size  # open_clip's attribute (an int or an (h, w) pair), typed Tensor | Module by nn.Module
        size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
        import open_clip

        preprocess = Preprocess(
            mode="clip", image_size=size, interpolation="bilinear", mean=tuple(open_clip.OPENAI_DATASET_MEAN), std=tuple(open_clip.OPENAI_DATASET_STD)
        )
        with torch.no_grad():
            dim = int(encoder(torch.zeros(1, 3, size, size)).shape[-1])
        if fc.in_features != dim:
            raise SystemExit(f"--checkpoint {ckpt}: model.fc expects {fc.in_features}-d features, the encoder gives {dim}-d")
        head = ReleasedHead(
            "linear-probe",
            PAPER,
            ReleasedProbe(fc, normalize=True),
            {
                "by": "the paper's authors (chuangchuangtan/C2P-CLIP-DeepfakeDetection release 20240901)",
                "trained_on": "the authors' training set (see the paper); encoder fine-tuned with LoRA and category common prompts",
                "forward": "sigmoid(fc(f / ||f||)), f = visual_projection(post_layernorm(CLS))",
            },
        )
        write_imported(
            args,
            encoder=encoder,
            preprocess=preprocess,
            dim=dim,
            architecture=args.arch,
            pretrained=str(ckpt),
            head=head,
            released_files={"--checkpoint": ckpt},
            paper_threshold_note="threshold 0.5 is C2P-CLIP's own (inference.py reports accuracy at 0.5); it is not calibrated on your data",
            recalibrate_hint=None,
        )
        return 0


IMPORTER = C2PClipImporter()
