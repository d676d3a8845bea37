"""Generator metadata: one test per rule of generators.json, in the field layout that generator writes; never the prompt."""

from __future__ import annotations

import json

import pytest

from devkit import provenance_images as pi
from schemas.provenance import GeneratorSignal, SignalStatus, Strength
from worker.ingest.provenance import read_provenance
from worker.ingest.provenance.generators import TABLE, a1111_settings

# rule id -> (file bytes, expected generator, expected model)
CASES: dict[str, tuple[bytes, str, str | None]] = {
    "forge": (
        pi.png_with_text({"parameters": pi.a1111_parameters("f2.0.1v1.10.1-previous-313-g8a042934", "flux1-dev-bnb-nf4")}),
        "Stable Diffusion WebUI Forge",
        "flux1-dev-bnb-nf4",
    ),
    "sdnext": (pi.png_with_text({"parameters": pi.a1111_parameters("4f3c9a1", "juggernautXL", extra="App: SD.Next, ")}), "SD.Next", "juggernautXL"),
    "a1111": (pi.png_with_text({"parameters": pi.a1111_parameters()}), "AUTOMATIC1111 Stable Diffusion WebUI", "v1-5-pruned-emaonly"),
    "fooocus": (pi.png_with_text(pi.fooocus_chunks()), "Fooocus", "juggernautXL_v8Rundiffusion.safetensors"),
    "comfyui-prompt": (pi.png_with_text({"prompt": pi.comfyui_prompt()}), "ComfyUI", "sd_xl_base_1.0.safetensors"),
    "comfyui-workflow": (pi.png_with_text({"workflow": pi.comfyui_workflow("dreamshaper_8.safetensors")}), "ComfyUI", "dreamshaper_8.safetensors"),
    "invokeai": (pi.png_with_text({"invokeai_metadata": pi.invokeai_metadata()}), "InvokeAI", "stable-diffusion-v1-5"),
    "invokeai-legacy": (pi.png_with_text({"sd-metadata": pi.invokeai_legacy_metadata()}), "InvokeAI", "stable-diffusion-1.5"),
    "novelai": (pi.png_with_text(pi.novelai_chunks()), "NovelAI", "NovelAI Diffusion V4 4F49EC75"),
    "novelai-comment": (pi.png_with_text(pi.novelai_chunks(software=False)), "NovelAI", "NovelAI Diffusion V4 4F49EC75"),
    "midjourney": (pi.with_exif("JPEG", software="Midjourney v6"), "Midjourney", None),
    "dall-e": (pi.with_exif("PNG", software="DALL-E 3"), "DALL-E", None),
    "firefly": (pi.with_exif("JPEG", software="Adobe Firefly"), "Adobe Firefly", None),
    "stable-diffusion-software": (pi.with_exif("WEBP", software="Stable Diffusion 3.5"), "Stable Diffusion", None),
    "comfyui-software": (pi.png_with_text({"Software": "ComfyUI"}), "ComfyUI", None),
    "invokeai-software": (pi.with_exif("JPEG", software="InvokeAI 5.1"), "InvokeAI", None),
    "draw-things": (pi.with_exif("JPEG", software="Draw Things"), "Draw Things", None),
    "diffusionbee": (pi.with_exif("PNG", software="DiffusionBee"), "DiffusionBee", None),
}


#: text rule id -> a name that generator writes as EXIF Software, also matched in EXIF UserComment
NAMES: dict[str, str] = {
    "novelai": "NovelAI",
    "midjourney": "Midjourney v6",
    "dall-e": "DALL-E 3",
    "firefly": "Adobe Firefly Image 3",
    "stable-diffusion-software": "Stable Diffusion 3.5",
    "comfyui-software": "ComfyUI",
    "invokeai-software": "InvokeAI 5.1",
    "draw-things": "Draw Things",
    "diffusionbee": "DiffusionBee",
}


def generator_of(data: bytes) -> GeneratorSignal:
    sig = read_provenance(data).signals[2]
    assert isinstance(sig, GeneratorSignal)
    return sig


def test_every_rule_of_the_table_has_a_case() -> None:
    assert set(CASES) == {r.id for r in TABLE.rules}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_names_generator_and_model_and_never_the_prompt(rule: str) -> None:
    data, generator, model = CASES[rule]
    sig = generator_of(data)
    assert sig.status is SignalStatus.found and sig.strength is Strength.claimed and sig.ai_declared
    assert (sig.rule, sig.generator, sig.model) == (rule, generator, model)
    dumped = sig.model_dump_json()
    assert pi.PROMPT_MARKER not in dumped and pi.NEGATIVE not in dumped


@pytest.mark.parametrize("kind", ["tEXt", "zTXt", "iTXt"])
def test_every_png_text_chunk_type_is_read(kind: str) -> None:
    sig = generator_of(pi.png_with_text({"parameters": pi.a1111_parameters()}, kind=kind))  # type: ignore[arg-type]
    assert sig.rule == "a1111" and sig.fields == ["png:parameters"]


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
def test_a1111_parameters_in_exif_user_comment(fmt: str) -> None:
    """AUTOMATIC1111 writes JPEG and WebP parameters into EXIF UserComment (UCS-2), where PNG has a text chunk."""
    sig = generator_of(pi.with_exif(fmt, user_comment=pi.a1111_parameters(model="realisticVision")))
    assert (sig.rule, sig.model, sig.fields) == ("a1111", "realisticVision", ["exif:UserComment"])


def test_every_text_rule_reads_exif_user_comment() -> None:
    assert set(NAMES) == {r.id for r in TABLE.rules if r.parser == "text" and "exif:UserComment" in r.fields}
    assert {r.id for r in TABLE.rules if r.parser == "text"} - set(NAMES) == {"fooocus"}  # Fooocus is named by its own chunk


@pytest.mark.parametrize("rule", sorted(NAMES))
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_known_generator_names_in_exif_user_comment(rule: str, fmt: str) -> None:
    """A generator name beginning UserComment names the generator (the rest of the comment, often the prompt, is never read out)."""
    sig = generator_of(pi.with_exif(fmt, user_comment=f"{NAMES[rule]}\n{pi.PROMPT}"))
    assert (sig.status, sig.rule, sig.fields) == (SignalStatus.found, rule, ["exif:UserComment"])
    assert pi.PROMPT_MARKER not in sig.model_dump_json()


def test_novelai_comment_alone_names_novelai_and_both_fields_are_listed() -> None:
    sig = generator_of(pi.png_with_text(pi.novelai_chunks(source=None, software=False)))
    assert (sig.rule, sig.generator, sig.model, sig.fields) == ("novelai-comment", "NovelAI", None, ["png:Comment"])
    sig = generator_of(pi.png_with_text(pi.novelai_chunks()))
    assert sig.rule == "novelai" and sig.fields == ["png:Software", "png:Comment"]
    dumped = sig.model_dump_json()
    assert pi.PROMPT_MARKER not in dumped and pi.NEGATIVE not in dumped


def test_comfyui_webp_exif_layout() -> None:
    """ComfyUI's WebP/animated saves put the graph in EXIF Model ("prompt:{...}") and Make ("workflow:{...}")."""
    data = pi.with_exif("WEBP", model="prompt:" + pi.comfyui_prompt("flux1-schnell.safetensors"), make="workflow:" + pi.comfyui_workflow())
    sig = generator_of(data)
    assert sig.generator == "ComfyUI" and sig.model == "flux1-schnell.safetensors"
    assert sig.fields == ["exif:Model", "exif:Make"]


def test_non_ascii_generator_name_in_a_text_chunk() -> None:
    assert generator_of(pi.png_with_text({"Software": "DALL·E 3"})).rule == "dall-e"


def test_tiff_software_tag() -> None:
    assert generator_of(pi.with_exif("TIFF", software="NovelAI")).generator == "NovelAI"


def test_quoted_values_and_prompt_lines_in_a1111_settings() -> None:
    text = pi.a1111_parameters() + "\n"
    settings = a1111_settings(text)
    assert settings["Model"] == "v1-5-pruned-emaonly" and settings["Lora hashes"] == "detail: 0123abcd, style: 4567ef01"
    assert a1111_settings("Model: fake, Steps: in the prompt line\nand no settings line") == {}
    assert not any(pi.PROMPT_MARKER in v for v in settings.values())


@pytest.mark.parametrize(
    "data",
    [
        pi.png_with_text({"parameters": "just a caption someone wrote"}),
        pi.png_with_text({"prompt": json.dumps({"not": "a graph"})}),
        pi.png_with_text({"workflow": json.dumps({"nodes": "no"})}),
        pi.png_with_text({"Software": "Adobe Photoshop 25.0"}),
        pi.with_exif("JPEG", software="GIMP 2.10", make="Canon", model="EOS R5"),
        pi.encode(pi.photo(), "PNG"),
        pi.png_with_text({"Comment": "Created with GIMP"}),
        pi.png_with_text({"Comment": json.dumps({"steps": 28, "sampler": "euler"})}),
        pi.with_exif("JPEG", user_comment="Holiday in Lisbon, shot on film"),
    ],
    ids=["caption", "json-not-graph", "workflow-not-list", "photoshop", "camera", "bare", "prose-comment", "json-comment", "user-comment"],
)
def test_ordinary_metadata_names_no_generator(data: bytes) -> None:
    sig = generator_of(data)
    assert sig.status is SignalStatus.absent and sig.generator is None and not sig.ai_declared


def test_model_names_are_one_bounded_line() -> None:
    sig = generator_of(pi.png_with_text({"parameters": pi.a1111_parameters(model="m" * 500)}))
    assert sig.model == "m" * 128
    sig = generator_of(pi.png_with_text({"invokeai_metadata": json.dumps({"model": {"name": "two\nlines"}})}))
    assert sig.model == "two lines"


def test_json_that_is_not_json_is_unreadable_not_absent() -> None:
    sig = generator_of(pi.png_with_text({"prompt": "{not json"}))
    assert sig.status is SignalStatus.unreadable and "png:prompt: not JSON" in (sig.detail or "")
