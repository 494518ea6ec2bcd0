"""A local plain-HTTP endpoint that carries every request through the tunnel (`mcp-tunnel connect`).

Each local client connection gets its own tunnel connection (WebSocket + inner TLS), opened on
its first request, so several local clients (an SSE stream beside POSTs) work at once. Requests
go out with `Host` set to the route's host; responses stream back chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httptools

from mcp_tunnel.client.tunnel_client import TunnelClient, TunnelConnection
from mcp_tunnel.errors import BadRequest, ProxyError, TunnelClientError, UpstreamUnreachable
from mcp_tunnel.http_rules import HOP_BY_HOP, LAST_CHUNK, chunk, downstream_response_head, error_response
from mcp_tunnel.logs import Logger

_DROP = HOP_BY_HOP | {b"host", b"content-length"}


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "target")

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.keep_alive = True


class _LocalParser:
    """httptools callbacks collecting whole local requests (MCP request bodies are small)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.ready: list[_Request] = []
        self._cur = _Request()

    def on_message_begin(self) -> None:
        self._cur = _Request()

    def on_url(self, url: bytes) -> None:
        self._cur.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._cur.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._cur.method = self.parser.get_method().decode("latin-1")
        self._cur.keep_alive = bool(self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self._cur.body += body

    def on_message_complete(self) -> None:
        self.ready.append(self._cur)


class LocalEndpoint:
    def __init__(self, client: TunnelClient, route_host: str, log: Logger) -> None:
        self.client = client
        self.route_host = route_host
        self.log = log
        self.server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn: TunnelConnection | None = None
        parser = _LocalParser()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    parser.parser.feed_data(data)
                except httptools.HttpParserError:
                    await self._answer_error(writer, BadRequest(body="Bad request: malformed HTTP request"))
                    break
                while parser.ready:
                    req = parser.ready.pop(0)
                    if conn is None or conn.closed:
                        conn = await self._connect(writer, req)
                        if conn is None:
                            break
                    if not await self._forward(conn, req, writer) or not req.keep_alive:
                        return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            writer.close()
            self._handlers.discard(task)

    async def _connect(self, writer: asyncio.StreamWriter, req: _Request) -> TunnelConnection | None:
        try:
            return await self.client.connect(self.route_host.split(":")[0])
        except TunnelClientError as exc:
            reason = f"tunnel {exc.stage} failed: {exc}"
            self.log.warn("cannot reach the tunnel", stage=exc.stage, error=str(exc))
            await self._answer_error(writer, UpstreamUnreachable(reason, body=reason), keep_alive=False)
            return None

    async def _forward(self, conn: TunnelConnection, req: _Request, writer: asyncio.StreamWriter) -> bool:
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in req.headers if n not in _DROP]
        target = req.target.decode("latin-1")
        self.log.info("request started", method=req.method, path=target.split("?", 1)[0])
        try:
            resp = await conn.request(
                req.method,
                target,
                host=self.route_host,
                headers=headers,
                body=bytes(req.body) if req.body else None,
            )
        except TunnelClientError as exc:
            reason = f"tunnel {exc.stage} failed: {exc}"
            self.log.warn("request through the tunnel failed", stage=exc.stage, error=str(exc))
            await self._answer_error(writer, UpstreamUnreachable(reason, body=reason), keep_alive=False)
            return False
        framing = downstream_response_head(
            resp.status,
            resp.reason.encode("latin-1"),
            [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers],
            request_method=req.method,
            keep_alive=req.keep_alive,
        )
        writer.write(framing.head)
        try:
            async for piece in _pieces(resp.iter_body()):
                writer.write(chunk(piece) if framing.chunked else piece)
                await writer.drain()
        except TunnelClientError as exc:
            self.log.warn("response through the tunnel broke off", error=str(exc))
            return False  # closing without the last chunk shows the client the truncation
        if framing.chunked:
            writer.write(LAST_CHUNK)
        await writer.drain()
        self.log.info("request completed", method=req.method, status=resp.status)
        return True

    async def _answer_error(
        self, writer: asyncio.StreamWriter, err: ProxyError, *, keep_alive: bool = False
    ) -> None:
        writer.write(error_response(err, keep_alive=keep_alive))
        with contextlib.suppress(ConnectionError):
            await writer.drain()


async def _pieces(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for piece in body:
        if piece:
            yield piece
