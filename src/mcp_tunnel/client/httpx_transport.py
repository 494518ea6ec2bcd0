"""An httpx2 transport over tunnel connections, so any httpx2-based client (the official MCP
SDK's among them) can speak through the proxy exactly as Anthropic's backend would.

A request that ends early (cancelled while connecting, sending, waiting for the head or reading
the body; a body closed before its end) aborts its tunnel at once: with HTTP/1.1 inside, the
only way to stop a response is to drop its connection, and a WebSocket that ends without TLS
close_notify mid-request is what makes the proxy abort the upstream exchange (SPEC §2). With
the 2026-07-28 MCP protocol that abort *is* the cancellation of a tool call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2

from mcp_tunnel.client.tunnel_client import Response, TunnelClient, TunnelConnection
from mcp_tunnel.errors import TunnelClientError


class _BodyStream(httpx2.AsyncByteStream):
    def __init__(self, transport: TunnelTransport, host: str, conn: TunnelConnection, resp: Response) -> None:
        self._transport = transport
        self._host = host
        self._conn = conn
        self._resp = resp
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._resp.iter_body():
                yield piece
        except TunnelClientError as exc:
            self._transport._drop(self._conn)
            raise httpx2.ReadError(str(exc)) from None
        self._done = True

    async def aclose(self) -> None:
        # No await on the way out of a cancel: the abort is synchronous.
        if self._done and not self._conn.closed:
            self._transport._release(self._host, self._conn)
        else:
            self._transport._drop(self._conn)


class TunnelTransport(httpx2.AsyncBaseTransport):
    """Keeps idle tunnel connections per host; a busy one (an open SSE stream) is never shared."""

    def __init__(self, client: TunnelClient) -> None:
        self.client = client
        self._idle: dict[str, list[TunnelConnection]] = {}
        self._all: set[TunnelConnection] = set()

    @property
    def open_connections(self) -> int:
        """Tunnels this transport holds (busy or idle): what a leak would make grow."""
        return len(self._all)

    def _take_idle(self, host: str) -> TunnelConnection | None:
        idle = self._idle.get(host)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self._drop(conn)  # the proxy closed it while it waited (its idle timeout)
        return None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        host = request.url.host
        authority = host if request.url.port is None else f"{host}:{request.url.port}"
        conn = self._take_idle(host)
        try:
            if conn is None:
                conn = await self.client.connect(host)
                self._all.add(conn)
            headers = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in request.headers.raw
                if k.lower() not in (b"host", b"content-length", b"transfer-encoding")
            ]
            body = await request.aread()
            target = request.url.raw_path.decode("latin-1")
            resp = await conn.request(
                request.method, target, host=authority, headers=headers, body=body if body else None
            )
        except TunnelClientError as exc:
            if conn is not None:
                self._drop(conn)
            if exc.stage == "timeout":
                raise httpx2.TimeoutException(str(exc), request=request) from None
            raise httpx2.ConnectError(str(exc), request=request) from None
        except BaseException:  # cancelled at any stage: the tunnel goes with the request
            if conn is not None:
                self._drop(conn)
            raise
        return httpx2.Response(
            resp.status,
            headers=resp.headers,
            stream=_BodyStream(self, host, conn, resp),
            request=request,
        )

    def _release(self, host: str, conn: TunnelConnection) -> None:
        self._idle.setdefault(host, []).append(conn)

    def _drop(self, conn: TunnelConnection) -> None:
        """Abort `conn` (the proxy aborts its upstream exchange) and forget it."""
        conn.abort()
        self._all.discard(conn)
        for idle in self._idle.values():
            if conn in idle:
                idle.remove(conn)

    async def aclose(self) -> None:
        for conn in list(self._all):
            await conn.close()
        self._all.clear()
        self._idle.clear()
