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
from pathlib import Path
from typing import Any

from mcp_tunnel.doctor import Options, Report, diagnose
from mcp_tunnel.doctor.probes import Probes
from mcp_tunnel.proxy.upstream import Resolver
from support.pki import PKI, make_pki

DOMAIN = "tunnel.test"
BIN = Path(sys.executable).parent


def make_pair(directory: Path, domain: str = DOMAIN, *, expired: bool = False) -> PKI:
    """The shared PKI with the key 0644, so the proxy's uid can read it."""
    return make_pki(directory, domain, key_mode=0o644, expired=expired)


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
