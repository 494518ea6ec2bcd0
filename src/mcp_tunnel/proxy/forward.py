"""Forwarding one exchange to its upstream and streaming the answer back (SPEC §5).

Bodies stream both ways; each chunk the upstream sends is written to the tunnel at once.
Proxy-made answers (no route, refused address, timeouts) are one line of plain text.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import httptools

from mcp_tunnel.config import Limits, UpstreamSettings
from mcp_tunnel.errors import (
    NoRoute,
    ProxyError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from mcp_tunnel.http_rules import (
    LAST_CHUNK,
    chunk,
    downstream_response_head,
    error_response,
    upstream_request_head,
)
from mcp_tunnel.metrics import refusal_reason
from mcp_tunnel.proxy.upstream import Connector, UpstreamConnection

if TYPE_CHECKING:
    from mcp_tunnel.proxy.http_server import Exchange, InnerHTTP
    from mcp_tunnel.proxy.server import ProxyServer
    from mcp_tunnel.proxy.tunnel import TunnelProtocol
    from mcp_tunnel.routing import Route

READ_SIZE = 65536


class _Truncated(Exception):
    """The upstream broke off mid-body: the client must see a truncation, not a clean end."""


class _StaleConnection(Exception):
    """A reused keep-alive connection that the upstream had already closed."""


class ResponseReader:
    """httptools callbacks for one upstream response."""

    __slots__ = ("body", "complete", "headers", "headers_done", "keep_alive", "parser", "reason", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.keep_alive = False
        self.body: list[bytes] = []
        self.complete = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = bool(self.parser.should_keep_alive())
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class Forwarder:
    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    async def run(self, tunnel: TunnelProtocol, http: InnerHTTP, ex: Exchange) -> None:
        """Answer one exchange, in order, and always report it done."""
        server = self.server
        log = server.log
        try:
            if ex.prev is not None and not ex.prev.finished:
                await _wait_finished(ex.prev)
            head = ex.head
            if log.info_enabled:
                if head is not None:
                    log.info("request started", method=head.method, host=head.host, path=head.path)
                else:  # refused before it could be understood: still one pair of lines
                    log.info("request started", method="-", host="-", path="-")
            if ex.error is not None:
                raise ex.error
            assert head is not None
            if tunnel.sni_host is not None and tunnel.sni_host != head.host:
                server.sni_mismatch(tunnel, head.host)
            # One consistent view of the config for the whole exchange, even across a reload.
            route = server.router.lookup(head.host)
            if route is None:
                log.warn("no route for host", host=head.host)
                raise NoRoute(f"no route for host {head.host}")
            ex.route_key = route.key
            await self._proxy(
                tunnel, http, ex, route, server.connector, server.upstream_settings, server.limits
            )
        except ProxyError as err:
            ex.status = err.status
            ex.reason = err.reason
            reason = refusal_reason(err)
            if reason is not None:
                server.metrics.upstream_failed(ex.route_key, reason)
            if ex.response_started:
                tunnel.close_abruptly()
            else:
                keep = not ex.close_after and ex.body.done and not ex.body.failed and not server.draining
                ex.close_after = ex.close_after or not keep
                data = error_response(err, keep_alive=keep)
                ex.response_bytes = len(data)
                tunnel.send_plain(data)
        except _Truncated:
            ex.reason = "upstream ended the response early"
            ex.close_after = True
            tunnel.close_abruptly()
        except asyncio.CancelledError:
            ex.status = ex.status or 499
            ex.reason = ex.reason or "cancelled: the tunnel closed or the proxy is shutting down"
            raise
        finally:
            self._finish(http, ex)

    def _finish(self, http: InnerHTTP, ex: Exchange) -> None:
        server = self.server
        log = server.log
        seconds = time.perf_counter() - ex.started
        if log.info_enabled:
            head = ex.head
            fields = {
                "method": head.method if head else "-",
                "host": head.host if head else "-",
                "path": head.path if head else "-",
                "status": ex.status,
                "duration_ms": round(seconds * 1000, 3),
                "bytes": ex.response_bytes,
                "route": ex.route_key,
            }
            if ex.reason:
                fields["error"] = ex.reason
            log.log("info", "request completed", fields)
        server.request_finished(ex, seconds)
        http.exchange_done(ex)

    async def _proxy(
        self,
        tunnel: TunnelProtocol,
        http: InnerHTTP,
        ex: Exchange,
        route: Route,
        connector: Connector,
        settings: UpstreamSettings,
        limits: Limits,
    ) -> None:
        head = ex.head
        assert head is not None
        # A body that has fully arrived is sent with the head in one write, and can be sent
        # again if a pooled connection turns out to be stale.
        whole = ex.body.complete_now() if head.has_body else b""
        for attempt in (1, 2):
            conn = await connector.acquire(route)
            try:
                reusable = await self._exchange(tunnel, http, ex, route, conn, whole, settings, limits)
            except _StaleConnection:
                conn.close()
                if attempt == 2:
                    raise UpstreamProtocolError("upstream closed the connection") from None
                continue
            except BaseException:
                conn.close()
                raise
            if reusable:
                connector.release(conn)
            else:
                conn.close()
            return

    async def _exchange(
        self,
        tunnel: TunnelProtocol,
        http: InnerHTTP,
        ex: Exchange,
        route: Route,
        conn: UpstreamConnection,
        whole: bytes | None,
        settings: UpstreamSettings,
        limits: Limits,
    ) -> bool:
        """Send the request, stream the response; True if the connection may be reused."""
        head = ex.head
        assert head is not None
        host_header = route.authority.encode() if settings.host_header == "upstream" else head.raw_host
        out = upstream_request_head(head, host_header=host_header, forwarded_host=head.raw_host)
        writer = conn.writer
        sender: asyncio.Task[None] | None = None
        if whole:
            out += (chunk(whole) + LAST_CHUNK) if head.chunked else whole
        elif whole is not None and head.chunked:
            out += LAST_CHUNK
        writer.write(out)
        if whole is None:
            sender = asyncio.get_running_loop().create_task(self._send_body(http, ex, conn, head.chunked))

        rr = ResponseReader()
        reader = conn.reader
        try:
            try:
                async with asyncio.timeout(limits.upstream_response_timeout):
                    while not rr.headers_done:
                        data = await reader.read(READ_SIZE)
                        if not data:
                            if conn.reused and not rr.status and sender is None:
                                raise _StaleConnection
                            raise UpstreamProtocolError("upstream closed before responding")
                        self._feed(rr, data)
                        if rr.complete and 100 <= rr.status < 200:
                            self._interim(tunnel, rr)
                            rr = ResponseReader()
            except TimeoutError:
                raise UpstreamTimeout("upstream response timeout") from None
            except (ConnectionResetError, BrokenPipeError):
                if conn.reused and sender is None:
                    raise _StaleConnection from None
                raise UpstreamProtocolError("upstream reset the connection") from None

            if self.server.draining:
                ex.close_after = True  # tell the client this connection ends with this response
            framing = downstream_response_head(
                rr.status, rr.reason, rr.headers, request_method=head.method, keep_alive=not ex.close_after
            )
            ex.status = rr.status
            ex.response_started = True
            pending = [framing.head]
            close_delimited = framing.chunked and not any(n == b"transfer-encoding" for n, _ in rr.headers)
            while True:
                if rr.body:
                    for piece in rr.body:
                        ex.response_bytes += len(piece)
                        pending.append(chunk(piece) if framing.chunked else piece)
                    rr.body.clear()
                if rr.complete or not framing.has_body:
                    if framing.chunked:
                        pending.append(LAST_CHUNK)
                    tunnel.send_plain(b"".join(pending))
                    break
                tunnel.send_plain(b"".join(pending))
                pending = []
                await tunnel.drain()
                try:
                    data = await reader.read(READ_SIZE)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                if not data:
                    if close_delimited:
                        rr.complete = True
                        rr.keep_alive = False
                        continue
                    raise _Truncated
                self._feed(rr, data)
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
        body_sent = sender is None or (
            sender.done() and not sender.cancelled() and sender.exception() is None
        )
        return body_sent and rr.complete and rr.keep_alive and head.method != "HEAD" and not reader.at_eof()

    @staticmethod
    def _feed(rr: ResponseReader, data: bytes) -> None:
        try:
            rr.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise UpstreamProtocolError("upstream tried to switch protocols") from None
        except httptools.HttpParserError as exc:
            raise UpstreamProtocolError(f"invalid upstream response: {exc}") from None

    @staticmethod
    def _interim(tunnel: TunnelProtocol, rr: ResponseReader) -> None:
        """Pass a 1xx interim response (100 Continue, 103 Early Hints) straight through."""
        lines = [b"HTTP/1.1 %d " % rr.status + (rr.reason or b"Continue")]
        lines += [n + b": " + v for n, v in rr.headers]
        tunnel.send_plain(b"\r\n".join(lines) + b"\r\n\r\n")

    async def _send_body(
        self, http: InnerHTTP, ex: Exchange, conn: UpstreamConnection, chunked: bool
    ) -> None:
        writer = conn.writer
        while True:
            piece = await ex.body.read()
            http.body_consumed()
            if piece is None:
                if chunked:
                    writer.write(LAST_CHUNK)
                break
            writer.write(chunk(piece) if chunked else piece)
            await writer.drain()
        await writer.drain()


async def _wait_finished(prev: Exchange) -> None:
    task = prev.task
    if task is not None and not task.done():
        await asyncio.wait([task])
