"""The CA and server certificate as `init` and `renew-cert` see them: load, fingerprint,
judge. Generation and the requirement checks themselves live in `mcp_tunnel.certs`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mcp_tunnel.certs.check import Status, check_pair
from mcp_tunnel.certs.generate import PrivateKey, issue_server_cert, parse_certs, parse_key, pem_cert, pem_key
from mcp_tunnel.errors import CertificateError
from mcp_tunnel.setup.errors import SetupError
from mcp_tunnel.setup.state import CA_CRT, CA_KEY, TLS_CRT, TLS_KEY, Stored


def fingerprint(cert: x509.Certificate) -> str:
    """As the Tunnels API reports it: lowercase hex SHA-256 of the DER."""
    return cert.fingerprint(hashes.SHA256()).hex()


def load_ca(stored: Stored) -> tuple[x509.Certificate, PrivateKey]:
    """The stored CA pair, refused with the reason when it could never be registered or used."""
    try:
        certs = parse_certs(stored.files[CA_CRT], "CA certificate (ca.crt)")
        key = parse_key(stored.files[CA_KEY], "CA key (ca.key)")
    except CertificateError as exc:
        raise SetupError(f"the output's CA: {exc}") from exc
    if len(certs) != 1:
        raise SetupError(f"the output's ca.crt holds {len(certs)} certificates; exactly one is registered")
    cert = certs[0]
    if cert.public_key() != key.public_key():
        raise SetupError("the output's ca.key does not belong to its ca.crt")
    problems = [
        f.line()
        for f in check_pair(stored.files[CA_CRT], b"")
        if f.id.startswith("ca.") and f.status is Status.FAIL
    ]
    if problems:
        raise SetupError("the output's CA cannot be registered: " + "; ".join(problems))
    return cert, key


def server_cert_problem(stored: Stored, domain: str, now: datetime | None = None) -> str | None:
    """Why the stored tls.crt/tls.key cannot be kept for this CA and domain; None if it can."""
    crt, key = stored.files.get(TLS_CRT), stored.files.get(TLS_KEY)
    if not crt or not key:
        return "no server certificate in the output"
    findings = check_pair(stored.files[CA_CRT], crt, key_pem=key, domain=domain, now=now or datetime.now(UTC))
    failed = [f.line() for f in findings if f.id.startswith(("server.", "key.")) and f.status is Status.FAIL]
    return "the stored server certificate: " + "; ".join(failed) if failed else None


def server_not_after(stored: Stored) -> datetime | None:
    crt = stored.files.get(TLS_CRT)
    if not crt:
        return None
    try:
        return parse_certs(crt)[0].not_valid_after_utc
    except CertificateError:
        return None


def new_server_pair(
    ca_cert: x509.Certificate, ca_key: PrivateKey, domain: str, duration: float, key_type: str
) -> dict[str, bytes]:
    """A fresh key every time (renewal re-keys: a leaked old key dies with its certificate)."""
    try:
        cert, key = issue_server_cert(
            ca_cert, ca_key, domain, duration=timedelta(seconds=duration), key_type=key_type
        )
    except (CertificateError, ValueError) as exc:
        raise SetupError(f"cannot issue the server certificate: {exc}") from exc
    return {TLS_CRT: pem_cert(cert), TLS_KEY: pem_key(key)}
