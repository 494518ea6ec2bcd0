"""Make the inner-TLS CA and server certificate with the profile Anthropic accepts (SPEC §7).

Pure except for key generation's randomness and the clock: nothing here touches the filesystem
apart from `load_cert`/`load_key`, so the setup component can call it and write the results
where it likes (a directory or a Kubernetes Secret).

Profile (digest §4.1-4.3, matching the official setup component):
- CA: ECDSA P-256, 5 years, basicConstraints CA:TRUE critical, keyUsage keyCertSign+cRLSign
  critical, subjectKeyIdentifier.
- Server: RSA 4096 (or ECDSA P-256), 90 days, signed directly by the CA, AKI = the CA's SKI,
  SAN ``*.D`` and ``D``, EKU serverAuth, SHA-256.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mcp_tunnel.certs.check import key_strength_problem
from mcp_tunnel.certs.files import StrPath, read_bytes
from mcp_tunnel.certs.pem import PrivateKey as PrivateKey
from mcp_tunnel.certs.pem import parse_certs as parse_certs
from mcp_tunnel.certs.pem import parse_key as parse_key
from mcp_tunnel.errors import CertificateError

KEY_TYPES = ("rsa4096", "ecdsa-p256")
DEFAULT_SERVER_DURATION = timedelta(hours=2160)
DEFAULT_CA_DAYS = 5 * 365
# Backdate notBefore a little so a peer whose clock is slightly behind ours accepts a fresh
# certificate (the handshake right after `certs init` must not fail on skew).
BACKDATE = timedelta(minutes=5)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_domain(domain: str) -> str:
    """Lowercase a tunnel domain and refuse what cannot be one (wildcards, IPs, bad labels).

    Raises ValueError: the CLI turns it into a usage error, a library caller has a bug.
    """
    d = domain.strip().lower().rstrip(".")
    if d.startswith("*."):
        raise ValueError(f"domain {domain!r}: give the tunnel domain itself, the wildcard is added for you")
    try:
        ipaddress.ip_address(d)
    except ValueError:
        pass
    else:
        raise ValueError(
            f"domain {domain!r} is an IP address, expected a DNS name such as abcd1234.tunnel.anthropic.com"
        )
    labels = d.split(".")
    if not d or len(d) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"domain {domain!r} is not a valid DNS name")
    return d


def new_key(key_type: str) -> PrivateKey:
    """A fresh private key of one of `KEY_TYPES`."""
    if key_type == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key type {key_type!r}: expected one of {', '.join(KEY_TYPES)}")


def generate_ca(
    *, common_name: str = "mcp-tunnel-ca", valid_days: int = DEFAULT_CA_DAYS
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed ECDSA P-256 CA meeting digest §4.1 (to be registered with Anthropic)."""
    if valid_days <= 0:
        raise ValueError("valid_days must be positive")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    domain: str,
    *,
    duration: timedelta = DEFAULT_SERVER_DURATION,
    key_type: str = "rsa4096",
    key: PrivateKey | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A server certificate for ``*.domain`` and ``domain`` signed directly by the CA.

    `key` given: reuse it (the official manual renewal re-signs the same key); `key_type` is then
    ignored. Raises CertificateError when the inputs could only produce a certificate Anthropic
    rejects (CA key not the CA's, CA without SKI, a weak reused key).
    """
    domain = normalize_domain(domain)
    if duration <= timedelta(0):
        raise ValueError("duration must be positive")
    if not _same_public_key(ca_cert, ca_key):
        raise CertificateError("the CA key does not match the CA certificate (wrong ca.key?)")
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise CertificateError(
            "the CA certificate has no subjectKeyIdentifier, so no server certificate it signs can "
            "carry the authorityKeyIdentifier Anthropic requires; make a new CA"
        ) from None
    if key is None:
        key = new_key(key_type)
    else:
        problem = key_strength_problem(key.public_key())
        if problem:
            raise CertificateError(f"cannot reuse the server key: {problem}")
    now = datetime.now(UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + duration)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"*.{domain}"), x509.DNSName(domain)]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key: PrivateKey) -> bytes:
    """PKCS#8, unencrypted: the proxy (and Go's tls.LoadX509KeyPair) read it without a passphrase."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_cert(path: StrPath) -> x509.Certificate:
    """The first certificate in a PEM file (a chain file puts the leaf first)."""
    return parse_certs(read_bytes(path, "certificate"), f"certificate in {Path(path)}")[0]


def load_key(path: StrPath) -> PrivateKey:
    return parse_key(read_bytes(path, "private key"), f"private key in {Path(path)}")
