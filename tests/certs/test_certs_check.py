"""The requirement policy: a good pair passes everything; each certificate built to break one
requirement fails exactly that requirement and nothing else."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from certs_support import DOMAIN, NOW, Pair, _key_usage, ec_key, make_ca, make_server, openssl_recipe, pem_of
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from mcp_tunnel.certs.check import Finding, Status, all_passed, check_pair

ALL_IDS = [
    "ca.pem_size",
    "ca.pem_one_certificate",
    "ca.pem_no_private_key",
    "ca.basic_constraints",
    "ca.subject_key_identifier",
    "ca.key_usage",
    "ca.key",
    "ca.signature_hash",
    "ca.validity",
    "server.key",
    "server.signature_hash",
    "server.validity",
    "server.signed_by_ca",
    "server.authority_key_identifier",
    "server.san",
    "server.extended_key_usage",
    "key.matches",
]


def run(
    ca_pem: bytes, server: Pair, *, key_pem: bytes | None = None, domain: str | None = DOMAIN
) -> list[Finding]:
    return check_pair(ca_pem, server.cert_pem, key_pem=key_pem or server.key_pem, domain=domain, now=NOW)


def failed(findings: list[Finding]) -> list[str]:
    return [f.id for f in findings if f.status is Status.FAIL]


def test_good_pair_passes_every_requirement(good_ca: Pair, good_server: Pair) -> None:
    findings = run(good_ca.cert_pem, good_server)
    assert [f.id for f in findings] == ALL_IDS
    assert all(f.status is Status.PASS for f in findings), [f.line() for f in findings]
    assert all_passed(findings)


# Each case: (ca, server, ca_pem override or None, key override or None) -> the one failing id.
Case = Callable[[Pair], tuple[bytes, Pair, bytes | None]]


def _ca_case(**ca_kwargs: object) -> Case:
    def build(_: Pair) -> tuple[bytes, Pair, bytes | None]:
        ca = make_ca(**ca_kwargs)  # type: ignore[arg-type]
        return ca.cert_pem, make_server(ca), None

    return build


def _server_case(**server_kwargs: object) -> Case:
    def build(ca: Pair) -> tuple[bytes, Pair, bytes | None]:
        return ca.cert_pem, make_server(ca, **server_kwargs), None  # type: ignore[arg-type]

    return build


def _big_ca(_: Pair) -> tuple[bytes, Pair, bytes | None]:
    filler = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x04\x00" + b"x" * 6500
    )
    ca = make_ca(extra=[filler])
    return ca.cert_pem, make_server(ca), None


def _two_certs(ca: Pair) -> tuple[bytes, Pair, bytes | None]:
    return ca.cert_pem + make_ca(cn="other").cert_pem, make_server(ca), None


def _ca_with_key(ca: Pair) -> tuple[bytes, Pair, bytes | None]:
    return ca.cert_pem + pem_of(ca.key), make_server(ca), None


def _wrong_key(ca: Pair) -> tuple[bytes, Pair, bytes | None]:
    return ca.cert_pem, make_server(ca), pem_of(ec_key())


def _forged_signature(ca: Pair) -> tuple[bytes, Pair, bytes | None]:
    # Same issuer name and AKI as the CA, but signed by another key: only the signature is wrong.
    return ca.cert_pem, make_server(ca, sign_with=ec_key()), None


CASES: dict[str, Case] = {
    "ca.pem_size": _big_ca,
    "ca.pem_one_certificate": _two_certs,
    "ca.pem_no_private_key": _ca_with_key,
    "ca.basic_constraints/not-critical": _ca_case(basic_constraints=(True, False)),
    "ca.basic_constraints/absent": _ca_case(basic_constraints=None),
    "ca.basic_constraints/ca-false": _ca_case(basic_constraints=(False, True)),
    "ca.subject_key_identifier": _ca_case(ski=False),
    "ca.key_usage/no-keycertsign": _ca_case(key_usage=_key_usage(cert_sign=False, digital_signature=True)),
    "ca.key_usage/absent": _ca_case(key_usage=None),
    "ca.key/rsa1024": _ca_case(key=rsa.generate_private_key(65537, 1024)),
    "ca.key/p224": _ca_case(key=ec.generate_private_key(ec.SECP224R1())),
    "ca.signature_hash": _ca_case(hash_=hashes.SHA224()),
    "ca.validity/expired": _ca_case(not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(days=1)),
    "ca.validity/not-yet": _ca_case(not_before=NOW + timedelta(days=1)),
    "server.key/rsa1024": _server_case(key=rsa.generate_private_key(65537, 1024)),
    "server.key/secp256k1": _server_case(key=ec.generate_private_key(ec.SECP256K1())),
    "server.signature_hash": _server_case(hash_=hashes.SHA224()),
    "server.validity/expired": _server_case(
        not_before=NOW - timedelta(days=100), not_after=NOW - timedelta(seconds=1)
    ),
    "server.validity/not-yet": _server_case(not_before=NOW + timedelta(hours=1)),
    "server.signed_by_ca": _forged_signature,
    "server.authority_key_identifier/mismatch": _server_case(aki=b"\x01" * 20),
    "server.authority_key_identifier/absent": _server_case(aki=None),
    "server.san/bare-only": _server_case(san=[DOMAIN]),
    "server.san/other-domain": _server_case(san=["*.other.tunnel.anthropic.com"]),
    "server.san/absent": _server_case(san=None),
    "server.extended_key_usage": _server_case(eku=[ExtendedKeyUsageOID.CLIENT_AUTH]),
    "key.matches": _wrong_key,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_broken_requirement_fails_alone(case: str, good_ca: Pair) -> None:
    ca_pem, server, key_pem = CASES[case](good_ca)
    findings = run(ca_pem, server, key_pem=key_pem)
    assert failed(findings) == [case.split("/")[0]], [f.line() for f in findings]
    assert not all_passed(findings)


def test_ca_without_ski_skips_the_aki_comparison_instead_of_failing_it_twice() -> None:
    ca = make_ca(ski=False)
    findings = {f.id: f for f in run(ca.cert_pem, make_server(ca, aki=b"\x02" * 20))}
    assert findings["server.authority_key_identifier"].status is Status.SKIP


def test_a_ca_signed_by_another_issuer_name_is_reported(good_ca: Pair) -> None:
    other = make_ca(cn="another-ca")
    findings = {f.id: f for f in run(other.cert_pem, make_server(good_ca))}
    assert findings["server.signed_by_ca"].status is Status.FAIL
    assert "issuer" in findings["server.signed_by_ca"].detail.lower()


def test_eku_absent_is_allowed(good_ca: Pair) -> None:
    findings = run(good_ca.cert_pem, make_server(good_ca, eku=None))
    assert failed(findings) == []
    assert next(f for f in findings if f.id == "server.extended_key_usage").detail == "absent (allowed)"


def test_without_domain_san_lists_names_and_without_key_match_is_skipped(
    good_ca: Pair, good_server: Pair
) -> None:
    findings = {
        f.id: f
        for f in check_pair(good_ca.cert_pem, good_server.cert_pem, key_pem=None, domain=None, now=NOW)
    }
    assert findings["server.san"].status is Status.PASS
    assert f"*.{DOMAIN}" in findings["server.san"].detail
    assert findings["key.matches"].status is Status.SKIP


def test_validity_reports_days_left(good_ca: Pair) -> None:
    server = make_server(good_ca, not_after=NOW + timedelta(days=10, hours=1))
    detail = next(f for f in run(good_ca.cert_pem, server) if f.id == "server.validity").detail
    assert "10 days left" in detail


def test_garbage_ca_is_one_parse_failure_and_dependent_checks_skip(good_server: Pair) -> None:
    findings = run(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", good_server)
    assert "ca.parse" in failed(findings)
    by_id = {f.id: f for f in findings}
    assert by_id["server.signed_by_ca"].status is Status.SKIP


def test_encrypted_key_is_named(good_ca: Pair, good_server: Pair) -> None:
    from cryptography.hazmat.primitives import serialization

    encrypted = good_server.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    findings = run(good_ca.cert_pem, good_server, key_pem=encrypted)
    assert failed(findings) == ["key.matches"]
    assert "encrypted" in next(f for f in findings if f.id == "key.matches").detail


# -- the official openssl recipe (digest §4.4) ---------------------------------------------------


def test_official_openssl_recipe_passes(tmp_path: Path) -> None:
    data = openssl_recipe(tmp_path / "data")
    findings = check_pair(
        (data / "ca.crt").read_bytes(),
        (data / "tls.crt").read_bytes(),
        key_pem=(data / "tls.key").read_bytes(),
        domain=DOMAIN,
    )
    assert all(f.status is Status.PASS for f in findings), [f.line() for f in findings]


def test_openssl_sha1_server_certificate_fails_the_hash_requirement(tmp_path: Path) -> None:
    # cryptography refuses to sign with SHA-1, so the legacy certificate comes from openssl.
    data = openssl_recipe(tmp_path / "data", extra_x509=["-sha1"])
    findings = check_pair(
        (data / "ca.crt").read_bytes(),
        (data / "tls.crt").read_bytes(),
        key_pem=(data / "tls.key").read_bytes(),
        domain=DOMAIN,
    )
    assert failed(findings) == ["server.signature_hash"]
    assert "SHA1" in next(f for f in findings if f.id == "server.signature_hash").detail


def test_lines_say_pass_or_fail_and_why(good_ca: Pair, good_server: Pair) -> None:
    ca = make_ca(basic_constraints=(True, False))
    line = next(f.line() for f in run(ca.cert_pem, make_server(ca)) if f.id == "ca.basic_constraints")
    assert line == "FAIL CA basicConstraints CA:TRUE critical: CA:TRUE, not critical"
    assert os.linesep not in line
