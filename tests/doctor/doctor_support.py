"""Broken and healthy setups for the doctor, all on loopback.

Each builder writes real files (certificates made with the product's generator, a config the
real loader reads) so the doctor is tested the way an operator runs it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mcp_tunnel.certs.files import write_atomic
from mcp_tunnel.certs.generate import generate_ca, issue_server_cert, pem_cert, pem_key
from mcp_tunnel.doctor import Options, Report, diagnose
from mcp_tunnel.doctor.probes import Probes
from mcp_tunnel.proxy.upstream import Resolver
from support.pki import PKI

DOMAIN = "tunnel.test"
BIN = Path(sys.executable).parent


def make_pair(directory: Path, domain: str = DOMAIN, *, expired: bool = False) -> PKI:
    """ca.crt/ca.key/tls.crt/tls.key in `directory`, the key 0644 so the proxy's uid can read it."""
    ca_cert, ca_key = generate_ca()
    cert, key = issue_server_cert(ca_cert, ca_key, domain, duration=timedelta(days=30), key_type="ecdsa-p256")
    if expired:
        cert = _backdate(cert, ca_key)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / "ca.crt", pem_cert(ca_cert), 0o644)
    write_atomic(directory / "ca.key", pem_key(ca_key), 0o600)
    write_atomic(directory / "tls.crt", pem_cert(cert), 0o644)
    write_atomic(directory / "tls.key", pem_key(key), 0o644)
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


def write_config(tmp: Path, pki: PKI, routes: Any, **extra: Any) -> Path:
    doc: dict[str, Any] = {
        "listen_addr": "127.0.0.1:8080",
        "tunnel_domain": pki.domain,
        "tls": {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
        "routes": routes,
        "upstream": {"allowed_ips": ["127.0.0.0/8"]},
    }
    for key, value in extra.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def tunnel_token(**overrides: Any) -> str:
    doc = {"a": "0123456789abcdef0123456789abcdef", "t": "5f0c1e9a-1234-4cde-8f00-0123456789ab"}
    doc["s"] = base64.b64encode(b"s" * 32).decode()
    doc.update(overrides)
    return base64.b64encode(json.dumps(doc).encode()).decode()


async def doctor(config: Path, *, resolver: Resolver | None = None, **kwargs: Any) -> tuple[Report, Probes]:
    """The diagnosis in-process, so a test can script DNS and see every connection attempt."""
    kwargs.setdefault("timeout", 5.0)
    options = Options(config=str(config), **kwargs)
    probes = Probes(timeout=options.timeout) if resolver is None else Probes(resolver, options.timeout)
    return await diagnose(options, probes), probes


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def run_doctor_cli(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """`mcp-tunnel doctor ...` as a subprocess, awaited so in-process servers keep serving."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "mcp-tunnel"),
        "doctor",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


class Guard:
    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []
        self.lookups: list[str] = []
        self.violations: list[str] = []

    def refuse(self, what: str) -> AssertionError:
        self.violations.append(what)
        return AssertionError(f"test tried to reach off this machine: {what}")


def statuses(report: Report, step: str) -> dict[str, str]:
    return {c.name: c.status.value for s, c in report.checks() if s == step}


def failed_steps(report: Report) -> list[str]:
    return [s.step for s in report.steps if s.failed]
