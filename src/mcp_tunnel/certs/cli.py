"""`mcp-tunnel certs init|issue|check`: the official openssl page as three commands.

I/O lives here; what a valid pair is lives in `check`, how one is made in `generate`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mcp_tunnel.certs.check import Status, all_passed, check_pair
from mcp_tunnel.certs.files import CERT_MODE, KEY_MODE, read_bytes, write_atomic
from mcp_tunnel.certs.generate import (
    KEY_TYPES,
    PrivateKey,
    generate_ca,
    issue_server_cert,
    load_cert,
    load_key,
    normalize_domain,
    pem_cert,
    pem_key,
)
from mcp_tunnel.cli_common import add_debug_flag
from mcp_tunnel.errors import CertificateError, UsageError

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mcp-tunnel certs", description="Create, renew and check the inner-TLS certificates.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    init = sub.add_parser("init", help="create a CA and a server certificate signed by it")
    init.add_argument("--domain", required=True, help="tunnel domain, e.g. abcd1234.tunnel.anthropic.com")
    init.add_argument(
        "--out", required=True, type=Path, help="directory for ca.crt, ca.key, tls.crt, tls.key"
    )
    init.add_argument("--key-type", choices=KEY_TYPES, default="rsa4096", help="server key (default rsa4096)")
    init.add_argument(
        "--force", action="store_true", help="replace an existing CA (it must be registered again)"
    )

    issue = sub.add_parser("issue", help="sign a new server certificate with an existing CA (renewal)")
    issue.add_argument("--ca-dir", required=True, type=Path, help="directory holding ca.crt and ca.key")
    issue.add_argument("--domain", required=True, help="tunnel domain")
    issue.add_argument("--duration", default="2160h", help="Go-style duration (default 2160h = 90 days)")
    issue.add_argument(
        "--reuse-key", action="store_true", help="keep the existing tls.key (as the openssl renewal)"
    )
    issue.add_argument("--out", type=Path, help="directory for tls.crt and tls.key (default: --ca-dir)")
    issue.add_argument(
        "--key-type", choices=KEY_TYPES, default="rsa4096", help="server key (default rsa4096)"
    )

    check = sub.add_parser("check", help="test a CA and server certificate against every requirement")
    check.add_argument("--ca", required=True, type=Path, help="CA certificate PEM, as registered")
    check.add_argument("--cert", required=True, type=Path, help="server certificate PEM")
    check.add_argument("--key", type=Path, help="server private key PEM (checks that it matches)")
    check.add_argument("--domain", help="tunnel domain the SAN must cover as *.DOMAIN")
    for parser in (p, init, issue, check):
        add_debug_flag(parser)
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "init":
        return _init(args)
    if args.command == "issue":
        return _issue(args)
    return _check(args)


def _domain(text: str) -> str:
    try:
        return normalize_domain(text)
    except ValueError as exc:
        raise UsageError(f"--domain: {exc}") from None


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateError(f"mkdir {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise CertificateError(f"{path} is not a directory")


def _write_server(out: Path, cert: x509.Certificate, key: PrivateKey, *, write_key: bool) -> None:
    # Key first, certificate last: a proxy polling this directory sees at worst (new key, old
    # cert), refuses that pair, and loads the new one when tls.crt lands a moment later.
    if write_key:
        write_atomic(out / TLS_KEY, pem_key(key), KEY_MODE)
    write_atomic(out / TLS_CERT, pem_cert(cert), CERT_MODE)


def _summary(cert: x509.Certificate) -> str:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = ", ".join(names.get_values_for_type(x509.DNSName))
    return (
        f"serial {cert.serial_number:x}, SAN {dns}, valid until {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    )


def _init(args: argparse.Namespace) -> int:
    domain = _domain(args.domain)
    out: Path = args.out
    existing = [out / n for n in (CA_CERT, CA_KEY) if (out / n).exists()]
    if existing and not args.force:
        raise CertificateError(
            f"{existing[0]} already exists: replacing the CA means registering the new one with "
            f"Anthropic; to renew the server certificate run `mcp-tunnel certs issue --ca-dir {out} "
            f"--domain {domain}`, or pass --force to replace the CA"
        )
    _mkdir(out)
    ca_cert, ca_key = generate_ca()
    cert, key = issue_server_cert(ca_cert, ca_key, domain, key_type=args.key_type)
    write_atomic(out / CA_KEY, pem_key(ca_key), KEY_MODE)
    write_atomic(out / CA_CERT, pem_cert(ca_cert), CERT_MODE)
    _write_server(out, cert, key, write_key=True)
    fingerprint = ca_cert.fingerprint(hashes.SHA256()).hex(":")
    print(f"wrote {out / CA_CERT} (CA, SHA-256 fingerprint {fingerprint})")
    print(f"wrote {out / CA_KEY} (mode 0600; keep it private, it signs renewals)")
    print(f"wrote {out / TLS_CERT} ({_summary(cert)})")
    print(f"wrote {out / TLS_KEY} (mode 0600)")
    print(
        f"next: register {out / CA_CERT} with your tunnel (Console, or POST /v1/tunnels/{{id}}/certificates)"
    )
    return 0


def _issue(args: argparse.Namespace) -> int:
    from mcp_tunnel.duration import parse_duration

    domain = _domain(args.domain)
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        raise UsageError(f"--duration: {exc}") from None
    if seconds <= 0:
        raise UsageError(f"--duration {args.duration}: must be positive")
    ca_dir: Path = args.ca_dir
    out: Path = args.out or ca_dir
    ca_cert = load_cert(ca_dir / CA_CERT)
    ca_key = load_key(ca_dir / CA_KEY)
    key: PrivateKey | None = None
    if args.reuse_key:
        if not (out / TLS_KEY).exists():
            raise CertificateError(
                f"--reuse-key: {out / TLS_KEY} does not exist; drop --reuse-key to make a new key"
            )
        key = load_key(out / TLS_KEY)
    _mkdir(out)
    cert, key = issue_server_cert(
        ca_cert, ca_key, domain, duration=timedelta(seconds=seconds), key_type=args.key_type, key=key
    )
    _write_server(out, cert, key, write_key=not args.reuse_key)
    print(f"wrote {out / TLS_CERT} ({_summary(cert)})")
    print(f"{'kept' if args.reuse_key else 'wrote'} {out / TLS_KEY}")
    if cert.not_valid_after_utc > ca_cert.not_valid_after_utc:
        print(
            f"warning: the certificate outlives its CA (CA expires {ca_cert.not_valid_after_utc:%Y-%m-%d}); "
            "it stops working then",
            file=sys.stderr,
        )
    return 0


def _check(args: argparse.Namespace) -> int:
    domain = _domain(args.domain) if args.domain is not None else None
    ca_pem = read_bytes(args.ca, "CA certificate")
    cert_pem = read_bytes(args.cert, "server certificate")
    key_pem = read_bytes(args.key, "server key") if args.key is not None else None
    findings = check_pair(ca_pem, cert_pem, key_pem=key_pem, domain=domain, now=datetime.now(UTC))
    for f in findings:
        print(f.line())
    failed = [f for f in findings if f.status is Status.FAIL]
    if all_passed(findings):
        print(f"OK: all {sum(f.status is Status.PASS for f in findings)} checked requirements pass")
        return 0
    print(f"FAILED: {len(failed)} requirement(s) not met: {', '.join(f.id for f in failed)}")
    return 1
