"""A throwaway CA and server certificate, made with the product's own generator."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mcp_tunnel.certs.files import write_atomic
from mcp_tunnel.certs.generate import generate_ca, issue_server_cert, pem_cert, pem_key

DOMAIN = "tunnel.test"


@dataclass(frozen=True)
class PKI:
    domain: str
    ca_file: Path
    cert_file: Path
    key_file: Path

    def host(self, sub: str) -> str:
        return f"{sub}.{self.domain}"


def make_pki(directory: Path, domain: str = DOMAIN, *, key_mode: int = 0o600, expired: bool = False) -> PKI:
    """ca.crt/ca.key/tls.crt/tls.key in `directory`; `expired` re-signs the server certificate
    with a validity that ended yesterday."""
    ca_cert, ca_key = generate_ca()
    cert, key = issue_server_cert(ca_cert, ca_key, domain, duration=timedelta(days=30), key_type="ecdsa-p256")
    if expired:
        cert = _backdate(cert, ca_key)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / "ca.crt", pem_cert(ca_cert), 0o644)
    write_atomic(directory / "ca.key", pem_key(ca_key), 0o600)
    write_atomic(directory / "tls.crt", pem_cert(cert), 0o644)
    write_atomic(directory / "tls.key", pem_key(key), key_mode)
    return PKI(domain, directory / "ca.crt", directory / "tls.crt", directory / "tls.key")


def _backdate(cert: x509.Certificate, ca_key: Any) -> x509.Certificate:
    """The same certificate, re-signed with a validity that ended yesterday."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=91))
        .not_valid_after(now - timedelta(days=1))
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(ca_key, hashes.SHA256())
