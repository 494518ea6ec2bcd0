"""Values that came from ``${VAR}`` are masked in config errors, `-check` output and log lines,
unless the variable is TUNNEL_DOMAIN or the value proved to be an address or a path
(docs/configuration.md, "Values from the environment")."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_tunnel import redact
from mcp_tunnel.config import load_config
from mcp_tunnel.errors import ConfigError
from mcp_tunnel.logs import Logger
from support.pki import PKI

MARKER = "sk-ant-MARKER-3f9c2a7d1e"
SRC = Path(__file__).resolve().parents[1] / "src"


def write(tmp_path: Path, body: str) -> Path:
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("")
    path = tmp_path / "config.yaml"
    text = body.replace("TLS", f"tls: {{cert_file: {tmp_path}/tls.crt, key_file: {tmp_path}/tls.key}}")
    path.write_text(text)
    return path


BASE = "listen_addr: ':8080'\nTLS\nroutes: {echo: 'http://10.0.0.1:80'}\n"


@pytest.mark.parametrize(
    "line",
    [
        "log_level: ${SECRET}",
        "log_format: ${SECRET}",
        "shutdown_timeout: ${SECRET}",
        "tunnel_domain: ${SECRET}/x",
        "admin_addr: ${SECRET}",
        "limits: {max_connections: '${SECRET}'}",
        "upstream: {allowed_ips: ['${SECRET}']}",
        "upstream: {host_header: '${SECRET}'}",
        "upstream: {disable_ip_validation: '${SECRET}'}",
        "upstream: {tls: {ca_file: '${SECRET}'}}",
    ],
)
def test_errors_never_show_a_value_from_the_environment(tmp_path: Path, line: str) -> None:
    path = write(tmp_path, BASE + line + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), environ={"SECRET": MARKER})
    message = str(info.value)
    assert MARKER not in message and MARKER.lower() not in message
    assert "${SECRET}" in message  # which variable, so the operator knows where to look


def test_a_bad_route_from_the_environment_is_masked(tmp_path: Path) -> None:
    path = write(tmp_path, "listen_addr: ':8080'\nTLS\nroutes: {echo: '${SECRET}'}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), environ={"SECRET": MARKER})
    assert MARKER not in str(info.value)
    assert "invalid upstream (must be scheme://host:port)" in str(info.value)  # the official text stays


def test_addresses_paths_and_the_tunnel_domain_are_shown(tmp_path: Path) -> None:
    """What the operator needs to see is shown, in errors as in success."""
    env = {"TUNNEL_DOMAIN": "abcd1234.tunnel.anthropic.com", "UP": "http://10.0.0.1:80", "PORT": "8080"}
    path = write(tmp_path, "listen_addr: '127.0.0.1:${PORT}'\nTLS\ntunnel_domain: ${TUNNEL_DOMAIN}\n")
    path.write_text(path.read_text() + "routes: {echo: '${UP}'}\nupstream: {allowed_ips: [192.168.0.0/16]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), environ=env)
    assert "10.0.0.1" in str(info.value)  # outside allowed_ips: the address is shown
    missing = tmp_path / "missing.key"
    path.write_text(
        f"listen_addr: ':8080'\ntls: {{cert_file: {tmp_path}/tls.crt, key_file: '${{KEY}}'}}\n"
        "routes: {echo: 'http://10.0.0.1:80'}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path), environ={"KEY": str(missing)})
    assert f"open {missing}: no such file or directory" in str(info.value)


def test_a_domain_from_another_variable_is_shown_when_it_is_a_domain(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "tunnel_domain: ${DOMAIN}\n")
    cfg = load_config(str(path), environ={"DOMAIN": "abcd1234.tunnel.anthropic.com"})
    assert cfg.tunnel_domain == "abcd1234.tunnel.anthropic.com"
    assert not redact.active()


def test_hidden_values_are_scrubbed_from_log_lines(tmp_path: Path) -> None:
    """A value that loads but proved nothing (a single-label 'domain') never reaches a log."""
    path = write(tmp_path, BASE + "tunnel_domain: ${SECRET}\n")
    cfg = load_config(str(path), environ={"SECRET": MARKER})
    assert cfg.tunnel_domain == MARKER.lower()
    stream = io.StringIO()
    log = Logger("info", "text", stream=stream)
    log.info("route configured", route="echo", host=cfg.router.public_host(cfg.routes["echo"]))
    log.flush()
    assert MARKER.lower() not in stream.getvalue() and "${SECRET}" in stream.getvalue()


def test_proxy_check_never_prints_a_value_from_the_environment(tmp_path: Path, pki: PKI) -> None:
    """`mcp-proxy -check`, as a process: stdout and stderr, on success and on failure."""
    path = write(tmp_path, BASE + "tunnel_domain: ${SECRET}\n")

    def check(env_value: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mcp_tunnel", "proxy", "-config", str(path), "-check"],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC), "SECRET": env_value},
            capture_output=True,
            text=True,
            timeout=60,
        )

    bad = check(MARKER + ".example/")  # not a domain: a config error
    assert bad.returncode == 2, bad.stderr
    assert "${SECRET}" in bad.stderr
    assert MARKER not in bad.stdout + bad.stderr and MARKER.lower() not in bad.stdout + bad.stderr
    # loads, then the empty certificate fails: still nothing of the value
    later = check(MARKER)
    assert later.returncode == 2
    assert MARKER.lower() not in later.stdout + later.stderr and MARKER not in later.stdout + later.stderr
    # a real pair: -check succeeds and prints the routes' public hosts, with the value masked
    path.write_text(
        BASE.replace("TLS", f"tls: {{cert_file: {pki.cert_file}, key_file: {pki.key_file}}}")
        + "tunnel_domain: ${SECRET}\n"
    )
    ok = check(MARKER)
    assert ok.returncode == 0, ok.stderr
    assert "route echo: echo.${SECRET} -> http://10.0.0.1:80" in ok.stdout
    assert MARKER.lower() not in ok.stdout + ok.stderr
