"""open_clip image encoders: the project's tiny config, real checkpoints, the papers' activation.

``aigis-tiny`` is a 2-layer ViT with 64-d embeddings registered from
``export/model_configs``. Tests and the demo use it with random weights: the
same code path as ``ViT-L-14`` (which real deployments use, 768-d), without
downloading anything. Real weights come from ``--pretrained``: an open_clip tag
(needs the hub, so not on this network) or a local checkpoint file.

Random weights only on request: :func:`load_encoder` refuses ``pretrained=None``
unless ``random_weights=True``, so a real dataset is never embedded with a
random encoder by accident.

OpenAI's CLIP weights were trained with QuickGELU (``x * sigmoid(1.702 x)``);
open_clip's ``ViT-L-14`` config uses exact GELU, and running OpenAI's weights
with it silently shifts every embedding. Here OpenAI weights always run with
QuickGELU. They are recognised by:

* an open_clip tag whose pretrained config says ``quick_gelu`` (``openai``
  among them), or
* a checkpoint file that is a TorchScript archive (the format OpenAI released
  its CLIP models in; open_clip never writes one), or a state dict carrying
  the ``input_resolution`` / ``context_length`` / ``vocab_size`` entries that
  only OpenAI's models hold, or whose sha256 is one of OpenAI's releases in
  open_clip's registry, or
* ``assume_openai=True`` (``--openai-weights``) for a conversion whose
  contents cannot show it (e.g. the HF hub's ``timm/vit_large_patch14_clip_224.openai``).

For an architecture OpenAI released (one with an ``openai`` tag in open_clip:
ViT-B-32, ViT-B-16, ViT-L-14, ...), a checkpoint file that shows none of this
evidence is refused unless the user says which it is: ``--openai-weights``
(QuickGELU) or ``--not-openai-weights`` (``assume_openai=False``: weights trained
with the config's own activation, e.g. LAION's). open_clip-format conversions
of OpenAI's weights look exactly like those, so guessing either way could run
every embedding with the wrong activation.

The encoder carries :class:`schemas.Weights` (where the weights came from) and
its activation, and :func:`export.embed.encoder_fingerprint` hashes both.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import open_clip
import torch
from open_clip.transformer import QuickGELU

from schemas import Preprocess, PreprocessMode, Weights
from worker.model.bundle import file_sha256

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
TINY = "aigis-tiny"
DEFAULT_ARCH = "ViT-L-14"
#: Entries of OpenAI's CLIP state dicts that are not weights (open_clip drops them too).
OPENAI_MARKER_KEYS = ("input_resolution", "context_length", "vocab_size")
#: The one open_clip notice that random weights trigger; filtered only when random weights were asked for.
RANDOM_INIT_NOTICE = "No pretrained weights loaded for model"

Activation = Literal["gelu", "quick_gelu"]


@cache
def register_project_configs() -> list[str]:
    """Make open_clip aware of the project's model configs (idempotent)."""
    open_clip.add_model_config(CONFIG_DIR)
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


class ImageEncoder(torch.nn.Module):
    """``encode_image`` as a module: (N, 3, S, S) normalised pixels -> (N, D) un-normalised embedding.

    Embeddings are left un-normalised (as UniversalFakeDetect feeds its linear
    probe); heads that want cosine geometry normalise inside their own graph.
    ``weights`` and ``activation`` say what the encoder is, for manifests and
    fingerprints.
    """

    def __init__(self, clip_model: torch.nn.Module, weights: Weights | None = None) -> None:
        super().__init__()
        self.visual: torch.nn.Module = clip_model.visual  # type: ignore[assignment]  # nn.Module.__getattr__ is typed Tensor | Module
        self.weights = weights or Weights(source="random")
        self.activation: Activation = activation_of(self.visual)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)


def activation_of(module: torch.nn.Module) -> Activation:
    """``quick_gelu`` when the module's MLPs use open_clip's QuickGELU, else ``gelu``."""
    return "quick_gelu" if any(isinstance(m, QuickGELU) for m in module.modules()) else "gelu"


@cache
def openai_release_hashes() -> dict[str, str]:
    """sha256 -> model name of OpenAI's released CLIP files, read from open_clip's registry (its URLs carry the sha256)."""
    out: dict[str, str] = {}
    for model, tag in open_clip.list_pretrained():
        if tag != "openai":
            continue
        url = open_clip.get_pretrained_url(model, tag)
        parts = url.split("/")
        if "openaipublic" in url and len(parts) >= 2 and len(parts[-2]) == 64:
            out.setdefault(parts[-2], model.removesuffix("-quickgelu"))
    return out


def is_torchscript_archive(path: Path) -> bool:
    """A TorchScript zip (``torch.jit.save``) holds ``code/`` and ``constants.pkl``; ``torch.save`` zips hold neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in zf.namelist())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: TorchScript archive, safetensors, or a ``torch.save`` state dict (never unpickles code)."""
    if is_torchscript_archive(path):
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise SystemExit(f"cannot read checkpoint {path} as weights (torch.load with weights_only=True failed: {exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SystemExit(f"checkpoint {path} is not a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class CheckpointFacts:
    """What a checkpoint file's contents say about its origin."""

    path: Path
    sha256: str
    torchscript: bool
    openai_evidence: str | None


def inspect_checkpoint(path: Path) -> tuple[CheckpointFacts, dict[str, torch.Tensor]]:
    """Read ``path`` and decide, from its contents only, whether it is OpenAI's CLIP."""
    sha = file_sha256(path)
    torchscript = is_torchscript_archive(path)
    state = read_state_dict(path)
    evidence = None
    if sha in openai_release_hashes():
        evidence = f"sha256 of OpenAI's {openai_release_hashes()[sha]} release"
    elif torchscript and "visual.conv1.weight" in state:
        evidence = "TorchScript archive with OpenAI's CLIP layout (the format OpenAI released)"
    elif all(k in state for k in OPENAI_MARKER_KEYS) and "visual.conv1.weight" in state:
        evidence = "state dict with OpenAI's keys (input_resolution, context_length, vocab_size)"
    return CheckpointFacts(path, sha, torchscript, evidence), state


@contextmanager
def _random_init_notice_filtered() -> Iterator[None]:
    """Drop exactly open_clip's "initialized randomly" notice (logged on the root logger), nothing else."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith(RANDOM_INIT_NOTICE)

    root = logging.getLogger()
    drop = _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _config_quick_gelu(arch: str) -> bool:
    return bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))


def image_tower(model: torch.nn.Module) -> torch.nn.Module:
    """``model.visual``, typed (``nn.Module.__getattr__`` is typed Tensor | Module)."""
    visual = model.visual
    if not isinstance(visual, torch.nn.Module):
        raise TypeError(f"{type(model).__name__} has no image tower")
    return visual


def plain_clip(arch: str, quick_gelu: bool, source: str) -> torch.nn.Module:
    """open_clip's ``CLIP`` class for ``arch``, built directly because weights are loaded into it right after.

    (``open_clip.create_model`` without weights would announce a random
    initialisation that is not what the caller gets.)
    """
    cfg = deepcopy(open_clip.get_model_config(arch))
    if cfg.pop("custom_text", False) or "timm_model_name" in cfg.get("vision_cfg", {}) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise SystemExit(f"{source} has the CLIP ViT layout but --arch {arch} is not a plain CLIP config; use the matching one (e.g. ViT-L-14)")
    cfg["quick_gelu"] = bool(quick_gelu or cfg.get("quick_gelu", False))
    return open_clip.CLIP(**cfg)


def load_strict(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """``load_state_dict(strict=True)`` with an error that says what did not fit."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or shapes:
        detail = "; ".join(
            part
            for part in (
                f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                f"shape mismatch: {shapes[:3]}" if shapes else "",
            )
            if part
        )
        raise SystemExit(f"{source} does not fit --arch {arch}: {detail}. Is it the checkpoint of another architecture?")
    module.load_state_dict(weights, strict=True)  # copies fp16 tensors (OpenAI's) into the fp32 parameters


def _build_openai_layout(arch: str, state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """open_clip's CLIP for ``arch`` with QuickGELU, loaded strictly from an OpenAI-layout state dict."""
    model = plain_clip(arch, quick_gelu=True, source=str(path))
    # Buffers the model derives itself (e.g. the text attention mask) appear in a TorchScript state dict; they are not weights.
    derived = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    load_strict(model, {k: v for k, v in state.items() if k not in OPENAI_MARKER_KEYS and k not in derived}, str(path), arch)
    return model


def encoder_from_visual_state(arch: str, visual: dict[str, torch.Tensor], weights: Weights, quick_gelu: bool, source: str) -> ImageEncoder:
    """An :class:`ImageEncoder` from the image tower's weights alone (open_clip names without the ``visual.`` prefix)."""
    register_project_configs()
    model = plain_clip(arch, quick_gelu=quick_gelu, source=source)
    load_strict(image_tower(model), visual, source, arch)
    return ImageEncoder(model.eval(), weights).eval()


def openai_released(arch: str) -> bool:
    """OpenAI released weights for this architecture (open_clip lists an ``openai`` tag for it)."""
    return "openai" in open_clip.list_pretrained_tags_by_model(arch)


def _build(arch: str, pretrained: str | None, seed: int, random_weights: bool, assume_openai: bool | None) -> tuple[torch.nn.Module, Weights]:
    if pretrained is None:
        if not random_weights:
            raise SystemExit(
                f"no weights given for {arch}: pass --pretrained TAG_OR_CHECKPOINT (e.g. an OpenAI ViT-L-14.pt) for a real detector, "
                "or --random-weights for a plumbing test whose scores mean nothing"
            )
        if assume_openai:
            raise SystemExit("--openai-weights describes a --pretrained checkpoint; random weights are not OpenAI's")
        torch.manual_seed(seed)
        with _random_init_notice_filtered():
            model = open_clip.create_model(arch, pretrained=None)
        return model, Weights(source="random", seed=seed)
    if random_weights:
        raise SystemExit("--random-weights and --pretrained contradict each other: give one")

    path = Path(pretrained)
    if path.is_file():
        facts, state = inspect_checkpoint(path)
        if facts.openai_evidence is None and assume_openai is None and openai_released(arch):
            raise SystemExit(
                f"cannot tell whether {path} holds OpenAI's {arch} weights (trained with QuickGELU) or weights trained with GELU "
                "(e.g. LAION's): it is neither OpenAI's release file nor in its layout. Say which: --openai-weights (runs QuickGELU) "
                "or --not-openai-weights (runs the config's GELU)"
            )
        evidence = facts.openai_evidence or ("declared with --openai-weights" if assume_openai else None)
        weights = Weights(source="checkpoint", file=path.name, sha256=facts.sha256, openai=evidence is not None, evidence=evidence)
        if facts.openai_evidence is not None:
            return _build_openai_layout(arch, state, path), weights
        if facts.torchscript:
            raise SystemExit(f"{path} is a TorchScript archive without OpenAI's CLIP layout; export its state dict with torch.save instead")
        if state and all(k.startswith("visual.") for k in state):  # the image tower alone (all the worker serves)
            model = plain_clip(arch, quick_gelu=bool(assume_openai), source=str(path))
            load_strict(image_tower(model), {k[len("visual.") :]: v for k, v in state.items()}, str(path), arch)
            return model, weights
        del state
        try:
            model = open_clip.create_model(arch, pretrained=str(path), force_quick_gelu=bool(assume_openai))
        except RuntimeError as exc:
            raise SystemExit(f"cannot load {path} into --arch {arch}: {exc}") from None
        return model, weights

    weights, tag_quick = plan_tag(arch, pretrained)
    model = open_clip.create_model(arch, pretrained=pretrained, force_quick_gelu=tag_quick)
    return model, weights


def plan_tag(arch: str, tag: str) -> tuple[Weights, bool]:
    """What an open_clip tag means before anything is downloaded: its provenance and whether it needs QuickGELU."""
    register_project_configs()
    if tag not in open_clip.list_pretrained_tags_by_model(arch):
        raise SystemExit(f"--pretrained {tag!r} is neither a checkpoint file nor an open_clip tag for {arch}")
    tag_quick = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
    if _config_quick_gelu(arch) and not tag_quick:
        raise SystemExit(f"open_clip tag {tag!r} was trained with GELU but --arch {arch} is a QuickGELU config; use the plain config")
    weights = Weights(
        source="tag",
        tag=tag,
        openai=tag == "openai",
        evidence=f"open_clip tag {tag!r} (quick_gelu in its pretrained config)" if tag_quick else None,
    )
    return weights, tag_quick


def load_encoder(
    arch: str = DEFAULT_ARCH,
    pretrained: str | None = None,
    seed: int = 0,
    *,
    random_weights: bool = False,
    assume_openai: bool | None = None,
    preprocess_mode: PreprocessMode = "clip",
    allow_draft: bool = False,
) -> tuple[ImageEncoder, Preprocess, int]:
    """Build an image encoder; returns it (eval mode), its preprocessing and embedding dim.

    ``pretrained``: an open_clip tag or a checkpoint file. ``None`` needs
    ``random_weights=True`` (deterministic from ``seed``: tests, the demo, speed
    benchmarks). ``preprocess_mode`` picks the named preprocessing the bundle
    will declare (``clip`` or ``ufd``); its size, mean and std come from the model.
    ``allow_draft`` (clip mode only): JPEG draft decoding in embedding and serving,
    a speed-for-fidelity trade the bundle records (off: the paper's pixels).
    """
    register_project_configs()
    if arch not in open_clip.list_models():
        raise SystemExit(f"unknown open_clip architecture {arch!r}; try one of: {TINY}, ViT-B-16, ViT-L-14")
    model, weights = _build(arch, pretrained, seed, random_weights, assume_openai)
    model.eval()
    encoder = ImageEncoder(model, weights).eval()
    if weights.openai and encoder.activation != "quick_gelu":
        raise SystemExit(f"internal error: OpenAI weights ({weights.evidence}) built without QuickGELU; refusing to embed with the wrong activation")
    pp = getattr(encoder.visual, "preprocess_cfg", {}) or {}
    size = pp.get("size", getattr(encoder.visual, "image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
    interpolation = pp.get("interpolation", "bicubic") or "bicubic"
    resize_mode = pp.get("resize_mode", "shortest") or "shortest"
    if resize_mode != "shortest":
        raise SystemExit(f"{arch} uses resize_mode={resize_mode!r}; the worker implements 'shortest' only")
    if allow_draft and preprocess_mode != "clip":
        raise SystemExit(f"--allow-draft applies to the clip mode only; {preprocess_mode} reads native-resolution pixels")
    preprocess = Preprocess(mode=preprocess_mode, image_size=int(size), interpolation=interpolation, mean=mean, std=std, allow_draft=allow_draft)
    with torch.no_grad():
        dim = int(encoder(torch.zeros(1, 3, preprocess.image_size, preprocess.image_size)).shape[-1])
    return encoder, preprocess, dim
