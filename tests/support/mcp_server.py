"""A real MCP server (official SDK, streamable HTTP) served by uvicorn on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings


def build_server() -> MCPServer:
    server: MCPServer = MCPServer("tunnel-test")

    @server.tool()
    def hello(name: str) -> str:
        """Say hello."""
        return f"Hello, {name}!"

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    return server


@asynccontextmanager
async def running_mcp_server(*, json_response: bool, allowed_hosts: list[str] | None) -> AsyncIterator[int]:
    """Yield the port of a running server.

    DNS-rebinding protection stays on: with `allowed_hosts` it accepts those Host values, without
    it the SDK's own loopback default applies (only its own address is accepted).
    """
    security = (
        TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=allowed_hosts)
        if allowed_hosts is not None
        else None
    )
    app = build_server().streamable_http_app(json_response=json_response, transport_security=security)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        if task.done() or asyncio.get_running_loop().time() > deadline:
            raise RuntimeError("MCP server did not start")
        await asyncio.sleep(0.01)  # polling uvicorn's own started flag, with a deadline
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
