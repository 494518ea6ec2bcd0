"""Reading certificates and keys from PEM bytes, with errors that say which one and why.

Its own module so that checking a pair (`certs.check`) and making one (`certs.generate`) can
both read PEM without importing each other: `generate` uses `check`'s key-strength rule, never
the other way round.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mcp_tunnel.errors import CertificateError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def parse_certs(data: bytes, what: str = "certificate") -> list[x509.Certificate]:
    """Every certificate in a PEM (or one DER) blob; CertificateError if there is none."""
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CertificateError(f"the {what} is not a valid PEM certificate: {_first_line(exc)}") from None
    return certs


def parse_key(data: bytes, what: str = "private key") -> PrivateKey:
    """An RSA or ECDSA private key from PEM; encrypted keys and other types are refused."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(f"the {what} is encrypted; the proxy needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"the {what} is not a valid PEM private key: {_first_line(exc)}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateError(f"the {what} is {type(key).__name__}; Anthropic accepts RSA or ECDSA keys")
    return key


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
