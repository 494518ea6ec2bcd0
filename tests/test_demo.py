"""`mcp-tunnel demo` as a person runs it: the steps, the tool result, and nothing left behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from support.procs import BIN


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _leftovers(marker: str) -> list[int]:
    """Processes whose command line or environment still mention the demo's directory."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            data = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in data:
            found.append(int(pid))
    return found


def test_demo_once() -> None:
    result = subprocess.run(
        [str(BIN / "mcp-tunnel"), "demo", "--once"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("[1/4] certificates", "[2/4] MCP server", "[3/4] proxy", "[4/4] MCP session"):
        assert step in out
    assert "hello(name='tunnel') returned: Hello, tunnel!" in out
    assert re.search(r"\(\d+\.\d ms\)", out)  # each step prints its timing
    workdir = re.search(r"files in (\S+)\)", out)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)]
    assert ports and not any(_port_open(p) for p in ports)
    assert _leftovers(workdir.group(1)) == []


async def test_demo_serves_connect_until_ctrl_c() -> None:
    proc = subprocess.Popen(
        [str(BIN / "mcp-tunnel"), "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert await asyncio.to_thread(ready.wait, 120) and proc.poll() is None, "".join(lines)
        out = "".join(lines)
        url = re.search(r"Point any MCP client \(streamable HTTP\) at (\S+)", out)
        assert url is not None, out
        async with (
            httpx2.AsyncClient() as http,
            streamable_http_client(url.group(1), http_client=http) as (read_s, write_s),
            ClientSession(read_s, write_s) as session,
        ):
            await session.initialize()
            tools = await session.list_tools()
            assert "hello" in {t.name for t in tools.tools}
            result = await session.call_tool("hello", {"name": "client"})
            assert result.content[0].text == "Hello, client!"  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 5
        workdir = re.search(r"files in (\S+)\)", out)
        assert workdir is not None
        while Path(workdir.group(1)).exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)]
        assert not any(_port_open(p) for p in ports)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_failure_exits_non_zero_and_cleans_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step that fails (here the MCP session: the server refuses every Host) leaves nothing."""
    import mcp_tunnel.demo as demo
    import mcp_tunnel.sample_server as sample

    real = sample.build_app
    monkeypatch.setattr(sample, "build_app", lambda **kw: real(allowed_hosts=["nobody.example"]))
    assert demo.main(["--once"]) == 1
    out = capsys.readouterr().out
    assert "demo failed:" in out and "FAILED" in out
    workdir = re.search(r"files in (\S+)\)", out)
    assert workdir is not None and not Path(workdir.group(1)).exists()
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)]
    assert ports and not any(_port_open(p) for p in ports)
