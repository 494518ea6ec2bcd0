"""What a listening asyncio server is bound to, for logs, tests and the admin endpoint."""

from __future__ import annotations

import asyncio


def bound_address(server: asyncio.Server | None) -> str:
    """``host:port`` of the first socket, or ``-`` when not listening."""
    if server is None or not server.sockets:
        return "-"
    host, port = server.sockets[0].getsockname()[:2]
    return f"{host}:{port}"


def bound_port(server: asyncio.Server | None) -> int:
    assert server is not None and server.sockets, "not listening"
    return int(server.sockets[0].getsockname()[1])
