"""The inner HTTP/1.1 connection inside one tunnel's TLS session.

httptools (llhttp) parses requests; `http_rules.validate_request` decides what may be
forwarded; each request becomes an `Exchange`, handed to the forwarder when its head is read
and begun once that read has been parsed (`Forwarder.start`). Requests on one connection are
answered strictly in order (pipelining keeps its order): an exchange is handed to the forwarder
only once the one before it has finished writing.

What a hostile client can make this layer hold is bounded: at most `MAX_PIPELINED` requests
read ahead of their turn (past that, the rest of the read waits unparsed and the tunnel stops
reading), `BODY_HIGH_WATER` of body not yet taken by the upstream, `limits.max_header_bytes` of
head; a body must arrive within `limits.body_timeout`.
"""

from __future__ import annotations

from collections.abc import Callable

import httptools

from mcp_tunnel.config import Limits
from mcp_tunnel.errors import BadRequest, BodyTooLarge, HeadersTooLarge, ProxyError, RequestTimeout
from mcp_tunnel.http_rules import validate_request
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.exchange import Connection, Exchange, Tunnel
from mcp_tunnel.proxy.flow import (
    BODY_HIGH_WATER,
    DEADLINE_BODY,
    DEADLINE_HEADER,
    DEADLINE_IDLE,
    FEED_SLICE,
    MAX_PIPELINED,
    READ_BODY,
    READ_PIPELINE,
)
from mcp_tunnel.proxy.forward import Forwarder


class _StopParsing(Exception):
    """Raised from a parser callback once the rest of the read must not be parsed."""


class HTTPContext:
    """What the inner HTTP layer needs of the running proxy, and nothing more.

    server.py builds one and keeps it current: `limits` on a reload (a connection keeps the
    limits it started with), `draining` once the proxy drains.
    """

    __slots__ = ("draining", "forwarder", "limits", "log", "on_idle")

    def __init__(
        self, log: Logger, limits: Limits, forwarder: Forwarder, on_idle: Callable[[], object]
    ) -> None:
        self.log = log
        self.limits = limits
        self.forwarder = forwarder
        self.on_idle = on_idle  # a connection has nothing in flight any more (the drain waits on it)
        self.draining = False

    def exchange_idle(self, tunnel: Tunnel) -> None:
        if self.draining:
            tunnel.close_gracefully()
        self.on_idle()


class InnerHTTP(Connection):
    """Parses inner requests and runs their exchanges in order."""

    __slots__ = (
        "_begin_now",
        "_body_timed",
        "_eof_held",
        "_feeding",
        "_head_begun_now",
        "_head_fed",
        "_header_bytes",
        "_headers",
        "_held",
        "_read_paused",
        "_too_large",
        "_url",
        "aborted",
        "ctx",
        "current",
        "exchanges",
        "limits",
        "parser",
        "peer_done",
        "tunnel",
    )

    def __init__(self, ctx: HTTPContext, tunnel: Tunnel) -> None:
        self.ctx = ctx
        self.tunnel = tunnel
        self.limits = ctx.limits  # kept for the connection's life, across reloads
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
        self._body_timed = False  # the tunnel's deadline is the current body's
        self._held = b""  # the rest of a read, waiting while MAX_PIPELINED requests wait their turn
        # Bytes fed while a head stays open, after the read it began in: httptools keeps a header
        # value until its line ends, so the completed-header count alone would never see one
        # that does not end.
        self._head_fed = 0
        self._head_begun_now = False
        self._eof_held = False  # the peer's close_notify came behind `_held`
        self._feeding = False  # inside `feed`: an exchange handed over may wait for its end
        self._begin_now: Exchange | None = None  # begun once this read is handled (`read_done`)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._arm_idle()

    def feed(self, data: bytes) -> None:
        """Parse plaintext of the tunnel's current read; the tunnel calls `read_done` after it."""
        self._feeding = True
        try:
            self._feed(data)
        finally:
            self._feeding = False

    def read_done(self) -> None:
        """The tunnel's read is wholly handled: an exchange it completed on a quiet proxy begins.

        On a quiet proxy (no other exchange waiting for its upstream) the exchange is written
        upstream as soon as the read is handled, by then its body is whole if it came in the
        same read, and a close or error later in that read has already cut it; otherwise it
        waits in the loop's ready queue (`Forwarder.start`), so that under load the reads of
        all ready tunnels are parsed before the upstream writes begin.
        """
        ex = self._begin_now
        if ex is not None:
            self._begin_now = None
            self.ctx.forwarder.begin(self.tunnel, self, ex)

    def _feed(self, data: bytes) -> None:
        if self.peer_done:
            return
        if self._held:  # more of the same read: it goes behind what waits
            self._held += data
            return
        # A long read in pieces: many small pipelined requests must not become that many
        # exchanges at once. The usual read is parsed whole, in one go.
        start, end = 0, len(data)
        while start < end:
            if len(self.exchanges) >= MAX_PIPELINED:
                self._held = data[start:]
                self.tunnel.pause_reading(READ_PIPELINE)
                return
            self._parse(data if end <= FEED_SLICE else data[start : start + FEED_SLICE])
            if self.peer_done:
                return
            start += FEED_SLICE

    def _feed_held(self) -> None:
        """Parse what waited for the queue of requests to shrink; read again once it is gone."""
        data, self._held = self._held, b""
        self.feed(data)
        self.read_done()
        if not self._held:
            self.tunnel.resume_reading(READ_PIPELINE)
            if self._eof_held:
                self._eof_held = False
                self.peer_closed()

    def _parse(self, data: bytes) -> None:
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
                self._parse(data[offset:])
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _StopParsing):
                self._parse_error(exc)
        else:
            ex = self.current
            if ex is not None and not ex.begun():  # a head still open after this read
                if self._head_begun_now:
                    self._head_begun_now = False  # its completed parts are counted by the callbacks
                    return
                self._head_fed += len(data)
                if self._head_fed > self.limits.max_header_bytes:
                    self._too_large = True
                    self._parse_error(HeadersTooLarge("request headers over the size limit"))
                    self.parser = None  # and what httptools held of the head with it

    def peer_closed(self) -> None:
        """The client sent close_notify: finish what is in flight, then close."""
        if self._held:
            self._eof_held = True  # after the requests still waiting to be parsed
            return
        self.peer_done = True
        if not self.exchanges:
            self.tunnel.close_gracefully()

    def abort(self, reason: str) -> None:
        """The tunnel is gone or broken: cancel every upstream exchange at once."""
        self.peer_done = True
        self.aborted = reason
        self._held = b""
        parked, self._begin_now = self._begin_now, None
        if parked is not None:  # its read never reached `read_done`: it begins, and so ends cancelled
            self.ctx.forwarder.start(self.tunnel, self, parked)
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
        self._head_fed = 0
        self._head_begun_now = True
        ex = Exchange()
        self.current = ex
        self.exchanges.append(ex)
        if len(self.exchanges) == 1:
            self.tunnel.set_timer(self.limits.header_timeout, DEADLINE_HEADER)

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
            if ex.head.has_body:  # until its last byte, the body's deadline is the tunnel's
                self._body_timed = True
                self.tunnel.set_timer(self.limits.body_timeout, DEADLINE_BODY)
        self._hand_over(ex)

    def on_body(self, body: bytes) -> None:
        ex = self.current
        if ex is None or ex.error is not None or ex.body.failed:
            return
        ex.body_bytes += len(body)
        limit = self.limits.max_body_bytes
        if limit and ex.body_bytes > limit:
            self._fail_body(ex, BodyTooLarge("request body over the limit"))
            raise _StopParsing  # the rest of this read is never parsed
        ex.body.feed(body)
        if ex.body.buffered > BODY_HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self.tunnel.pause_reading(READ_BODY)

    def on_message_complete(self) -> None:
        ex = self.current
        if ex is not None:
            ex.body.end()
            if self._body_timed:
                self._body_timed = False
                if not ex.finished:  # once finished, the exchange's end set the next deadline
                    self.tunnel.cancel_timer()
        self.current = None

    def _hand_over(self, ex: Exchange) -> None:
        """Give a judged exchange to the forwarder once it is its turn (see `exchange_done`)."""
        if self.exchanges and self.exchanges[0] is ex and not ex.handed:
            ex.handed = True
            forwarder = self.ctx.forwarder
            if self._feeding and self._begin_now is None and forwarder.quiet():
                self._begin_now = ex  # once the tunnel's read is handled (`read_done`)
            else:
                forwarder.start(self.tunnel, self, ex)

    def _fail_body(self, ex: Exchange, error: ProxyError) -> None:
        """A body that cannot be forwarded whole: its exchange is answered `error` (or cut, once
        its answer has begun), nothing more of it goes upstream, and the tunnel closes after."""
        self.ctx.log.info("request body refused", peer=self.tunnel.peer, reason=error.reason)
        ex.body.fail(error)
        ex.close_after = True
        self.peer_done = True  # stop parsing: what follows the body cannot be trusted
        self._held = b""
        self.current = None

    # --- errors and timers --------------------------------------------------------------

    def _parse_error(self, exc: Exception) -> None:
        """A malformed request: answer it in turn, then close; nothing reaches an upstream."""
        ex = self.current
        if ex is not None and ex.head is not None and not ex.body.done:
            # In the body of a request already judged (a broken chunk): that exchange ends
            # now with 400 (its upstream exchange, if begun, is cut), not a new one after it.
            refused = BadRequest(f"malformed request body: {exc}", body="Bad request: malformed body")
            self._fail_body(ex, refused)
            return
        if ex is None or ex.begun():
            ex = Exchange()
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
        self._held = b""
        self._hand_over(ex)

    def deadline_passed(self, kind: int) -> None:
        """The tunnel's deadline of `kind` (a `flow.DEADLINE_*` this layer set) has passed."""
        if kind == DEADLINE_HEADER:
            self._header_timeout()
        elif kind == DEADLINE_BODY:
            self._body_timeout()
        elif kind == DEADLINE_IDLE:
            self._idle_timeout()

    def _body_timeout(self) -> None:
        self._body_timed = False
        ex = self.current
        if ex is not None and ex.head is not None and not ex.body.done:
            self._fail_body(ex, RequestTimeout("request body not received within limits.body_timeout"))

    def _header_timeout(self) -> None:
        self.ctx.log.info("request header timeout, closing tunnel", peer=self.tunnel.peer)
        self.abort("header timeout")
        self.tunnel.close_gracefully()

    def _arm_idle(self) -> None:
        self.tunnel.set_timer(self.limits.idle_timeout, DEADLINE_IDLE)

    def _idle_timeout(self) -> None:
        self.ctx.log.debug("idle tunnel closed", peer=self.tunnel.peer)
        self.tunnel.close_gracefully()

    # --- called by the forwarder --------------------------------------------------------

    def body_consumed(self) -> None:
        if self._read_paused:
            self._read_paused = False
            self.tunnel.resume_reading(READ_BODY)

    def exchange_done(self, ex: Exchange) -> None:
        ex.finished = True
        exchanges = self.exchanges
        if exchanges and exchanges[0] is ex:
            exchanges.pop(0)
        self.body_consumed()
        if exchanges and exchanges[0].begun():
            self._hand_over(exchanges[0])  # its turn (after a close, it ends as cancelled)
        if self._held and len(exchanges) < MAX_PIPELINED and not ex.close_after:
            self._feed_held()
        if ex.close_after or (self.peer_done and not exchanges):
            self.abort("closing after response")
            self.tunnel.close_gracefully()
        elif not exchanges:
            if self.current is None:
                # Between requests nothing is half-parsed: the parser goes (see __init__), and
                # so do the last request's target and headers, which an idle tunnel would
                # otherwise hold until its next request.
                self.parser = None
                self._url = b""
                self._headers = []
            self._arm_idle()
            self.ctx.exchange_idle(self.tunnel)
        elif self.current is self.exchanges[0] and self.exchanges[0].head is None:
            self.tunnel.set_timer(self.limits.header_timeout, DEADLINE_HEADER)
