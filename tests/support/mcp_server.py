"""The product's sample MCP server (official SDK, streamable HTTP) served by uvicorn on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from mcp_tunnel.sample_server import build_app


@asynccontextmanager
async def running_mcp_server(*, json_response: bool, allowed_hosts: list[str] | None) -> AsyncIterator[int]:
    """Yield the port of a running server.

    DNS-rebinding protection stays on: with `allowed_hosts` it accepts those Host values, without
    it the SDK's own loopback default applies (only its own address is accepted).
    """
    app = build_app(json_response=json_response, allowed_hosts=allowed_hosts)
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
