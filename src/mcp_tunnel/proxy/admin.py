"""`admin_addr`: /healthz, /readyz and /metrics on a listener of their own (SPEC §6).

A few lines of HTTP/1.1 on asyncio streams rather than a framework: three read-only GET pages,
one request per connection (`Connection: close`), bounded header size and read time so a
stuck scraper cannot pile up connections. It is never served on `listen_addr`: the tunnel
listener only speaks WebSocket, and these pages are for the private network.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from mcp_tunnel.proxy.listeners import bound_address, bound_port

MAX_REQUEST_HEAD = 8192
READ_TIMEOUT = 5.0
TEXT = "text/plain; charset=utf-8"

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class AdminServer:
    """Serves the proxy's health and metrics.

    It knows what it serves by two callbacks only: `readiness` (why /readyz is 503, or None) and
    `metrics` (the exposition text, with whatever counts wait for the log's flush counted). They
    are coroutines so one server serves both a proxy (answered at once) and the supervisor of
    `workers: N` (which asks every worker first).
    """

    def __init__(
        self,
        *,
        readiness: Callable[[], Awaitable[str | None]],
        metrics: Callable[[], Awaitable[bytes]],
    ) -> None:
        self.readiness = readiness
        self.metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self, host: str | None, port: int) -> None:
        self._server = await asyncio.start_server(
            self._serve, host, port, reuse_address=True, limit=MAX_REQUEST_HEAD
        )

    @property
    def address(self) -> str:
        return bound_address(self._server)

    @property
    def port(self) -> int:
        return bound_port(self._server)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request; the routing of the admin pages."""
        if path not in ("/healthz", "/readyz", "/metrics"):
            return 404, TEXT, b"not found: try /healthz, /readyz or /metrics\n"
        if method not in ("GET", "HEAD"):
            return 405, TEXT, b"only GET and HEAD\n"
        if path == "/healthz":
            return 200, TEXT, b"ok\n"
        if path == "/readyz":
            problem = await self.readiness()
            if problem is None:
                return 200, TEXT, b"ready\n"
            return 503, TEXT, f"not ready: {problem}\n".encode()
        return 200, CONTENT_TYPE_LATEST, await self.metrics()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            status, ctype, body, method = 400, TEXT, b"bad request\n", "GET"
        else:
            method = parts[0].decode("latin-1")
            path = parts[1].decode("latin-1").split("?", 1)[0]
            status, ctype, body = await self.answer(method, path)
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if method != "HEAD":
            data += body
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        writer.close()
