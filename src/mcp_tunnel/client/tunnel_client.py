"""The tunnel client library: what Anthropic's backend does, for tests, tools and the demo.

One `TunnelConnection` is one WebSocket to the proxy carrying one TLS client session (verified
against the tunnel's CA with the route's host as server name), with HTTP/1.1 requests one after
another inside. Knobs exist for the odd shapes tests need (tiny WebSocket messages, raw access).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field

import httptools
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from mcp_tunnel.errors import TunnelClientError
from mcp_tunnel.http_rules import LAST_CHUNK, chunk
from mcp_tunnel.tls_session import TLSHandshakeError, TLSSession

HeaderList = list[tuple[str, str]]


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

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive (no buffering)."""
        async for piece in self._conn._body(self._reader):
            yield piece

    async def read(self) -> bytes:
        return b"".join([p async for p in self.iter_body()])


class _ResponseReader:
    __slots__ = (
        "body",
        "complete",
        "head_only",
        "headers",
        "headers_done",
        "keep_alive",
        "parser",
        "reason",
        "status",
    )

    def __init__(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.keep_alive = True
        self.body: list[bytes] = []
        self.complete = False
        self.head_only = head_only

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = bool(self.parser.should_keep_alive())
        self.headers_done = True
        if self.head_only or self.status in (204, 304):
            self.complete = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class TunnelConnection:
    """One WebSocket + one inner TLS session; requests run one after another."""

    def __init__(self, ws: ClientConnection, tls: TLSSession, *, max_message: int | None, timeout: float):
        self.ws = ws
        self.tls = tls
        self.max_message = max_message
        self.timeout = timeout
        self._plain = bytearray()  # decrypted bytes not yet given to a parser
        self.busy = False
        self.closed = False

    @property
    def alpn(self) -> str | None:
        return self.tls.ssl_object.selected_alpn_protocol()

    def peer_certificate_der(self) -> bytes | None:
        return self.tls.ssl_object.getpeercert(binary_form=True)

    # --- bytes -----------------------------------------------------------------------

    async def _flush(self) -> None:
        out = self.tls.outgoing()
        if not out:
            return
        step = self.max_message or 64 * 1024
        try:
            for i in range(0, len(out), step):
                await self.ws.send(out[i : i + step])
        except ConnectionClosed as exc:
            raise TunnelClientError("websocket", f"websocket closed while sending: {exc}") from None

    async def _recv(self) -> bool:
        """Read one WebSocket message into the plaintext buffer; False at the end of the stream."""
        try:
            message = await self.ws.recv()
        except ConnectionClosed:
            return False
        if isinstance(message, str):
            raise TunnelClientError("websocket", "proxy sent a text message")
        try:
            self._plain += self.tls.receive(message)
        except TLSHandshakeError as exc:
            await self._flush_quietly()  # our alert tells the proxy why (unknown ca, ...)
            raise TunnelClientError("tls", exc.reason) from None
        except ssl.SSLError as exc:
            raise TunnelClientError("tls", f"TLS error: {exc}") from None
        await self._flush()
        return True

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(TunnelClientError):
            await self._flush()

    async def handshake(self) -> None:
        try:
            self.tls.start_handshake()
        except TLSHandshakeError as exc:
            raise TunnelClientError("tls", exc.reason) from None
        await self._flush()
        while not self.tls.handshake_done:
            if not await self._recv():
                raise TunnelClientError("tls", "proxy closed the connection during the handshake")

    async def send_raw(self, plaintext: bytes) -> None:
        """Write plaintext bytes into the TLS stream as they are (tests use this for bad requests)."""
        self.tls.send(plaintext)
        await self._flush()

    # --- HTTP ------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        target: str,
        *,
        host: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | AsyncIterable[bytes] | None = None,
    ) -> Response:
        """Send one request and return once the response head has arrived."""
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
            async with asyncio.timeout(self.timeout):
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
            raise TunnelClientError("timeout", f"no response within {self.timeout:g}s") from None

    async def read_response(self, *, head_only: bool = False) -> Response:
        reader = _ResponseReader(head_only)
        while True:
            while not reader.headers_done:
                if self._feed_buffered(reader):
                    continue
                if not await self._recv():
                    raise TunnelClientError("http", "connection closed before a response arrived")
            if 100 <= reader.status < 200:
                reader = _ResponseReader(head_only)
                continue
            break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in reader.headers]
        return Response(reader.status, reader.reason.decode("latin-1"), headers, self, reader)

    def _feed_buffered(self, reader: _ResponseReader) -> bool:
        """Give decrypted bytes waiting in the buffer to the parser; False if there were none."""
        if not self._plain:
            return False
        data = bytes(self._plain)
        self._plain.clear()
        self._feed(reader, data)
        return True

    def _feed(self, reader: _ResponseReader, data: bytes) -> None:
        try:
            reader.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise TunnelClientError("http", f"invalid HTTP response: {exc}") from None

    async def _body(self, reader: _ResponseReader) -> AsyncIterator[bytes]:
        while True:
            if reader.body:
                pieces = reader.body[:]
                reader.body.clear()
                for piece in pieces:
                    yield piece
            if reader.complete:
                break
            if self._feed_buffered(reader):
                continue
            if not await self._recv():
                raise TunnelClientError("http", "connection closed before the response body ended")
            if self.tls.closed_by_peer and not self._plain and not reader.complete:
                raise TunnelClientError("http", "proxy closed the connection before the response body ended")
        self.busy = False
        if not reader.keep_alive:
            await self.close()

    async def close(self) -> None:
        """TLS close_notify, then WebSocket close 1000."""
        if self.closed:
            return
        self.closed = True
        try:
            self.tls.close()
            await self._flush()
        except TunnelClientError:
            pass
        await self.ws.close()


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
        try:
            async with asyncio.timeout(self.timeout):
                ws = await connect(
                    self.proxy_url,
                    compression=None,
                    max_size=None,
                    ping_interval=None,
                    open_timeout=self.timeout,
                )
        except TimeoutError:
            raise TunnelClientError(
                "timeout", f"no WebSocket connection to {self.proxy_url} within {self.timeout:g}s"
            ) from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise TunnelClientError("websocket", f"{self.proxy_url} answered HTTP {status}") from None
        except (OSError, InvalidHandshake) as exc:
            raise TunnelClientError("websocket", f"{self.proxy_url}: {exc}") from None
        tls = TLSSession(self.ssl_context, server_side=False, server_hostname=self.server_hostname or host)
        conn = TunnelConnection(ws, tls, max_message=self.max_message, timeout=self.timeout)
        try:
            async with asyncio.timeout(self.timeout):
                await conn.handshake()
        except TimeoutError:
            await ws.close()
            raise TunnelClientError("timeout", f"TLS handshake with {host} timed out") from None
        except BaseException:
            await ws.close()
            raise
        return conn
