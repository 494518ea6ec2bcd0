"""`mcp-tunnel connect`: any MCP client reaches the private server through the real proxy path."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
from pathlib import Path

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from mcp_tunnel.client.local_endpoint import LocalEndpoint
from mcp_tunnel.client.tunnel_client import TunnelClient, client_ssl_context
from mcp_tunnel.logs import Logger
from support.builds import SRC
from support.mcp_server import running_mcp_server
from support.pki import PKI, make_pki
from support.procs import BIN, free_port
from support.proxy import RunningProxy, start_proxy
from support.upstreams import Received, RecordingUpstream

HOST = "echo.tunnel.test"


async def _endpoint(proxy_url: str, ca: Path, logs: io.StringIO | None = None) -> LocalEndpoint:
    client = TunnelClient(proxy_url, client_ssl_context(str(ca)), timeout=5)
    endpoint = LocalEndpoint(client, HOST, Logger("info", stream=logs or io.StringIO()))
    await endpoint.start("127.0.0.1", 0)
    return endpoint


async def test_connect_cli_with_official_sdk_client(tmp: Path, pki: PKI) -> None:
    async with running_mcp_server(json_response=False, allowed_hosts=[HOST]) as port:
        proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{port}"})
        local = free_port()
        proc = subprocess.Popen(
            [str(BIN / "mcp-tunnel"), "connect", "--proxy", proxy.url, "--ca", str(pki.ca_file),
             "--host", HOST, "--listen", f"127.0.0.1:{local}"],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)},
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            line = await asyncio.to_thread(proc.stderr.readline)
            assert "connect ready" in line, line
            async with (
                httpx2.AsyncClient() as http,
                streamable_http_client(f"http://127.0.0.1:{local}/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                tools = await session.list_tools()
                assert {t.name for t in tools.tools} == {"hello", "add"}
                result = await session.call_tool("hello", {"name": "connect"})
                assert result.content[0].text == "Hello, connect!"  # type: ignore[union-attr]
        finally:
            proc.terminate()
            assert await asyncio.to_thread(proc.wait, 10) == 0  # the proxy runs in this loop
        assert proxy.log_has("host=echo.tunnel.test path=/mcp")
        await proxy.stop()


async def test_sse_through_connect_is_not_buffered(tmp: Path, pki: PKI) -> None:
    client_saw_first = asyncio.Event()

    async def sse(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"d\r\ndata: first\n\n\r\n")
        await writer.drain()
        await asyncio.wait_for(client_saw_first.wait(), 10)
        writer.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")

    up = await RecordingUpstream(handler=sse).start()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    endpoint = await _endpoint(proxy.url, pki.ca_file)
    received = b""
    async with (
        httpx2.AsyncClient() as http,
        http.stream("GET", f"http://127.0.0.1:{endpoint.port}/events") as resp,
    ):
        assert resp.status_code == 200
        async for piece in resp.aiter_raw():
            received += piece
            if b"data: first" in received:
                client_saw_first.set()
    assert received == b"data: first\n\ndata: second\n\n"
    assert up.requests[0].header("host") == HOST
    await endpoint.close()
    await proxy.stop()
    await up.close()


async def test_several_local_clients_at_once(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    endpoint = await _endpoint(proxy.url, pki.ca_file)

    async def one(i: int) -> None:
        async with httpx2.AsyncClient() as http:
            for j in range(3):
                resp = await http.post(f"http://127.0.0.1:{endpoint.port}/c{i}/{j}", content=b"abc")
                assert resp.status_code == 200
                assert resp.text == f"POST /c{i}/{j} 3\n"

    await asyncio.gather(*(one(i) for i in range(5)))
    assert len(upstream.requests) == 15
    assert len(proxy.server.tunnels) >= 1
    await endpoint.close()
    await proxy.stop()


async def test_proxy_unreachable_is_a_local_502(tmp: Path, pki: PKI) -> None:
    logs = io.StringIO()
    endpoint = await _endpoint(f"ws://127.0.0.1:{free_port()}/", pki.ca_file, logs)
    async with httpx2.AsyncClient() as http:
        resp = await http.get(f"http://127.0.0.1:{endpoint.port}/mcp")
    assert resp.status_code == 502
    assert resp.text.startswith("tunnel websocket failed:") and resp.text.count("\n") == 1
    assert "cannot reach the tunnel" in logs.getvalue()
    await endpoint.close()


async def test_tls_failure_is_a_local_502(tmp: Path, pki: PKI) -> None:
    proxy: RunningProxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    stranger = make_pki(tmp / "stranger")
    logs = io.StringIO()
    endpoint = await _endpoint(proxy.url, stranger.ca_file, logs)
    async with httpx2.AsyncClient() as http:
        resp = await http.get(f"http://127.0.0.1:{endpoint.port}/mcp")
    assert resp.status_code == 502
    assert resp.text.startswith("tunnel tls failed: certificate verify failed")
    assert "stage=tls" in logs.getvalue()
    await endpoint.close()
    await proxy.stop()
