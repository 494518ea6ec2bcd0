"""A throwaway CA and server certificate, made with the product's own generator."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

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


def make_pki(directory: Path, domain: str = DOMAIN) -> PKI:
    ca_cert, ca_key = generate_ca()
    cert, key = issue_server_cert(ca_cert, ca_key, domain, duration=timedelta(days=2), key_type="ecdsa-p256")
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / "ca.crt", pem_cert(ca_cert), 0o644)
    write_atomic(directory / "ca.key", pem_key(ca_key), 0o600)
    write_atomic(directory / "tls.crt", pem_cert(cert), 0o644)
    write_atomic(directory / "tls.key", pem_key(key), 0o600)
    return PKI(domain, directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
