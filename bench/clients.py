"""One small client interface over the four ways in: direct, nginx, nginx+TLS, the tunnel.

Every target gets the same prebuilt request bytes and the same accounting; only the transport
differs. The plain and HTTPS clients are a bare asyncio protocol with httptools (no per-request
objects beyond a future), HTTPS with the same in-memory TLS session (`TLSSession`) the tunnel
client uses; the tunnel client is the product's own `TunnelClient` (an asyncio protocol of its
own: WebSocket frames + the in-memory TLS session), as Anthropic's side would be played in tests.

Each exchange also notes when the request's bytes went into the socket (`sent_at`) and when the
bytes that completed the response came out of it (`arrived_at`): the time on the wire, which
leaves out the client's own TLS, framing and parsing. In production that side is the tunnel
edge, not this Python client, so the latency a proxy adds is measured there (SSE events too).
The client runs in the harness process and competes with the servers for the two cores: the
figures are the servers' own CPU, and ratios measured side by side are the point.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import httptools

from mcp_tunnel.client import TunnelClient, TunnelConnection, client_ssl_context
from mcp_tunnel.tls_session import TLSHandshakeError, TLSSession

Sink = Callable[[bytes, float], None]  # a body piece and when the bytes holding it arrived


class BenchError(Exception):
    """A target answered wrongly or went away: the run stops, naming the target."""


def request_bytes(method: str, path: str, host: str, body: bytes = b"") -> bytes:
    """The exact bytes sent for one request, built once per phase and target."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json, text/event-stream\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("latin-1") + body


class Conn(ABC):
    """One keep-alive connection; exchanges run one after another."""

    sent_at = 0.0  # perf_counter just before the last request's bytes went into the socket
    arrived_at = 0.0  # perf_counter when the bytes completing the last response came out of it

    @abstractmethod
    async def exchange(self, raw: bytes, sink: Sink | None = None) -> int:
        """Send `raw`, read the whole response; return the body size. `sink` sees each piece."""

    @abstractmethod
    async def close(self) -> None:
        """Orderly close (TLS close_notify, WebSocket close where there is one)."""

    @abstractmethod
    def abort(self) -> None:
        """Drop the socket at once (the idle figure's servers are killed, not drained)."""


class Target(ABC):
    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = pid  # the process whose CPU and memory are this target's figures

    @abstractmethod
    async def connect(self) -> Conn: ...

    async def open_connections(self) -> int | None:
        """The server's own count of open connections, where it reports one."""
        return None


# --- plain HTTP and HTTPS ---------------------------------------------------------------


class _HTTPProtocol(asyncio.Protocol):
    """httptools callbacks straight into counters; one future per exchange; TLS in memory."""

    def __init__(self, tls: TLSSession | None) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiter: asyncio.Future[int] | None = None
        self.sink: Sink | None = None
        self.arrived_at = 0.0
        self.size = 0
        self.status = 0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.tls is None:
            self.ready.set_result(None)
            return
        self.tls.start_handshake()
        transport.write(self.tls.outgoing())

    def send(self, raw: bytes) -> float:
        """Write `raw` (encrypted first over TLS); returns when it went into the socket."""
        assert self.transport is not None
        if self.tls is not None:
            self.tls.send(raw)
            raw = self.tls.outgoing()
        sent_at = time.perf_counter()
        self.transport.write(raw)
        return sent_at

    def data_received(self, data: bytes) -> None:
        self.arrived_at = time.perf_counter()
        tls = self.tls
        try:
            if tls is not None:
                data = tls.receive(data)
                out = tls.outgoing()
                if out and self.transport is not None:
                    self.transport.write(out)
                if not tls.handshake_done:
                    return
                if not self.ready.done():
                    self.ready.set_result(None)
            if data:
                self.parser.feed_data(data)
        except TLSHandshakeError as exc:
            self._fail(BenchError(f"TLS handshake failed: {exc.reason}"))
        except ssl.SSLError as exc:
            self._fail(BenchError(f"TLS error: {exc}"))
        except httptools.HttpParserError as exc:
            self._fail(BenchError(f"invalid HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(BenchError("connection closed before the response ended"))

    def _fail(self, exc: Exception) -> None:
        for fut in (self.ready, self.waiter):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.sink is not None:
            self.sink(body, self.arrived_at)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.size)


class HTTPConn(Conn):
    def __init__(self, transport: asyncio.Transport, proto: _HTTPProtocol) -> None:
        self.transport = transport
        self.proto = proto

    async def exchange(self, raw: bytes, sink: Sink | None = None) -> int:
        proto = self.proto
        if proto.lost:
            raise BenchError("connection closed by the server while idle")
        proto.size = 0
        proto.sink = sink
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        proto.waiter = waiter
        self.sent_at = proto.send(raw)
        size = await waiter
        self.arrived_at = proto.arrived_at
        if proto.status != 200:
            raise BenchError(f"HTTP {proto.status}")
        return size

    async def close(self) -> None:
        tls = self.proto.tls
        if tls is not None and not self.transport.is_closing():
            tls.close()
            self.transport.write(tls.outgoing())
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()


class HTTPTarget(Target):
    """Direct to the upstream, or through nginx; `ssl_context` set means HTTPS (nginx TLS)."""

    def __init__(
        self, name: str, pid: int, port: int, *, ssl_context: ssl.SSLContext | None = None, host: str = ""
    ) -> None:
        super().__init__(name, pid)
        self.port = port
        self.ssl_context = ssl_context
        self.host = host

    async def connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        ctx = self.ssl_context

        def protocol() -> _HTTPProtocol:
            tls = None if ctx is None else TLSSession(ctx, server_side=False, server_hostname=self.host)
            return _HTTPProtocol(tls)

        transport, proto = await loop.create_connection(protocol, "127.0.0.1", self.port)
        assert isinstance(transport, asyncio.Transport)
        try:
            await proto.ready
        except BaseException:
            transport.abort()
            raise
        return HTTPConn(transport, proto)


def https_context(ca_file: str) -> ssl.SSLContext:
    """The same client TLS settings as the tunnel's inner session (TLS 1.2+, ALPN http/1.1)."""
    return client_ssl_context(ca_file)


# --- the tunnel ----------------------------------------------------------------------------


class TunnelConn(Conn):
    def __init__(self, conn: TunnelConnection) -> None:
        self.conn = conn

    async def exchange(self, raw: bytes, sink: Sink | None = None) -> int:
        conn = self.conn
        await conn.send_raw(raw)
        self.sent_at = conn.last_write_at
        resp = await conn.read_response()
        if resp.status != 200:
            raise BenchError(f"HTTP {resp.status}")
        size = 0
        async for piece in resp.iter_body():
            size += len(piece)
            if sink is not None:
                sink(piece, conn.last_read_at)
        self.arrived_at = conn.last_read_at
        return size

    async def close(self) -> None:
        await self.conn.close()

    def abort(self) -> None:
        self.conn.abort()


class TunnelTarget(Target):
    """WebSocket + inner TLS to mcp-tunnel's proxy, verified against the bench CA."""

    def __init__(
        self, name: str, pid: int, port: int, *, ca_file: str, host: str, admin_port: int | None = None
    ) -> None:
        super().__init__(name, pid)
        self.client = TunnelClient(f"ws://127.0.0.1:{port}/", client_ssl_context(ca_file), timeout=30.0)
        self.host = host
        self.admin_port = admin_port

    async def connect(self) -> Conn:
        return TunnelConn(await self.client.connect(self.host))

    async def open_connections(self) -> int | None:
        """`mcp_tunnel_tunnels_open` from the admin listener's /metrics (None if not served)."""
        if self.admin_port is None:
            return None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.admin_port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            text = (await reader.read()).decode("latin-1")
            writer.close()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("mcp_tunnel_tunnels_open "):
                return int(float(line.split()[1]))
        return None
