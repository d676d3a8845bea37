"""The demo's provenance uploads: one image per kind of evidence, and each again with its metadata stripped.

``make demo`` (:mod:`export.demo`) asks this module for two things: the worker
settings that trust the demo's own C2PA certificate authority
(:func:`worker_env`), and each round's provenance uploads
(:func:`uploads`), which it streams with the rest and prints with a
``decided_by`` / provenance column (:func:`cell`). The kinds:

* a C2PA manifest declaring ``trainedAlgorithmicMedia``, signed by a signer the
  worker trusts (``--provenance-trust-anchors`` holds the demo CA): provenance
  decides, ``ai_generated`` whatever the model says;
* the same manifest signed by a stranger's CA: ``signed``, reported, annotates only;
* an AUTOMATIC1111 PNG (``parameters`` chunk) and a ComfyUI PNG (``prompt`` /
  ``workflow``): the generator is named, the label stays the model's;
* a JPEG whose XMP says ``trainedAlgorithmicMedia``: ``claimed``, annotates only;
* a PNG carrying Stable Diffusion's invisible DWT-DCT watermark (SDXL
  payload): provenance decides;
* each of them re-encoded as an upload pipeline would (JPEG q90, 4:2:0, no
  metadata): C2PA, IPTC and generator metadata are ``absent`` and the
  watermark is ``not_checked`` (4:2:0 chroma has erased it, so the decoder
  does not look): nothing is found, so only the model speaks.

The certificates are made once per work directory (``<workdir>/provenance``)
and reused, so the worker, started before the first round, trusts the CA that
signs every round's images.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from devkit import provenance_images as pi
from devkit.c2pa_signing import Authority, SigningIdentity, make_ca, make_signer, sign_image
from devkit.watermark import embed
from export.photos import load_rgb, photo_paths

if TYPE_CHECKING:
    from export.demo import DemoUpload


def _dir(workdir: Path) -> Path:
    return workdir / "provenance"


def _identities(workdir: Path) -> tuple[SigningIdentity, SigningIdentity]:
    """(trusted signer, stranger's signer), made on first use and kept in the work directory."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    d = _dir(workdir)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for name in ("trusted", "stranger"):
        chain, key, ca_pem = d / f"{name}-chain.pem", d / f"{name}-key.pem", d / f"{name}-ca.pem"
        if not (chain.is_file() and key.is_file() and ca_pem.is_file()):
            ca: Authority = make_ca(f"aigis demo {name} CA", f"aigis demo {name}")
            signer = make_signer(ca, f"aigis demo {name} signer", f"aigis demo {name}")
            chain.write_bytes(signer.chain_pem)
            key.write_bytes(signer.key_pem)
            ca_pem.write_bytes(ca.cert_pem)
        cert = x509.load_pem_x509_certificate(chain.read_bytes())
        serialization.load_pem_private_key(key.read_bytes(), None)  # fails loudly on a damaged file
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        org = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value
        out.append(SigningIdentity(chain.read_bytes(), key.read_bytes(), str(cn), str(org)))
    return out[0], out[1]


def worker_env(workdir: Path) -> dict[str, str]:
    """Settings for the demo's worker: decide under a trust list holding only the demo's trusted CA."""
    _identities(workdir)
    return {"AIGIS_PROVENANCE_POLICY": "decide", "AIGIS_PROVENANCE_TRUST_ANCHORS": str(_dir(workdir) / "trusted-ca.pem")}


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def stripped(data: bytes) -> bytes:
    """What an upload pipeline makes of an image: decoded and re-encoded as JPEG q90 (4:2:0), no metadata kept."""
    with Image.open(io.BytesIO(data)) as img:
        return _encode(img.convert("RGB"), "JPEG", quality=90)


def evidence_images(workdir: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (what it is, file bytes): one image per kind of provenance evidence."""
    trusted, stranger = _identities(workdir)
    photos = [load_rgb(p).convert("RGB") for p in photo_paths(include_grey=False)[:6]]
    small = [p.resize((384, 256), Image.Resampling.LANCZOS) for p in photos]  # a different photo per kind: no two share bytes
    jpegs = [_encode(p, "JPEG", quality=92) for p in small[:2]]
    return {
        "c2pa-trusted": ("c2pa trusted", sign_image(jpegs[0], "image/jpeg", trusted, "trainedAlgorithmicMedia", claim_generator="demo-generator")),
        "c2pa-untrusted": ("c2pa untrusted", sign_image(jpegs[1], "image/jpeg", stranger, "trainedAlgorithmicMedia", claim_generator="demo-generator")),
        "a1111-png": ("a1111 png", pi.png_with_text({"parameters": pi.a1111_parameters()}, small[2])),
        "comfyui-png": ("comfyui png", pi.png_with_text({"prompt": pi.comfyui_prompt(), "workflow": pi.comfyui_workflow()}, small[3])),
        "xmp-jpeg": ("xmp tagged", pi.with_xmp(pi.xmp_packet("trainedAlgorithmicMedia"), "JPEG", small[4])),
        "watermark-png": ("sd watermark", _encode(Image.fromarray(embed(np.asarray(photos[5]), "sdxl")), "PNG")),
    }


def uploads(round_tag: str, workdir: Path) -> list[DemoUpload]:
    """This round's provenance uploads: each evidence image, then the same image stripped of its metadata."""
    from export.demo import DemoUpload

    out = []
    for name, (kind, data) in evidence_images(workdir).items():
        for suffix, what, payload in (("", kind, data), ("-stripped", "stripped", stripped(data))):
            uid = f"{round_tag}-prov-{name}{suffix}"
            out.append(DemoUpload(uid, what, payload, [], uid.encode()))
    return out


def cell(verdict: dict[str, Any]) -> str:
    """The demo table's column: who decided, and every provenance signal found (``kind:strength``, ``*`` = decisive)."""
    prov = verdict.get("provenance") or {}
    decisive = set(prov.get("decisive", []))
    short = {"c2pa": "c2pa", "iptc_digital_source_type": "iptc", "generator_metadata": "generator", "watermark": "watermark"}
    found = []
    for s in prov.get("signals", []):
        name = short.get(s["kind"], s["kind"])
        if s["status"] == "found":
            extra = s.get("generator") or s.get("payload") or ""
            found.append(f"{name}:{s['strength']}{'*' if s['kind'] in decisive else ''}{f'({extra})' if extra else ''}")
        elif s["status"] == "unreadable":
            found.append(f"{name}:unreadable")
    return f"{verdict.get('decided_by', 'model'):<10} {', '.join(found) or '-'}"
