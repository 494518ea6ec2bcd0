"""Issue #19, across commands: a marker secret planted in each credential input (environment,
files, flags) of `doctor`, `call`, `certs` and `proxy` never appears on stdout or stderr, on
success and on each failure. `setup` has its own file (tests/setup/test_setup_secrets.py);
log lines of the proxy are in tests/test_env_masking.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.pki import PKI

MARKER = "sk-ant-MARKER-5e8b2c4a9d10"
SRC = Path(__file__).resolve().parents[1] / "src"


def run(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mcp_tunnel", *argv],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    for piece in (MARKER, MARKER.lower(), "MARKER-5e8b", "5e8b2c4a9d10"):
        assert piece not in proc.stdout + proc.stderr, (argv, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def config(tmp_path: Path, pki: PKI, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"listen_addr: '127.0.0.1:8080'\ntunnel_domain: {pki.domain}\n"
        f"tls: {{cert_file: {pki.cert_file}, key_file: {pki.key_file}}}\n"
        "routes: {echo: 'http://127.0.0.1:9'}\nupstream: {allowed_ips: [127.0.0.0/8]}\n" + extra
    )
    return path


@pytest.mark.parametrize("token", [MARKER, MARKER + "\n", f'"{MARKER}"', MARKER[:9] + " " + MARKER[9:]])
def test_doctor_never_shows_the_tunnel_token(tmp_path: Path, pki: PKI, token: str) -> None:
    cfg = config(tmp_path, pki)
    r = run("doctor", "--config", str(cfg), env={"TUNNEL_TOKEN": token})
    assert "tunnel_token" in r.stdout
    token_file = tmp_path / "tunnel-token"
    token_file.write_text(token)
    r = run("doctor", "--config", str(cfg), "--token-file", str(token_file), "--json")
    assert '"tunnel_token"' in r.stdout


def test_doctor_never_shows_a_config_value_from_the_environment(tmp_path: Path, pki: PKI) -> None:
    for line in ("log_level: ${SECRET}\n", "admin_addr: ${SECRET}\n", "shutdown_timeout: ${SECRET}\n"):
        cfg = config(tmp_path, pki, line)
        r = run("doctor", "--config", str(cfg), env={"SECRET": MARKER})
        assert r.returncode == 1 and "${SECRET}" in r.stdout


def test_proxy_never_shows_a_config_value_from_the_environment(tmp_path: Path, pki: PKI) -> None:
    ok = run("proxy", "-config", str(config(tmp_path, pki, "tunnel_domain_x: 1\n")), "-check")
    assert ok.returncode == 2 and "did you mean" in ok.stderr  # an ordinary error still says what it found
    for line in ("log_level: ${SECRET}\n", "limits: {idle_timeout: '${SECRET}'}\n"):
        r = run("proxy", "-config", str(config(tmp_path, pki, line)), "-check", env={"SECRET": MARKER})
        assert r.returncode == 2 and "${SECRET}" in r.stderr


def test_call_never_echoes_a_header(tmp_path: Path, pki: PKI) -> None:
    base = ("call", "--proxy", "ws://127.0.0.1:9/", "--ca", str(pki.ca_file), f"https://echo.{pki.domain}/")
    no_colon = run(*base, "-H", f"Bearer {MARKER}")  # the name was forgotten
    assert no_colon.returncode == 2 and "expected 'Name: value'" in no_colon.stderr
    line_break = run(*base, "-H", f"Authorization: Bearer {MARKER}\r\nX: y")
    assert line_break.returncode == 2 and "line break" in line_break.stderr
    refused = run(*base, "-H", f"Authorization: Bearer {MARKER}")  # nothing listens on port 9
    assert refused.returncode == 1 and "websocket refused" in refused.stderr


def test_certs_never_echo_a_key_file(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    (ca_dir / "ca.crt").write_text(f"-----BEGIN CERTIFICATE-----\n{MARKER}\n-----END CERTIFICATE-----\n")
    (ca_dir / "ca.key").write_text(f"-----BEGIN PRIVATE KEY-----\n{MARKER}\n-----END PRIVATE KEY-----\n")
    r = run("certs", "issue", "--ca-dir", str(ca_dir), "--domain", "abcd.tunnel.test")
    assert r.returncode != 0 and r.stderr.startswith("error: ")
    r = run(
        "certs",
        "check",
        "--ca",
        str(ca_dir / "ca.crt"),
        "--cert",
        str(ca_dir / "ca.crt"),
        "--key",
        str(ca_dir / "ca.key"),
    )
    assert r.returncode != 0
