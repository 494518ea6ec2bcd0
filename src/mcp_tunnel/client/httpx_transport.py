"""An httpx2 transport over tunnel connections, so any httpx2-based client (the official MCP
SDK's among them) can speak through the proxy exactly as Anthropic's backend would."""

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
            raise httpx2.ReadError(str(exc)) from None
        self._done = True

    async def aclose(self) -> None:
        if self._done and not self._conn.closed:
            self._transport._release(self._host, self._conn)
        else:
            await self._conn.close()


class TunnelTransport(httpx2.AsyncBaseTransport):
    """Keeps idle tunnel connections per host; a busy one (an open SSE stream) is never shared."""

    def __init__(self, client: TunnelClient) -> None:
        self.client = client
        self._idle: dict[str, list[TunnelConnection]] = {}
        self._all: set[TunnelConnection] = set()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        host = request.url.host
        authority = host if request.url.port is None else f"{host}:{request.url.port}"
        idle = self._idle.get(host)
        conn = idle.pop() if idle else None
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
                await conn.close()
            if exc.stage == "timeout":
                raise httpx2.TimeoutException(str(exc), request=request) from None
            raise httpx2.ConnectError(str(exc), request=request) from None
        return httpx2.Response(
            resp.status,
            headers=resp.headers,
            stream=_BodyStream(self, host, conn, resp),
            request=request,
        )

    def _release(self, host: str, conn: TunnelConnection) -> None:
        self._idle.setdefault(host, []).append(conn)

    async def aclose(self) -> None:
        for conn in list(self._all):
            await conn.close()
        self._all.clear()
        self._idle.clear()
