"""The generation API the setup component imports: the profile, key reuse, PEM round trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from certs_support import DOMAIN, make_ca, pem_of
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from mcp_tunnel.certs.check import Status, check_pair
from mcp_tunnel.certs.generate import (
    generate_ca,
    issue_server_cert,
    load_cert,
    load_key,
    new_key,
    normalize_domain,
    pem_cert,
    pem_key,
)
from mcp_tunnel.errors import CertificateError


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return generate_ca()


def test_ca_profile(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    cert, key = ca
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca and bc.critical
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    life = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=5 * 365 - 1) < life <= timedelta(days=5 * 365)
    assert cert.subject.rfc4514_string() == "CN=mcp-tunnel-ca"


def test_server_profile_default_rsa4096_90_days(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    ca_cert, ca_key = ca
    cert, key = issue_server_cert(ca_cert, ca_key, DOMAIN.upper() + ".")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 4096
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"*.{DOMAIN}", DOMAIN]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)
    life = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(hours=2159) < life <= timedelta(hours=2160)
    findings = check_pair(pem_cert(ca_cert), pem_cert(cert), key_pem=pem_key(key), domain=DOMAIN)
    assert all(f.status is Status.PASS for f in findings), [f.line() for f in findings]


def test_server_ecdsa_and_duration(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    cert, key = issue_server_cert(*ca, DOMAIN, key_type="ecdsa-p256", duration=timedelta(hours=1))
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc - datetime.now(UTC) <= timedelta(hours=1)


def test_reuse_key_keeps_the_public_key(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    first, key = issue_server_cert(*ca, DOMAIN, key_type="ecdsa-p256")
    second, key2 = issue_server_cert(*ca, DOMAIN, key=key)
    assert key2 is key
    assert second.public_key() == first.public_key()
    assert second.serial_number != first.serial_number


def test_reusing_a_weak_key_is_refused(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    with pytest.raises(CertificateError, match="RSA 1024"):
        issue_server_cert(*ca, DOMAIN, key=rsa.generate_private_key(65537, 1024))


def test_wrong_ca_key_is_refused(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    with pytest.raises(CertificateError, match="does not match the CA certificate"):
        issue_server_cert(ca[0], ec.generate_private_key(ec.SECP256R1()), DOMAIN)


def test_ca_without_ski_is_refused() -> None:
    bad = make_ca(ski=False)
    assert isinstance(bad.key, ec.EllipticCurvePrivateKey)
    with pytest.raises(CertificateError, match="subjectKeyIdentifier"):
        issue_server_cert(bad.cert, bad.key, DOMAIN)


@pytest.mark.parametrize(
    "bad", ["", "*.x.example", "10.0.0.1", "a..b", "-a.example", "a_b.example", "x" * 64 + ".io"]
)
def test_bad_domains_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_domain(bad)


def test_unknown_key_type() -> None:
    with pytest.raises(ValueError, match="rsa4096"):
        new_key("dsa")


def test_pem_round_trip_and_pkcs8(
    tmp_path: Path, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> None:
    cert, key = ca
    (tmp_path / "ca.crt").write_bytes(pem_cert(cert))
    (tmp_path / "ca.key").write_bytes(pem_key(key))
    assert pem_key(key).startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert load_cert(tmp_path / "ca.crt") == cert
    assert load_key(tmp_path / "ca.key").public_key() == key.public_key()


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match=r"junk\.crt") as e1:
        load_cert(tmp_path / "junk.crt")
    with pytest.raises(CertificateError, match="no such file") as e2:
        load_key(tmp_path / "missing.key")
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.key").write_bytes(pem_of(ed))  # type: ignore[arg-type]
    with pytest.raises(CertificateError, match="RSA or ECDSA") as e3:
        load_key(tmp_path / "ed.key")
    for e in (e1, e2, e3):
        assert "\n" not in str(e.value)
