"""Sign images with C2PA manifests, using a throwaway test CA (tests and the demo; never production).

A C2PA signer needs an X.509 chain the c2pa SDK accepts: an ES256 (P-256)
leaf with digitalSignature key usage, an extended key usage on the SDK's
allowed list (emailProtection here), and SubjectKeyIdentifier /
AuthorityKeyIdentifier extensions linking it to its CA. :func:`make_ca` and
:func:`make_signer` make such a chain with ``cryptography`` in a few
milliseconds, so every test run signs with fresh keys and nothing secret is
kept in the repository.

    ca = make_ca("aigis test CA")
    signer = make_signer(ca, "aigis test signer")
    signed = sign_image(jpeg_bytes, "image/jpeg", signer, digital_source_type="trainedAlgorithmicMedia")
    TrustList.from_pem(ca.cert_pem)   # what an operator would configure
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


@dataclass(frozen=True)
class Authority:
    """A self-signed CA: its certificate (PEM) is what goes into a trust list."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class SigningIdentity:
    """A leaf certificate, its chain up to (and including) the CA, and the private key, as the SDK wants them."""

    chain_pem: bytes
    key_pem: bytes
    common_name: str
    organisation: str


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation)])


def _usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(common_name: str = "aigis test CA", organisation: str = "aigis test") -> Authority:
    """A P-256 root CA valid from yesterday for ten years."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(common_name, organisation)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(sign=True, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def make_signer(ca: Authority, common_name: str = "aigis test signer", organisation: str = "aigis test") -> SigningIdentity:
    """An ES256 leaf issued by ``ca``, valid from yesterday for a year."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organisation))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign=True, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return SigningIdentity(chain, key_pem, common_name, organisation)


def manifest_definition(
    digital_source_type: str | None = "trainedAlgorithmicMedia",
    *,
    claim_generator: str = "aigis-devkit",
    title: str = "image",
    actions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A manifest with one ``c2pa.created`` action declaring ``digital_source_type`` (an IPTC code or a full URI)."""
    if actions is None:
        action: dict[str, Any] = {"action": "c2pa.created"}
        if digital_source_type is not None:
            action["digitalSourceType"] = digital_source_type if "://" in digital_source_type else IPTC + digital_source_type
        actions = [action]
    return {
        "claim_generator_info": [{"name": claim_generator, "version": "1.0"}],
        "title": title,
        "assertions": [{"label": "c2pa.actions", "data": {"actions": actions}}],
    }


def sign_image(
    data: bytes,
    mime: str,
    signer: SigningIdentity,
    digital_source_type: str | None = "trainedAlgorithmicMedia",
    *,
    manifest: dict[str, Any] | None = None,
    ingredients: list[tuple[bytes, str]] | None = None,
    claim_generator: str = "aigis-devkit",
) -> bytes:
    """``data`` with an embedded, signed C2PA manifest (no thumbnail, so the file stays small).

    ``ingredients``: (bytes, mime) of source assets the manifest lists as ingredients.
    """
    definition = manifest if manifest is not None else manifest_definition(digital_source_type, claim_generator=claim_generator)
    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}, "verify": {"remote_manifest_fetch": False}})
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, signer.chain_pem, signer.key_pem, None)
    with c2pa.Signer.from_info(info) as c2pa_signer, c2pa.Builder(definition, context=context) as builder:
        for k, (ingredient, ingredient_mime) in enumerate(ingredients or []):
            builder.add_ingredient({"title": f"ingredient-{k}", "relationship": "componentOf"}, ingredient_mime, io.BytesIO(ingredient))
        out = io.BytesIO()
        builder.sign(c2pa_signer, mime, io.BytesIO(data), out)
    return out.getvalue()


def tamper(signed: bytes, original: bytes) -> bytes:
    """Change one pixel-data byte of a signed file: the manifest stays intact, its hash of the asset no longer matches.

    The byte is found by locating a run of ``original``'s bytes from late in the
    file (pixel data in every layout the SDK writes: it inserts the manifest,
    never rewrites the image data) inside ``signed``.
    """
    probe_at = int(len(original) * 0.75)
    probe = original[probe_at : probe_at + 16]
    at = signed.find(probe)
    if at < 0:
        raise ValueError("the original's pixel data is not in the signed file")
    out = bytearray(signed)
    out[at + 8] ^= 0x55
    return bytes(out)
