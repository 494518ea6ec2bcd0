"""The tunnel client library: what Anthropic's backend does, for tests, tools and the demo.

One `TunnelConnection` is one WebSocket to the proxy carrying one TLS client session (verified
against the tunnel's CA with the route's host as server name), with HTTP/1.1 requests one after
another inside. Knobs exist for the odd shapes tests need (tiny WebSocket messages, raw access).

The connection is an asyncio protocol of its own on a plain TCP connection. websockets'
sans-I/O `ClientProtocol` does the opening handshake only; after the 101, the client side of
`tunnel_session.TunnelSession` (the same session the proxy runs, with the roles swapped: we
mask, we are the TLS client) turns what the proxy sends into plaintext and events and says
what to send back. The plaintext is parsed where it arrives and wakes the waiting request with
one future. No message queue, lock or task per message: that machinery cost the client
~150 us per request over a plain asyncio TLS client, which the benchmark counted as the
proxy's latency. This module only moves bytes, waits and parses HTTP: every WebSocket and TLS
rule, close ordering included, is the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field

import httptools
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.http11 import USER_AGENT
from websockets.protocol import OPEN as WS_OPEN
from websockets.uri import parse_uri

from mcp_tunnel.errors import TunnelClientError
from mcp_tunnel.http_rules import LAST_CHUNK, chunk
from mcp_tunnel.tls_session import TLSHandshakeError, TLSSession
from mcp_tunnel.tunnel_session import (
    CLOSED,
    OPEN,
    Event,
    FrameRefused,
    HandshakeFailed,
    PeerClosed,
    Plaintext,
    StreamError,
    TextRefused,
    TunnelSession,
)

HeaderList = list[tuple[str, str]]

ABNORMAL_CLOSURE = 1006  # what `close_code` says when the connection ended without a close frame
MESSAGE_SIZE = 64 * 1024  # the largest WebSocket message we send unless `max_message` says less
READ_HIGH = 1 << 20  # stop reading the socket while this much plaintext waits for the caller
READ_SIZE = 64 * 1024  # one socket read at most

# The socket is read into one buffer per thread, shared by its connections (what arrives is
# copied out before the next read). asyncio's plain `data_received` path allocates a 256 KiB
# bytes object per read instead: mmap, mremap and munmap on every response.
_read_buffers = threading.local()


def _read_buffer() -> memoryview:
    view: memoryview | None = getattr(_read_buffers, "view", None)
    if view is None:
        view = _read_buffers.view = memoryview(bytearray(READ_SIZE))
    return view


def client_ssl_context(ca_file: str | None = None, *, ca_data: str | None = None) -> ssl.SSLContext:
    """Trust only the tunnel's CA, as Anthropic does; TLS 1.2+, ALPN http/1.1."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if ca_file or ca_data:
        ctx.load_verify_locations(cafile=ca_file, cadata=ca_data)
    return ctx


@dataclass
class Response:
    status: int
    reason: str
    headers: HeaderList
    _conn: TunnelConnection = field(repr=False)
    _reader: _ResponseReader = field(repr=False)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def iter_body(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive (no buffering)."""
        return self._conn._body(self._reader)

    async def read(self) -> bytes:
        return b"".join([p async for p in self.iter_body()])


class _ResponseReader:
    """httptools callbacks for one response; interim (1xx) responses are skipped.

    One read may carry more than the response asked for (the proxy answering pipelined
    requests, records coalesced): the parser cannot stop at a message's end, so the responses
    that follow in the same bytes get readers of their own (`following`), parsed by the first
    one's parser, which the connection hands out in order.
    """

    __slots__ = (
        "body",
        "body_size",
        "complete",
        "current",
        "following",
        "head_only",
        "headers",
        "headers_done",
        "interim",
        "keep_alive",
        "parser",
        "reason",
        "root",
        "status",
    )

    def __init__(self, head_only: bool, parser: httptools.HttpResponseParser | None = None) -> None:
        # Set to None once the response is read: the parser holds our bound callbacks, and
        # without that cut every response would wait for the cyclic GC to be freed.
        self.parser: httptools.HttpResponseParser | None = parser or httptools.HttpResponseParser(self)
        # The reader the parser's callbacks fill now, if not us (not `self`: that would be a cycle).
        self.current: _ResponseReader | None = None
        self.root: _ResponseReader | None = None  # the reader whose callbacks the parser calls, if not us
        self.following: list[_ResponseReader] | None = None  # made since the connection last looked
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.interim = False
        self.keep_alive = True
        self.body: list[bytes] = []
        self.body_size = 0  # bytes in `body`, for read flow control
        self.complete = False
        self.head_only = head_only

    def take_following(self) -> list[_ResponseReader]:
        following = self.following
        self.following = None
        return following or []

    def on_message_begin(self) -> None:
        cur = self.current or self
        if cur.complete:  # the next response, in the same bytes as the end of this one
            cur = self.current = _ResponseReader(False, cur.parser)
            cur.root = self
            if self.following is None:
                self.following = []
            self.following.append(cur)
        cur.reason = b""
        cur.headers = []

    def on_status(self, status: bytes) -> None:
        (self.current or self).reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.current or self).headers.append((name, value))

    def on_headers_complete(self) -> None:
        cur = self.current or self
        parser = cur.parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200:
            cur.interim = True  # 100 Continue, 103 Early Hints: the final answer follows
            return
        cur.status = status
        cur.keep_alive = bool(parser.should_keep_alive())
        cur.headers_done = True
        if cur.head_only or status in (204, 304):
            cur.complete = True

    def on_body(self, body: bytes) -> None:
        cur = self.current or self
        cur.body.append(body)
        cur.body_size += len(body)

    def on_message_complete(self) -> None:
        cur = self.current or self
        if cur.interim:
            cur.interim = False
        else:
            cur.complete = True


class TunnelConnection(asyncio.BufferedProtocol):
    """One WebSocket + one inner TLS session; requests run one after another.

    Everything the proxy sends is handled in `data_received` as it arrives; the coroutines
    (a request, a body being read, `close`) wait on one future that arrival resolves.
    """

    def __init__(
        self, ws: ClientProtocol, tls: TLSSession, *, max_message: int | None, timeout: float
    ) -> None:
        self.tls = tls
        # Every protocol rule after the 101; `max_message` only says how we split what we send.
        self.session = TunnelSession(
            tls, server_side=False, max_message=None, out_message=max_message or MESSAGE_SIZE
        )
        self.max_message = max_message
        self.timeout = timeout
        self.busy = False
        self.close_reason = ""  # the reason in the proxy's close frame
        # `time.perf_counter()` just before the last data message went into the socket and when
        # bytes last came out of it: a request's time on the wire, without this client's own
        # TLS, framing and parsing (the benchmark's latency figures).
        self.last_write_at = 0.0
        self.last_read_at = 0.0
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._buffer = _read_buffer()
        # Opening handshake: websockets sees the bytes up to the end of the response head.
        self._ws: ClientProtocol | None = ws
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._head_tail = b""  # the last bytes seen while looking for the end of the head
        self._head_done = False
        # After the 101.
        self._plain = bytearray()  # decrypted bytes that arrived while no response was read
        self._reader: _ResponseReader | None = None
        self._ready: list[_ResponseReader] = []  # responses that came behind the one asked for
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._error: tuple[str, str] | None = None  # (stage, message): the stream is broken
        self._closing = False  # close() or abort() was called
        self._ended = False  # the proxy's close frame or EOF: nothing more will arrive
        self._lost = False
        self._write_paused = False
        self._read_paused = False

    # --- state -----------------------------------------------------------------------

    @property
    def alpn(self) -> str | None:
        return self.tls.ssl_object.selected_alpn_protocol()

    def peer_certificate_der(self) -> bytes | None:
        return self.tls.ssl_object.getpeercert(binary_form=True)

    @property
    def closed(self) -> bool:
        """True once the connection cannot carry another request (closed by either side)."""
        return self._closing or self._ended or self._error is not None or self.tls.closed_by_peer

    @property
    def close_code(self) -> int | None:
        """The code of the proxy's close frame; 1006 if it ended without one; None while open."""
        code = self.session.close_code
        if code is not None:
            return code
        return ABNORMAL_CLOSURE if self._ended else None

    # --- asyncio.BufferedProtocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        ws = self._ws
        assert ws is not None
        request = ws.connect()
        request.headers["User-Agent"] = USER_AGENT
        ws.send_request(request)
        transport.writelines(ws.data_to_send())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.last_read_at = time.perf_counter()
        self.data_received(self._buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self._ws is not None:
            data = self._opening_data(data)
            if not data:
                return
        if self._ended:
            return
        session = self.session
        plain = session.receive(data)
        if session.events:
            self._events(session.events_received())
        elif plain:
            self._plaintext(plain)
        self._write(session.data_to_send())  # handshake messages, alerts, pongs, our close
        if session.state == CLOSED:  # the proxy's close frame (answered), or broken framing
            self._ended = True
            if self.transport is not None:
                self.transport.close()  # after what we owe it is written
        self._wake()
        if not self._read_paused and not self._ended and self._backlog() > READ_HIGH:
            self._read_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self._ws is not None:
            self._ws.receive_eof()
            self._opening_result(b"")
        self.session.receive_eof()
        self._ended = True
        self._wake()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._ended = True
        self.session.receive_eof()
        if not self._opened.done():
            self._opened.set_exception(
                exc or ConnectionError("connection closed during the WebSocket handshake")
            )
        self._ws = None
        self._write_paused = False
        self._wake()
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # --- the opening handshake ------------------------------------------------------------

    def _opening_data(self, data: bytes) -> bytes:
        """Feed websockets the response head; return what follows it once the 101 is in."""
        ws = self._ws
        assert ws is not None
        if self._head_done:  # a refusal's body: websockets reads it to report the status
            ws.receive_data(data)
            return self._opening_result(b"")
        seen = self._head_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head_tail = seen[-3:]
            ws.receive_data(data)  # all of it is head
            return self._opening_result(b"")
        cut = end + 4 - len(self._head_tail)  # how much of `data` is head
        self._head_done = True
        self._head_tail = b""
        ws.receive_data(data[:cut])
        rest = data[cut:]
        if ws.state is WS_OPEN or ws.handshake_exc is not None:
            return self._opening_result(rest)
        ws.receive_data(rest)  # not a 101: the rest is the refusal's body
        return self._opening_result(b"")

    def _opening_result(self, rest: bytes) -> bytes:
        """Settle the handshake if websockets has decided; `rest` goes on to the frame parser."""
        ws = self._ws
        assert ws is not None
        ws.events_received()
        ws.data_to_send()  # only ever the EOF it wants after a failure: we close instead
        exc = ws.handshake_exc
        if exc is not None:
            self._ws = None
            if not self._opened.done():
                self._opened.set_exception(exc)
            if self.transport is not None:
                self.transport.close()
            return b""
        if ws.state is WS_OPEN:
            self._ws = None
            if not self._opened.done():
                self._opened.set_result(None)
            return rest
        return b""

    # --- what the proxy sends ---------------------------------------------------------

    def _events(self, events: list[Event]) -> None:
        """What the session reported for one read, in order."""
        for event in events:
            if isinstance(event, Plaintext):
                self._plaintext(event.data)
            elif isinstance(event, PeerClosed):
                self.close_reason = event.reason
            elif isinstance(event, HandshakeFailed):  # our alert told the proxy why (unknown ca)
                self._set_error("tls", event.reason)
            elif isinstance(event, StreamError):
                self._set_error("tls", f"TLS error: {event.error}")
            elif isinstance(event, TextRefused):
                self._set_error("websocket", "proxy sent a text message")
            elif isinstance(event, FrameRefused):
                what = "sent an invalid close frame" if event.in_close else "broke the WebSocket framing"
                self._set_error("websocket", f"proxy {what}: {event.reason}")
            # HandshakeDone, TLSClosed: read from the TLS session's state where they matter

    def _set_error(self, stage: str, message: str) -> None:
        if self._error is None:
            self._error = (stage, message)

    def _plaintext(self, plain: bytes) -> None:
        if self._error is not None:
            return  # the stream is broken: nothing after the break is trusted
        reader = self._reader
        if reader is None or reader.parser is None or reader.complete or self._plain:
            self._plain += plain
            return
        self._parse(reader, plain)

    def _parse(self, reader: _ResponseReader, data: bytes) -> None:
        parser = reader.parser
        assert parser is not None
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._error = ("http", f"invalid HTTP response: {exc}")
        # The callbacks go to the reader that made the parser; it lists the responses that followed.
        root = reader.root or reader
        if root.following:
            self._ready += root.take_following()

    def _backlog(self) -> int:
        reader = self._reader
        return len(self._plain) + (reader.body_size if reader is not None else 0)

    def _resume_reading(self) -> None:
        if self._read_paused and self._backlog() <= READ_HIGH // 4:
            self._read_paused = False
            if self.transport is not None and not self._ended:
                self.transport.resume_reading()

    # --- waiting ------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        """Until the proxy sends something (or the connection ends)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            # Another task sharing this future was cancelled: for us a spurious wake-up.

    def _raise_error(self) -> None:
        if self._error is not None:
            raise TunnelClientError(*self._error)

    async def _recv(self) -> bool:
        """Wait for what the proxy sends next; False once the stream has ended."""
        self._raise_error()
        if self._ended:
            return False
        if self._read_paused:
            self._read_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        await self._wait()
        self._raise_error()
        return not self._ended

    # --- what we send -------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def _sendable(self) -> asyncio.Transport:
        """The transport, if data may still go out; raises once either side closed."""
        transport = self.transport
        if transport is None or self.session.state != OPEN or self._ended or transport.is_closing():
            raise TunnelClientError("websocket", "websocket closed while sending")
        return transport

    async def _drain(self) -> None:
        while self._write_paused:
            waiter = self._drain_waiter
            if waiter is None or waiter.done():
                waiter = self._drain_waiter = self._loop.create_future()
            await asyncio.shield(waiter)
        if self._lost:
            raise TunnelClientError("websocket", "websocket closed while sending")

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _send(self, data: bytes) -> None:
        """Write what the session made (timed for the benchmark); wait while the proxy is behind."""
        transport = self._sendable()
        if data:
            self.last_write_at = time.perf_counter()
            transport.write(data)
            if self._write_paused:
                await self._drain()

    async def send_message(self, data: bytes) -> None:
        """`data` (ciphertext) as one binary WebSocket message, whatever `max_message` says."""
        self._sendable()
        await self._send(self.session.send_message(data))

    async def handshake(self) -> None:
        try:
            self.session.start_handshake()
        except TLSHandshakeError as exc:
            raise TunnelClientError("tls", exc.reason) from None
        await self._send(self.session.data_to_send())
        while not self.tls.handshake_done:
            self._raise_error()
            if self._ended:
                raise TunnelClientError("tls", "proxy closed the connection during the handshake")
            await self._wait()

    async def send_raw(self, plaintext: bytes) -> None:
        """Write plaintext bytes into the TLS stream as they are (tests use this for bad requests)."""
        self._sendable()
        await self._send(self.session.send_plain(plaintext))

    # --- HTTP ------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        target: str,
        *,
        host: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | AsyncIterable[bytes] | None = None,
        head_timeout: float | None = -1.0,
    ) -> Response:
        """Send one request and return once the response head has arrived.

        `head_timeout` bounds sending and waiting for the head: negative means the client's
        `timeout`, None means no bound (a tool call may take minutes before its first byte).
        """
        limit = self.timeout if head_timeout is not None and head_timeout < 0 else head_timeout
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() != "host"]
        streaming = body is not None and not isinstance(body, bytes)
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}")
        elif streaming:
            lines.append("Transfer-Encoding: chunked")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.busy = True
        try:
            async with asyncio.timeout(limit):
                if isinstance(body, bytes):
                    await self.send_raw(head + body)
                elif body is not None:
                    await self.send_raw(head)
                    async for piece in body:
                        if piece:
                            await self.send_raw(chunk(piece))
                    await self.send_raw(LAST_CHUNK)
                else:
                    await self.send_raw(head)
                return await self.read_response(head_only=method == "HEAD")
        except TimeoutError:
            raise TunnelClientError("timeout", f"no response within {limit:g}s") from None

    async def read_response(self, *, head_only: bool = False) -> Response:
        if self._ready:  # it came already, behind the previous response
            reader = self._ready.pop(0)
            reader.head_only = head_only
            if head_only and reader.headers_done:
                reader.complete = True
        else:
            reader = _ResponseReader(head_only)
        self._reader = reader
        if self._plain and not reader.complete:
            data = bytes(self._plain)
            self._plain.clear()
            self._parse(reader, data)
            self._resume_reading()
        while not reader.headers_done:
            self._raise_error()
            if self._ended or self.tls.closed_by_peer:
                raise TunnelClientError("http", "connection closed before a response arrived")
            await self._wait()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in reader.headers]
        return Response(reader.status, reader.reason.decode("latin-1"), headers, self, reader)

    async def _body(self, reader: _ResponseReader) -> AsyncIterator[bytes]:
        while True:
            if reader.body:
                pieces = reader.body
                reader.body = []
                reader.body_size = 0
                if self._read_paused:
                    self._resume_reading()
                for piece in pieces:
                    yield piece
                continue
            if reader.complete:
                reader.parser = None
                reader.root = None
                break
            self._raise_error()
            if self.tls.closed_by_peer:
                raise TunnelClientError("http", "proxy closed the connection before the response body ended")
            if self._ended:
                raise TunnelClientError("http", "connection closed before the response body ended")
            await self._wait()
        if self._reader is reader:
            self._reader = None
        self.busy = False
        if not reader.keep_alive:
            await self.close()

    # --- the end --------------------------------------------------------------------------

    async def close(self) -> None:
        """TLS close_notify, then WebSocket close 1000; waits (at most `timeout`) for the proxy's
        close frame or EOF."""
        if self._closing:
            return
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        try:
            if not self._ended:
                self.session.close_gracefully()
                self._write(self.session.data_to_send())
                if self._write_paused:
                    with contextlib.suppress(TunnelClientError, TimeoutError):
                        async with asyncio.timeout(self.timeout):
                            await self._drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.timeout):
                        while not self._ended:
                            await self._wait()
        finally:
            self._ended = True
            transport.close()

    def abort(self) -> None:
        """Drop the TCP connection at once: no close_notify, no close frame."""
        self._closing = True
        self._ended = True
        if self.transport is not None:
            self.transport.abort()


class TunnelClient:
    """Opens tunnel connections to one proxy."""

    def __init__(
        self,
        proxy_url: str,
        ssl_context: ssl.SSLContext,
        *,
        timeout: float = 30.0,
        max_message: int | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.proxy_url = proxy_url
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.max_message = max_message
        self.server_hostname = server_hostname

    async def connect(self, host: str) -> TunnelConnection:
        """A verified inner TLS session for `host` (its name is the SNI and the name checked)."""
        url = self.proxy_url
        try:
            uri = parse_uri(url)
        except InvalidURI as exc:
            raise TunnelClientError("websocket", f"{url}: {exc}") from None
        tls = TLSSession(self.ssl_context, server_side=False, server_hostname=self.server_hostname or host)
        conn = TunnelConnection(
            ClientProtocol(uri, max_size=None), tls, max_message=self.max_message, timeout=self.timeout
        )
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                await loop.create_connection(
                    lambda: conn,
                    uri.host,
                    uri.port,
                    ssl=ssl.create_default_context() if uri.secure else None,
                    server_hostname=uri.host if uri.secure else None,
                )
                await conn._opened
        except TimeoutError:
            conn.abort()
            raise TunnelClientError(
                "timeout", f"no WebSocket connection to {url} within {self.timeout:g}s"
            ) from None
        except InvalidStatus as exc:
            conn.abort()
            raise TunnelClientError("websocket", f"{url} answered HTTP {exc.response.status_code}") from None
        except (OSError, InvalidHandshake) as exc:
            conn.abort()
            raise TunnelClientError("websocket", f"{url}: {exc}") from None
        except BaseException:  # cancelled while connecting: no socket may outlive the caller
            conn.abort()
            raise
        try:
            async with asyncio.timeout(self.timeout):
                await conn.handshake()
        except TimeoutError:
            conn.abort()
            raise TunnelClientError("timeout", f"TLS handshake with {host} timed out") from None
        except TunnelClientError:
            await conn.close()
            raise
        except BaseException:  # cancelled: awaiting a polite close could hang the cancel
            conn.abort()
            raise
        return conn
