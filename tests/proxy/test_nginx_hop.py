"""The proxy behind a real reverse proxy (nginx), as it sits behind cloudflared."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from mcp_tunnel.client import TunnelClient, client_ssl_context
from mcp_tunnel.client.httpx_transport import TunnelTransport
from support.mcp_server import running_mcp_server
from support.nginx import Nginx
from support.pki import PKI
from support.proxy import start_proxy
from support.upstreams import Received, RecordingUpstream

HOST = "echo.tunnel.test"


async def test_mcp_session_through_nginx_hop(tmp: Path, pki: PKI) -> None:
    async with running_mcp_server(json_response=False, allowed_hosts=[HOST]) as port:
        proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{port}"})
        nginx = Nginx(tmp / "nginx", proxy.server.port)
        try:
            client = TunnelClient(nginx.url, client_ssl_context(str(pki.ca_file)), timeout=10)
            async with (
                httpx2.AsyncClient(transport=TunnelTransport(client)) as http,
                streamable_http_client(f"https://{HOST}/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                result = await session.call_tool("hello", {"name": "nginx"})
                assert result.content[0].text == "Hello, nginx!"  # type: ignore[union-attr]
        finally:
            nginx.stop()
        await proxy.stop()


async def test_sse_through_nginx_hop_not_buffered(tmp: Path, pki: PKI) -> None:
    seen_first = asyncio.Event()

    async def sse(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"b\r\ndata: one\n\n\r\n")
        await writer.drain()
        await asyncio.wait_for(seen_first.wait(), 10)
        writer.write(b"b\r\ndata: two\n\n\r\n0\r\n\r\n")

    up = await RecordingUpstream(handler=sse).start()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    nginx = Nginx(tmp / "nginx", proxy.server.port)
    try:
        client = TunnelClient(nginx.url, client_ssl_context(str(pki.ca_file)), timeout=10)
        conn = await client.connect(HOST)
        resp = await conn.request("GET", "/sse", host=HOST)
        got = b""
        async for piece in resp.iter_body():
            got += piece
            if b"data: one" in got:
                seen_first.set()
        assert got == b"data: one\n\ndata: two\n\n"
        await conn.close()
    finally:
        nginx.stop()
    await proxy.stop()
    await up.close()
