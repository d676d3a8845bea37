"""Images that carry provenance metadata the way real tools write it, made in code (tests and the demo).

Each builder returns file bytes: XMP packets with an IPTC digital source type
in every RDF form and container, and the text chunks / EXIF fields of the
generators in ``worker/ingest/provenance/generators.json``. Prompts in these
files are made-up sentences with a marker word (:data:`PROMPT_MARKER`) so tests
can check that no prompt text reaches a verdict.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from typing import Literal

import numpy as np
from PIL import Image, PngImagePlugin

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
#: A word that appears in every prompt these builders write, and must never appear in a verdict.
PROMPT_MARKER = "zebracorn"
PROMPT = f"a photo of a {PROMPT_MARKER} astronaut riding a horse, highly detailed"
NEGATIVE = "blurry, lowres"

XmpForm = Literal["attribute", "resource", "element", "bag"]


def photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth random colour field (cheap, compresses like a photo rather than like noise)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# -- XMP ---------------------------------------------------------------------------------------------------------


def xmp_packet(value: str | None = "trainedAlgorithmicMedia", form: XmpForm = "attribute", *, prop: str = "DigitalSourceType", extra: str = "") -> bytes:
    """An XMP packet declaring ``value`` (an IPTC code, expanded to the NewsCodes URI, or any URI) in RDF ``form``."""
    uri = value if value is None or "://" in value else IPTC + value
    attr, body = "", ""
    if uri is not None:
        if form == "attribute":
            attr = f' Iptc4xmpExt:{prop}="{uri}"'
        elif form == "resource":
            body = f'<Iptc4xmpExt:{prop} rdf:resource="{uri}"/>'
        elif form == "element":
            body = f"<Iptc4xmpExt:{prop}>{uri}</Iptc4xmpExt:{prop}>"
        else:
            body = f"<Iptc4xmpExt:{prop}><rdf:Bag><rdf:li>{uri}</rdf:li></rdf:Bag></Iptc4xmpExt:{prop}>"
    text = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="{IPTC_EXT_NS}" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        f' xmlns:dcterms="http://purl.org/dc/terms/"{attr}>{body}{extra}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )
    return text.encode("utf-8")


def with_xmp(packet: bytes, fmt: str, img: Image.Image | None = None, *, compressed: bool = False) -> bytes:
    """``img`` (default: a small photo) as ``fmt`` with ``packet`` where that format keeps XMP."""
    img = img if img is not None else photo()
    if fmt == "JPEG":
        return encode(img, "JPEG", xmp=packet, quality=90)
    if fmt == "WEBP":
        return encode(img, "WEBP", xmp=packet, quality=90)
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", packet.decode("utf-8"), zip=compressed)
        return encode(img, "PNG", pnginfo=info)
    if fmt == "TIFF":
        return encode(img, "TIFF", tiffinfo={700: packet})
    raise ValueError(f"no XMP container for {fmt}")


def jpeg_with_extended_xmp(main: bytes, extension: bytes, chunk: int = 1000) -> bytes:
    """A JPEG whose XMP continues in extended-XMP APP1 segments (how large packets are split)."""
    import hashlib

    base = encode(photo(), "JPEG", quality=90)
    guid = hashlib.md5(extension).hexdigest().upper().encode("ascii")  # the XMP spec's GUID is the MD5 of the extension
    segs = [b"\xff\xe1" + struct.pack(">H", 2 + 29 + len(main)) + b"http://ns.adobe.com/xap/1.0/\x00" + main]
    for off in range(0, len(extension), chunk):
        part = extension[off : off + chunk]
        body = b"http://ns.adobe.com/xmp/extension/\x00" + guid + struct.pack(">II", len(extension), off) + part
        segs.append(b"\xff\xe1" + struct.pack(">H", 2 + len(body)) + body)
    return base[:2] + b"".join(segs) + base[2:]


# -- generator text chunks and EXIF ------------------------------------------------------------------------------


def png_with_text(chunks: dict[str, str], img: Image.Image | None = None, *, kind: Literal["tEXt", "zTXt", "iTXt"] = "tEXt") -> bytes:
    """A PNG with one text chunk per key, of the given chunk type."""
    info = PngImagePlugin.PngInfo()
    for key, text in chunks.items():
        if kind == "tEXt":
            info.add_text(key, text)
        elif kind == "zTXt":
            info.add_text(key, text, zip=True)
        else:
            info.add_itxt(key, text, zip=True)
    return encode(img if img is not None else photo(), "PNG", pnginfo=info)


def a1111_parameters(version: str = "v1.10.1", model: str = "v1-5-pruned-emaonly", extra: str = "") -> str:
    """An AUTOMATIC1111-style ``parameters`` text (Forge: version ``f2.0.1v1.10.1-...``; SD.Next: ``extra='App: SD.Next, '``)."""
    settings = (
        f"Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, Model: {model}, "
        f'Lora hashes: "detail: 0123abcd, style: 4567ef01", {extra}Version: {version}'
    )
    return f"{PROMPT}\nNegative prompt: {NEGATIVE}\n{settings}"


def comfyui_prompt(ckpt: str = "sd_xl_base_1.0.safetensors") -> str:
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0], "positive": ["6", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
    }
    return json.dumps(graph)


def comfyui_workflow(ckpt: str = "sd_xl_base_1.0.safetensors") -> str:
    wf = {
        "last_node_id": 6,
        "nodes": [
            {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": [ckpt]},
            {"id": 6, "type": "CLIPTextEncode", "widgets_values": [PROMPT]},
        ],
        "links": [],
        "version": 0.4,
    }
    return json.dumps(wf)


def invokeai_metadata(model: str = "stable-diffusion-v1-5") -> str:
    doc = {"generation_mode": "txt2img", "positive_prompt": PROMPT, "model": {"name": model, "base": "sd-1", "type": "main"}, "app_version": "4.2.0"}
    return json.dumps(doc)


def invokeai_legacy_metadata(model: str = "stable-diffusion-1.5") -> str:
    return json.dumps({"model": "stable diffusion", "model_weights": model, "app_id": "invoke-ai/InvokeAI", "image": {"prompt": PROMPT, "steps": 30}})


def novelai_comment() -> str:
    """The JSON NovelAI writes into its PNG ``Comment`` chunk: the prompt, ``uc`` (its negative prompt) and the settings."""
    return json.dumps(
        {
            "prompt": PROMPT,
            "steps": 28,
            "height": 1216,
            "width": 832,
            "scale": 5.0,
            "seed": 1234567890,
            "n_samples": 1,
            "noise_schedule": "karras",
            "sampler": "k_euler_ancestral",
            "uc": NEGATIVE,
            "request_type": "PromptGenerateRequest",
            "signed_hash": "0" * 86 + "==",
        }
    )


def novelai_chunks(source: str | None = "NovelAI Diffusion V4 4F49EC75", software: bool = True) -> dict[str, str]:
    """NovelAI's PNG text chunks; ``software=False`` (and ``source=None``) leave the ones tools are likeliest to drop."""
    chunks = {"Title": "AI generated image", "Description": PROMPT, "Software": "NovelAI", "Source": source or "", "Comment": novelai_comment()}
    if not software:
        del chunks["Software"]
    if source is None:
        del chunks["Source"]
    return chunks


def fooocus_chunks(model: str = "juggernautXL_v8Rundiffusion.safetensors") -> dict[str, str]:
    return {"parameters": json.dumps({"prompt": PROMPT, "base_model": model, "steps": 30}), "fooocus_scheme": "fooocus"}


def exif_bytes(
    *, software: str | None = None, make: str | None = None, model: str | None = None, user_comment: str | None = None, orientation: int | None = None
) -> bytes:
    """An EXIF block (as Pillow writes it) with the given IFD0 tags and an EXIF-IFD UserComment in UCS-2 (as piexif writes it)."""
    exif = Image.Exif()
    if software is not None:
        exif[0x0131] = software
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if orientation is not None:
        exif[0x0112] = orientation
    if user_comment is not None:
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + user_comment.encode("utf-16-be")
    return exif.tobytes()


def with_exif(fmt: str, img: Image.Image | None = None, **tags: object) -> bytes:
    """``img`` as JPEG, WebP, PNG (eXIf) or TIFF with :func:`exif_bytes` of ``tags``."""
    img = img if img is not None else photo()
    block = exif_bytes(**tags)  # type: ignore[arg-type]
    kw: dict[str, object] = {"exif": block}
    if fmt in ("JPEG", "WEBP"):
        kw["quality"] = 90
    return encode(img, fmt, **kw)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def insert_png_chunks(png: bytes, chunks: list[bytes]) -> bytes:
    """Insert raw chunks right after IHDR."""
    ihdr_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:ihdr_end] + b"".join(chunks) + png[ihdr_end:]
