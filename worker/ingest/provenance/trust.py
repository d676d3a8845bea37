"""The operator's list of C2PA trust anchors (``--provenance-trust-anchors``, a PEM file).

Without a list the stage reports signers but trusts none (``trusted`` is null
in the verdict): a C2PA signature by itself proves only that *someone* with a
certificate signed the claim, and anyone can make a certificate. With a list, a
manifest is trusted when its signing certificate chains to one of the anchors
(the c2pa SDK checks the chain, validity and extended key usage).

The file is read once at start-up and every certificate in it is parsed, so a
truncated or wrong file stops the worker with a message instead of silently
trusting nothing. :attr:`TrustList.fingerprint` is part of the cache key
material (see :func:`worker.model.policy.policy_fingerprint`): changing the
anchors invalidates cached provenance.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_MAX_FILE_BYTES = 4 * 1024 * 1024


class TrustListError(ValueError):
    """The trust list file cannot be used; the message says why."""


@dataclass(frozen=True)
class TrustList:
    """Parsed trust anchors: their PEM text for the c2pa SDK and a fingerprint of the set."""

    pem: str
    subjects: tuple[str, ...]
    fingerprint: str

    @classmethod
    def from_pem(cls, data: bytes | str, source: str = "trust list") -> TrustList:
        raw = data.encode("ascii", errors="replace") if isinstance(data, str) else data
        if _BEGIN not in raw:
            raise TrustListError(f"{source}: no PEM certificate (-----BEGIN CERTIFICATE-----) found")
        try:
            certs = x509.load_pem_x509_certificates(raw)
        except ValueError as exc:
            raise TrustListError(f"{source}: cannot parse the PEM certificates: {exc}") from None
        ders = sorted({c.public_bytes(Encoding.DER) for c in certs})
        canonical = [x509.load_der_x509_certificate(d) for d in ders]
        pem = "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in canonical)
        fingerprint = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in ders)).hexdigest()
        return cls(pem=pem, subjects=tuple(c.subject.rfc4514_string() for c in canonical), fingerprint=fingerprint)

    @classmethod
    def from_file(cls, path: Path) -> TrustList:
        try:
            size = path.stat().st_size
            if size > _MAX_FILE_BYTES:
                raise TrustListError(f"{path}: {size} bytes is not a trust list (limit {_MAX_FILE_BYTES})")
            data = path.read_bytes()
        except OSError as exc:
            raise TrustListError(f"{path}: cannot read the trust list: {exc.strerror or exc}") from None
        return cls.from_pem(data, str(path))

    def __len__(self) -> int:
        return len(self.subjects)
