"""`mcp-tunnel call`: the body on stdout, and one distinct line for each way it can fail."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from support.pki import PKI, make_pki
from support.procs import run_cli
from support.proxy import start_proxy
from support.upstreams import RecordingUpstream


async def _call(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, "call", *args)


async def test_call_success_with_headers_and_data(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    result = await _call(
        "--proxy", proxy.url, "--ca", str(pki.ca_file), "https://echo.tunnel.test/mcp",
        "-H", "Content-Type: application/json", "-d", '{"a":1}', "-i",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 200 OK")
    assert result.stdout.endswith("POST /mcp 7\n")
    assert upstream.requests[0].header("content-type") == "application/json"
    await proxy.stop()


async def test_call_websocket_refused(tmp: Path, pki: PKI) -> None:
    result = await _call(
        "--proxy", "ws://127.0.0.1:9/", "--ca", str(pki.ca_file), "https://echo.tunnel.test/"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: websocket refused:")
    assert len(result.stderr.strip().splitlines()) == 1


async def test_call_tls_handshake_failed_wrong_ca(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    stranger = make_pki(tmp / "stranger")
    result = await _call("--proxy", proxy.url, "--ca", str(stranger.ca_file), "https://echo.tunnel.test/")
    assert result.returncode == 1
    assert result.stderr.startswith("error: tls handshake failed:")
    assert "certificate verify failed" in result.stderr
    # The proxy sees the client's alert and logs it with the reason the troubleshooting greps for.
    deadline = asyncio.get_running_loop().time() + 5
    while not proxy.log_has("tls handshake failed: unknown ca"):
        assert asyncio.get_running_loop().time() < deadline, proxy.logs.getvalue()
        await asyncio.sleep(0.02)
    await proxy.stop()


async def test_call_tls_wrong_name(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    result = await _call("--proxy", proxy.url, "--ca", str(pki.ca_file), "https://echo.other.example/")
    assert result.returncode == 1
    assert "tls handshake failed" in result.stderr and "mismatch" in result.stderr.lower()
    await proxy.stop()


async def test_call_http_error(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    result = await _call("--proxy", proxy.url, "--ca", str(pki.ca_file), "https://nope.tunnel.test/")
    assert result.returncode == 1
    assert result.stdout == "No route configured for host\n"
    assert result.stderr.strip() == "error: http error: HTTP 502 Bad Gateway"
    await proxy.stop()


async def test_call_timeout(tmp: Path, pki: PKI) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept and never answer

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    result = await _call(
        "--proxy",
        f"ws://127.0.0.1:{port}/",
        "--ca",
        str(pki.ca_file),
        "https://echo.tunnel.test/",
        "--timeout",
        "0.5",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: timeout:")
    server.close()


def test_call_usage_errors(pki: PKI) -> None:
    result = run_cli(
        "call", "--proxy", "ws://127.0.0.1:9/", "--ca", str(pki.ca_file), "http://plain.example/"
    )
    assert result.returncode == 2
    assert "must be https://" in result.stderr
