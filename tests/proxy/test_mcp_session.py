"""A full MCP session through the proxy: the official SDK's client on top of our tunnel client,
the official SDK's server behind the proxy, in both response modes."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from mcp_tunnel.client.httpx_transport import TunnelTransport
from support.mcp_server import running_mcp_server
from support.pki import PKI
from support.proxy import start_proxy


@pytest.mark.parametrize("json_response", [True, False], ids=["json", "sse"])
@pytest.mark.parametrize("host_header", ["original", "upstream"])
async def test_mcp_session_through_tunnel(json_response: bool, host_header: str, tmp: Path, pki: PKI) -> None:
    host = pki.host("echo")
    # With host_header: upstream the server keeps the SDK's loopback default (only its own
    # address as Host), which is exactly what the option exists for.
    allowed = [host] if host_header == "original" else None
    async with running_mcp_server(json_response=json_response, allowed_hosts=allowed) as port:
        proxy = await start_proxy(
            tmp,
            pki,
            {"echo": f"http://127.0.0.1:{port}"},
            upstream={"host_header": host_header},
        )
        transport = TunnelTransport(proxy.client())
        async with (
            httpx2.AsyncClient(transport=transport) as http,
            streamable_http_client(f"https://{host}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            init = await session.initialize()
            assert init.server_info.name == "mcp-tunnel-sample"
            tools = await session.list_tools()
            assert {t.name for t in tools.tools} == {"hello", "add"}
            result = await session.call_tool("hello", {"name": "tunnel"})
            assert result.content[0].text == "Hello, tunnel!"  # type: ignore[union-attr]
            result = await session.call_tool("add", {"a": 2, "b": 40})
            assert result.content[0].text == "42"  # type: ignore[union-attr]
        assert proxy.log_has('msg="request started" method=POST host=echo.tunnel.test path=/mcp')
        await proxy.stop()


async def test_sdk_loopback_server_refuses_tunnel_host_without_option(tmp: Path, pki: PKI) -> None:
    """Why `upstream.host_header: upstream` exists: the SDK's default answers 421 to our Host."""
    host = pki.host("echo")
    async with running_mcp_server(json_response=True, allowed_hosts=None) as port:
        proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{port}"})
        conn = await proxy.client().connect(host)
        resp = await conn.request(
            "POST",
            "/mcp",
            host=host,
            headers=[("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream")],
            body=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        )
        assert resp.status == 421
        await resp.read()
        await conn.close()
        await proxy.stop()
