"""The certificate requirements (SPEC §7, digest §4.1-4.2) as a pure policy.

`check_pair` takes bytes and a clock and returns one `Finding` per requirement; it reads no file
and prints nothing, so the CLI, the proxy's ``-check`` and the doctor can share it and tests can
feed it certificates built to break one requirement at a time.

A requirement that cannot be judged because something it depends on is missing (the AKI cannot
equal a CA SKI that does not exist) is reported as SKIP, not as a second FAIL: each broken
certificate names exactly the requirement it breaks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from mcp_tunnel.certs.pem import parse_certs
from mcp_tunnel.errors import CertificateError

CA_PEM_MAX_BYTES = 8192
MIN_RSA_BITS = 2048
ALLOWED_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
STRONG_HASHES = {"sha256", "sha384", "sha512", "sha3-256", "sha3-384", "sha3-512"}

_E = TypeVar("_E", bound=x509.ExtensionType)

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


class Status(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class Finding:
    """One requirement's verdict. `id` is stable (tests and the doctor match on it)."""

    id: str
    requirement: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status.value} {self.requirement}: {self.detail}"


def all_passed(findings: Iterable[Finding]) -> bool:
    return not any(f.status is Status.FAIL for f in findings)


# -- small policies, reusable on their own -------------------------------------------------


def describe_key(public: CertificatePublicKeyTypes) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        return f"RSA {public.key_size}"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"ECDSA {ALLOWED_CURVES.get(public.curve.name, public.curve.name)}"
    return type(public).__name__.removeprefix("_").replace("PublicKey", "")


def key_strength_problem(public: CertificatePublicKeyTypes) -> str | None:
    """None if the key is RSA >= 2048 or ECDSA on P-256/384/521, else why not."""
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < MIN_RSA_BITS:
            return f"RSA {public.key_size} is too small (need RSA >= {MIN_RSA_BITS})"
        return None
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in ALLOWED_CURVES:
            return f"ECDSA curve {public.curve.name} is not allowed (need P-256, P-384 or P-521)"
        return None
    return f"{describe_key(public)} keys are not accepted (need RSA >= 2048 or ECDSA >= P-256)"


def signature_hash_problem(cert: x509.Certificate) -> tuple[str, str | None]:
    """(hash name, problem or None): SHA-256 or stronger is required."""
    try:
        alg = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return "unknown", f"unsupported signature algorithm {cert.signature_algorithm_oid.dotted_string}"
    if alg is None:
        name = getattr(cert.signature_algorithm_oid, "_name", cert.signature_algorithm_oid.dotted_string)
        return name, f"{name} is not an RSA/ECDSA signature with SHA-256 or stronger"
    if alg.name not in STRONG_HASHES:
        return alg.name, f"signed with {alg.name.upper()}, need SHA-256 or stronger"
    return alg.name, None


def _validity(cert: x509.Certificate, now: datetime) -> tuple[Status, str]:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return Status.FAIL, f"not valid yet: notBefore {_iso(start)} is in the future"
    if now >= end:
        return Status.FAIL, f"expired at {_iso(end)} ({(now - end).days} days ago)"
    return Status.PASS, f"valid now, until {_iso(end)} ({(end - now).days} days left)"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ext(cert: x509.Certificate, cls: type[_E]) -> x509.Extension[_E] | None:
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


# -- the checklist ---------------------------------------------------------------------------


class _Report:
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def add(self, id_: str, requirement: str, ok: bool | None, detail: str) -> None:
        status = Status.SKIP if ok is None else (Status.PASS if ok else Status.FAIL)
        self.findings.append(Finding(id_, requirement, status, detail))


def check_pair(
    ca_pem: bytes,
    cert_pem: bytes,
    *,
    key_pem: bytes | None = None,
    domain: str | None = None,
    now: datetime | None = None,
) -> list[Finding]:
    """Every requirement on a CA (as it would be uploaded) and a server certificate (and key)."""
    now = now or datetime.now(UTC)
    r = _Report()

    # The CA PEM, as the Tunnels API and the Console judge the upload.
    size = len(ca_pem)
    r.add("ca.pem_size", "CA PEM size <= 8192 bytes", size <= CA_PEM_MAX_BYTES, f"{size} bytes")
    labels = [m.group(1).decode() for m in _PEM_BLOCK.finditer(ca_pem)]
    key_blocks = [lbl for lbl in labels if "PRIVATE KEY" in lbl]
    other = [lbl for lbl in labels if lbl not in key_blocks]
    n_certs = other.count("CERTIFICATE")
    if labels:
        one = n_certs == 1 and len(other) == 1
        detail = f"{n_certs} certificate block(s)" + (
            f", other blocks: {', '.join(lbl for lbl in other if lbl != 'CERTIFICATE')}"
            if len(other) > n_certs
            else ""
        )
        r.add("ca.pem_one_certificate", "CA PEM holds exactly one certificate", one, detail)
    else:
        r.add(
            "ca.pem_one_certificate", "CA PEM holds exactly one certificate", False, "not PEM (no BEGIN line)"
        )
    r.add(
        "ca.pem_no_private_key",
        "CA PEM holds no private key",
        not key_blocks,
        f"found {', '.join(key_blocks)}" if key_blocks else "none found",
    )

    ca: x509.Certificate | None
    try:
        ca = parse_certs(ca_pem, "CA certificate")[0]
    except CertificateError as exc:
        ca = None
        r.add("ca.parse", "CA certificate parses", False, str(exc))
    server: x509.Certificate | None
    try:
        server = parse_certs(cert_pem, "server certificate")[0]
    except CertificateError as exc:
        server = None
        r.add("server.parse", "server certificate parses", False, str(exc))

    ca_ski: bytes | None = None
    if ca is not None:
        bc = _ext(ca, x509.BasicConstraints)
        if bc is None:
            r.add("ca.basic_constraints", "CA basicConstraints CA:TRUE critical", False, "extension absent")
        else:
            ok = bc.value.ca and bc.critical
            detail = (
                f"CA:{'TRUE' if bc.value.ca else 'FALSE'}, {'critical' if bc.critical else 'not critical'}"
            )
            r.add("ca.basic_constraints", "CA basicConstraints CA:TRUE critical", ok, detail)
        ski = _ext(ca, x509.SubjectKeyIdentifier)
        ca_ski = ski.value.digest if ski else None
        r.add(
            "ca.subject_key_identifier",
            "CA subjectKeyIdentifier present",
            ski is not None,
            ski.value.digest.hex(":") if ski else "extension absent",
        )
        ku = _ext(ca, x509.KeyUsage)
        if ku is None:
            r.add("ca.key_usage", "CA keyUsage keyCertSign", False, "extension absent")
        else:
            r.add(
                "ca.key_usage",
                "CA keyUsage keyCertSign",
                ku.value.key_cert_sign,
                "keyCertSign set" if ku.value.key_cert_sign else "keyCertSign missing",
            )
        _key_and_hash(r, "ca", "CA", ca)
        status, detail = _validity(ca, now)
        r.add("ca.validity", "CA validity", status is Status.PASS, detail)

    if server is not None:
        _key_and_hash(r, "server", "server", server)
        status, detail = _validity(server, now)
        r.add("server.validity", "server validity", status is Status.PASS, detail)
        _signed_by(r, server, ca, ca_ski)
        _san(r, server, domain)
        eku = _ext(server, x509.ExtendedKeyUsage)
        if eku is None:
            r.add("server.extended_key_usage", "server EKU includes serverAuth", True, "absent (allowed)")
        else:
            names = [getattr(o, "_name", o.dotted_string) for o in eku.value]
            r.add(
                "server.extended_key_usage",
                "server EKU includes serverAuth",
                ExtendedKeyUsageOID.SERVER_AUTH in eku.value,
                ", ".join(names),
            )

    _key_match(r, server, key_pem)
    return r.findings


def _key_and_hash(r: _Report, prefix: str, label: str, cert: x509.Certificate) -> None:
    public = cert.public_key()
    problem = key_strength_problem(public)
    r.add(f"{prefix}.key", f"{label} key type and size", problem is None, problem or describe_key(public))
    name, hproblem = signature_hash_problem(cert)
    r.add(
        f"{prefix}.signature_hash",
        f"{label} signature hash SHA-256+",
        hproblem is None,
        hproblem or name.upper(),
    )


def _signed_by(
    r: _Report, server: x509.Certificate, ca: x509.Certificate | None, ca_ski: bytes | None
) -> None:
    req = "server signed directly by the CA"
    if ca is None:
        r.add("server.signed_by_ca", req, None, "no CA to check against")
    else:
        try:
            _verify_issued_by(server, ca)
        except InvalidSignature:
            r.add("server.signed_by_ca", req, False, "the signature does not verify with the CA's public key")
        except ValueError as exc:
            r.add("server.signed_by_ca", req, False, str(exc))
        except (TypeError, UnsupportedAlgorithm) as exc:
            r.add("server.signed_by_ca", req, False, f"cannot verify: {exc}")
        else:
            r.add(
                "server.signed_by_ca", req, True, f"issuer {ca.subject.rfc4514_string()}, signature verifies"
            )

    req = "server authorityKeyIdentifier = CA subjectKeyIdentifier"
    aki = _ext(server, x509.AuthorityKeyIdentifier)
    aki_id = aki.value.key_identifier if aki else None
    if aki is None:
        r.add("server.authority_key_identifier", req, False, "extension absent")
    elif aki_id is None:
        r.add("server.authority_key_identifier", req, False, "present but without a keyIdentifier")
    elif ca is None or ca_ski is None:
        r.add(
            "server.authority_key_identifier", req, None, "the CA has no subjectKeyIdentifier to compare with"
        )
    elif aki_id != ca_ski:
        r.add("server.authority_key_identifier", req, False, f"{aki_id.hex(':')} != CA {ca_ski.hex(':')}")
    else:
        r.add("server.authority_key_identifier", req, True, aki_id.hex(":"))


def _verify_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """`verify_directly_issued_by`, but also for legacy hashes (SHA-1), so a SHA-1 certificate
    fails only the hash requirement and not this one too."""
    if cert.issuer != ca.subject:
        raise ValueError(
            f"issuer {cert.issuer.rfc4514_string()} is not the CA's subject {ca.subject.rfc4514_string()}"
        )
    public = ca.public_key()
    alg = cert.signature_hash_algorithm
    params = cert.signature_algorithm_parameters
    if isinstance(public, rsa.RSAPublicKey) and alg is not None and params is not None:
        public.verify(cert.signature, cert.tbs_certificate_bytes, params, alg)  # type: ignore[arg-type]
    elif isinstance(public, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
        public.verify(cert.signature, cert.tbs_certificate_bytes, params)
    else:
        cert.verify_directly_issued_by(ca)


def _san(r: _Report, server: x509.Certificate, domain: str | None) -> None:
    san = _ext(server, x509.SubjectAlternativeName)
    names = [n.lower().rstrip(".") for n in san.value.get_values_for_type(x509.DNSName)] if san else []
    if domain is None:
        req = "server SAN has DNS names"
        detail = (", ".join(names) + " (give --domain to check *.DOMAIN)") if names else "no DNS names in SAN"
        r.add("server.san", req, bool(names), detail)
        return
    domain = domain.lower().rstrip(".")
    req = f"server SAN covers *.{domain}"
    if not names:
        r.add("server.san", req, False, "no DNS names in SAN")
        return
    covered = f"*.{domain}" in names
    detail = ", ".join(names)
    if covered and domain not in names:
        detail += f" (bare {domain} not listed: only needed for a route on the bare domain)"
    r.add("server.san", req, covered, detail)


def _key_match(r: _Report, server: x509.Certificate | None, key_pem: bytes | None) -> None:
    req = "key matches the server certificate"
    if key_pem is None:
        r.add("key.matches", req, None, "no --key given")
        return
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        r.add("key.matches", req, False, "the key is encrypted; the proxy needs an unencrypted key")
        return
    except (ValueError, UnsupportedAlgorithm) as exc:
        r.add(
            "key.matches",
            req,
            False,
            f"not a PEM private key: {str(exc).splitlines()[0] if str(exc) else exc}",
        )
        return
    if server is None:
        r.add("key.matches", req, None, "no server certificate to compare with")
        return
    same = key.public_key() == server.public_key()
    r.add(
        "key.matches",
        req,
        same,
        "public keys are equal" if same else "the key belongs to another certificate",
    )


def key_matches_cert(key_public: CertificatePublicKeyTypes, cert: x509.Certificate) -> bool:
    """The pair check the proxy's reloader uses before it lets OpenSSL near the files."""
    return bool(key_public == cert.public_key())
