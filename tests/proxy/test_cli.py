"""The proxy command as an operator runs it: flags, -check, exit codes, signals."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

from support.pki import PKI
from support.procs import BIN, ProxyProcess, free_port, run_cli
from support.proxy import write_config
from support.upstreams import RecordingUpstream


def _config(tmp: Path, pki: PKI, upstream_port: int, **extra: object) -> tuple[Path, int]:
    port = free_port()
    path = write_config(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream_port}"}, listen_addr=f"127.0.0.1:{port}", **extra
    )
    return path, port


async def _call(port: int, pki: PKI, url: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        run_cli,
        "call",
        "--proxy",
        f"ws://127.0.0.1:{port}/",
        "--ca",
        str(pki.ca_file),
        url,
        "--timeout",
        "10",
    )


async def test_proxy_serves_with_single_dash_config(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    path, port = _config(tmp, pki, upstream.port, log_level="info")
    with ProxyProcess(["-config", str(path)]) as proxy:
        proxy.wait_for("listening")
        assert "route configured" in proxy.wait_for("route configured")
        result = await _call(port, pki, "https://echo.tunnel.test/mcp?q=1")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "GET /mcp?q=1 0\n"
        proxy.wait_for('msg="request completed"')
        assert proxy.stop() == 0
    assert not any("q=1" in line for line in proxy.lines)


async def test_mcp_proxy_entry_point_and_tunnel_domain_flag(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    path, port = _config(tmp, pki, upstream.port, tunnel_domain="other.example")
    with ProxyProcess(["--config", str(path), "-tunnel-domain", pki.domain], cmd="mcp-proxy") as proxy:
        line = proxy.wait_for("route configured")
        assert "host=echo.tunnel.test" in line
        result = await _call(port, pki, "https://echo.tunnel.test/")
        assert result.returncode == 0, result.stderr
        proxy.stop()


def test_check_prints_routes(tmp: Path, pki: PKI) -> None:
    path, _ = _config(tmp, pki, 9000)
    result = run_cli("proxy", "-config", str(path), "-check")
    assert result.returncode == 0, result.stderr
    assert "configuration ok" in result.stdout
    assert "route echo: echo.tunnel.test -> http://127.0.0.1:9000" in result.stdout


def test_check_fails_with_one_line_and_exit_2(tmp: Path, pki: PKI) -> None:
    path = tmp / "bad.yaml"
    path.write_text(
        f"listen_addr: ':8080'\ntls:\n  cert_file: {pki.cert_file}\n  key_file: {pki.key_file}\n"
        "routes:\n  - echo: http://10.0.0.1:80\n"
    )
    result = run_cli("proxy", "-config", str(path), "-check")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot unmarshal !!seq into map[string]string" in lines[0]
    assert f"{path}:6" in lines[0]
    assert "Traceback" not in result.stderr


def test_mismatched_pair_is_a_config_error(tmp: Path, pki: PKI) -> None:
    other = tmp / "other"
    from support.pki import make_pki

    second = make_pki(other)
    path, _ = _config(tmp, pki, 9000, tls={"cert_file": str(pki.cert_file), "key_file": str(second.key_file)})
    result = run_cli("proxy", "-config", str(path), "-check")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "certificate" in result.stderr and "Traceback" not in result.stderr


def test_missing_config_file(tmp: Path) -> None:
    result = run_cli("proxy", "-config", str(tmp / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and len(result.stderr.strip().splitlines()) == 1


async def test_sigterm_exits_zero(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    path, _ = _config(tmp, pki, upstream.port)
    with ProxyProcess(["-config", str(path)]) as proxy:
        proxy.wait_for("listening")
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(15) == 0
        proxy.wait_for("stopped")


def test_console_scripts_installed() -> None:
    for name in ("mcp-tunnel", "mcp-proxy", "setup"):
        assert (BIN / name).exists(), name
