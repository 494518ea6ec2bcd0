"""The inner HTTP/1.1 connection inside one tunnel's TLS session.

httptools (llhttp) parses requests; `http_rules.validate_request` decides what may be
forwarded; each request becomes an `Exchange`, handed to the forwarder when its head is read
and begun once that read has been parsed (`Forwarder.start`). Requests on one connection are
answered strictly in order (pipelining keeps its order): each exchange waits for the one before
it to finish writing.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import TYPE_CHECKING, Any

import httptools

from mcp_tunnel.errors import BadRequest, BodyTooLarge, HeadersTooLarge, ProxyError
from mcp_tunnel.http_rules import RequestHead, validate_request

if TYPE_CHECKING:
    from mcp_tunnel.proxy.server import ProxyServer
    from mcp_tunnel.proxy.tunnel import TunnelProtocol

BODY_HIGH_WATER = 1 << 20  # pause reading the tunnel when this much request body waits


class BodyStream:
    """Request body chunks on their way from the tunnel to the upstream."""

    __slots__ = ("_chunks", "_waiter", "buffered", "done", "failed")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self.buffered = 0
        self.done = False
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.buffered += len(chunk)
        if self._waiter is not None:
            self._wake()

    def end(self) -> None:
        self.done = True
        if self._waiter is not None:
            self._wake()

    def fail(self) -> None:
        self.failed = True
        self.done = True
        self._wake()

    def complete_now(self) -> bytes | None:
        """The whole body, if it has already arrived (the common small-request case)."""
        if not self.done or self.failed:
            return None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.buffered = 0
        return data

    async def read(self) -> bytes | None:
        """Next chunk, or None at the end of the body."""
        while not self._chunks:
            if self.done:
                if self.failed:
                    raise ConnectionResetError("request body aborted")
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        chunk = self._chunks.pop(0)
        self.buffered -= len(chunk)
        return chunk

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._waiter = None


class Exchange:
    """One request and its response."""

    __slots__ = (
        "body",
        "body_bytes",
        "close_after",
        "error",
        "finished",
        "head",
        "logged_start",
        "next_waiting",
        "prev",
        "reason",
        "response_bytes",
        "response_started",
        "route_key",
        "running",
        "started",
        "status",
    )

    def __init__(self, prev: Exchange | None) -> None:
        self.prev = prev
        self.head: RequestHead | None = None
        self.error: ProxyError | None = None
        self.body = BodyStream()
        self.body_bytes = 0
        self.finished = False
        self.logged_start = False  # the "request started" line is out
        self.close_after = False
        self.response_started = False
        self.response_bytes = 0
        self.status = 0
        self.reason = ""  # why the proxy answered or cut it itself, for the completion line
        self.route_key = "-"
        self.started = perf_counter()
        # Its task, or for one begun without a task its response's future: what `abort` cancels.
        self.running: asyncio.Future[Any] | None = None
        self.next_waiting: asyncio.Future[None] | None = None  # the next exchange, until we finish

    def begun(self) -> bool:
        """Its head has been read (and judged): it is answered in turn, whatever follows."""
        return self.head is not None or self.error is not None


class InnerHTTP:
    """Parses inner requests and runs their exchanges in order."""

    __slots__ = (
        "_header_bytes",
        "_headers",
        "_read_paused",
        "_too_large",
        "_url",
        "aborted",
        "current",
        "exchanges",
        "limits",
        "parser",
        "peer_done",
        "server",
        "tunnel",
    )

    def __init__(self, server: ProxyServer, tunnel: TunnelProtocol) -> None:
        self.server = server
        self.tunnel = tunnel
        self.limits = server.limits
        # Made when request bytes arrive and let go whenever the connection is idle: ~0.9 KB
        # (the parser and its bound callbacks) on every idle tunnel, ~0.3 us to make again.
        self.parser: httptools.HttpRequestParser | None = None
        # A list, not a deque: it rarely holds more than one, and an empty deque costs ~600 bytes
        # on every idle tunnel.
        self.exchanges: list[Exchange] = []
        self.current: Exchange | None = None  # the one being parsed
        self.peer_done = False
        self.aborted = ""  # why `abort` cut the tunnel; an exchange not yet begun ends with it
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._too_large = False
        self._read_paused = False

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._arm_idle()

    def feed(self, data: bytes) -> None:
        if self.peer_done:
            return
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # Upgrade is hop-by-hop and dropped: answer the request itself, and parse what
            # follows the head as the next request.
            offset = int(upgrade.args[0]) if upgrade.args else len(data)
            self.on_message_complete()
            self.parser = httptools.HttpRequestParser(self)
            if offset < len(data):
                self.feed(data[offset:])
        except httptools.HttpParserError as exc:
            self._parse_error(exc)

    def peer_closed(self) -> None:
        """The client sent close_notify: finish what is in flight, then close."""
        self.peer_done = True
        if not self.exchanges:
            self.tunnel.close_gracefully()

    def abort(self, reason: str) -> None:
        """The tunnel is gone or broken: cancel every upstream exchange at once."""
        self.peer_done = True
        self.aborted = reason
        for ex in self.exchanges:
            ex.body.fail()
            if ex.running is not None and not ex.running.done():
                ex.running.cancel(reason)

    # --- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._too_large = False
        ex = Exchange(self.exchanges[-1] if self.exchanges else None)
        self.current = ex
        self.exchanges.append(ex)
        if len(self.exchanges) == 1:
            self.tunnel.set_timer(self.limits.header_timeout, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        size = self._header_bytes + len(name) + len(value) + 4  # `_count`, inlined: every header
        self._header_bytes = size
        if size > self.limits.max_header_bytes:
            self._too_large = True
            raise HeadersTooLarge("request headers over the size limit")

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes:
            self._too_large = True
            raise HeadersTooLarge("request headers over the size limit")

    def on_headers_complete(self) -> None:
        ex = self.current
        assert ex is not None
        if self.exchanges and self.exchanges[0] is ex:
            self.tunnel.cancel_timer()
        parser = self.parser
        assert parser is not None
        method = parser.get_method().decode("latin-1")
        try:
            ex.head = validate_request(
                method,
                self._url,
                parser.get_http_version(),
                self._headers,
                keep_alive=parser.should_keep_alive(),
            )
            limit = self.limits.max_body_bytes
            if limit and (ex.head.content_length or 0) > limit:
                raise BodyTooLarge("declared body over the limit")
        except ProxyError as err:
            ex.error = err
            ex.close_after = True
        else:
            ex.close_after = not ex.head.keep_alive
        self.server.forwarder.start(self.tunnel, self, ex)

    def on_body(self, body: bytes) -> None:
        ex = self.current
        if ex is None or ex.error is not None:
            return
        ex.body_bytes += len(body)
        limit = self.limits.max_body_bytes
        if limit and ex.body_bytes > limit:
            ex.body.fail()
            return
        ex.body.feed(body)
        if ex.body.buffered > BODY_HIGH_WATER and not self._read_paused:
            self._read_paused = True
            if self.tunnel.transport is not None:
                self.tunnel.transport.pause_reading()

    def on_message_complete(self) -> None:
        ex = self.current
        if ex is not None:
            ex.body.end()
        self.current = None

    # --- errors and timers --------------------------------------------------------------

    def _parse_error(self, exc: Exception) -> None:
        """A malformed request: answer it in turn, then close; nothing reaches an upstream."""
        ex = self.current
        if ex is None or ex.begun():
            ex = Exchange(self.exchanges[-1] if self.exchanges else None)
            self.exchanges.append(ex)
        cause = exc.__context__ or exc
        if self._too_large or isinstance(cause, HeadersTooLarge):
            ex.error = HeadersTooLarge("request headers over the size limit")
        else:
            ex.error = BadRequest(f"malformed request: {exc}", body="Bad request: malformed HTTP request")
        ex.close_after = True
        ex.body.fail()
        self.current = None
        self.peer_done = True  # stop parsing; the connection closes after the answer
        self.server.forwarder.start(self.tunnel, self, ex)

    def _header_timeout(self) -> None:
        self.server.log.info("request header timeout, closing tunnel", peer=self.tunnel.peer)
        self.abort("header timeout")
        self.tunnel.close_gracefully()

    def _arm_idle(self) -> None:
        self.tunnel.set_timer(self.limits.idle_timeout, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self.server.log.debug("idle tunnel closed", peer=self.tunnel.peer)
        self.tunnel.close_gracefully()

    # --- called by the forwarder --------------------------------------------------------

    def body_consumed(self) -> None:
        if self._read_paused and self.tunnel.transport is not None:
            self._read_paused = False
            self.tunnel.transport.resume_reading()

    def exchange_done(self, ex: Exchange) -> None:
        ex.finished = True
        waiting = ex.next_waiting
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
        if self.exchanges and self.exchanges[0] is ex:
            self.exchanges.pop(0)
        self.body_consumed()
        if ex.close_after or (self.peer_done and not self.exchanges):
            self.abort("closing after response")
            self.tunnel.close_gracefully()
        elif not self.exchanges:
            if self.current is None:
                self.parser = None  # between requests, nothing half-parsed: see __init__
            self._arm_idle()
            self.server.exchange_idle(self.tunnel)
        elif self.current is self.exchanges[0] and self.exchanges[0].head is None:
            self.tunnel.set_timer(self.limits.header_timeout, self._header_timeout)
