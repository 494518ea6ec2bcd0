"""A local plain-HTTP endpoint that carries every request through the tunnel (`mcp-tunnel connect`).

Requests go out with `Host` set to the route's host; responses stream back chunk by chunk.

- Tunnels are pooled across local connections: a request takes an idle tunnel (WebSocket +
  inner TLS) if there is one, else opens one, and gives it back once its response has ended.
  Clients that open a connection per call then pay no handshake per call. Idle tunnels are
  bounded (`max_idle`) and closed after `idle_timeout`, below the proxy's own idle timeout.
- The local socket is read all the time, also while a response is in flight: a client that
  closes its connection (or only its sending half) is noticed at once, and the tunnel carrying
  its exchange is aborted, so the proxy aborts the upstream request. With the 2026-07-28 MCP
  protocol that is how a client cancels a call; an SSE stream it drops ends upstream too.
- Waiting for a response head is bounded by `response_timeout`, by default the proxy's own
  upstream response timeout (5 minutes), so `connect` never cuts a call the proxy would allow.
- DNS rebinding: a `Host` that is not a loopback name or the listen address, and an `Origin`
  that is not loopback, are refused with 403 (the MCP specification asks local servers to check
  `Origin`). Request bodies are bounded (413).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit

import httptools

from mcp_tunnel.client.tunnel_client import TunnelClient, TunnelConnection
from mcp_tunnel.config import Limits
from mcp_tunnel.errors import (
    BadRequest,
    BodyTooLarge,
    Forbidden,
    HeadersTooLarge,
    ProxyError,
    TunnelClientError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from mcp_tunnel.http_rules import HOP_BY_HOP, LAST_CHUNK, chunk, downstream_response_head, error_response
from mcp_tunnel.logs import Logger
from mcp_tunnel.routing import normalize_host

_DROP = HOP_BY_HOP | {b"host", b"content-length"}

# The proxy's default wait for an upstream's response head: `connect` must not be stricter.
DEFAULT_RESPONSE_TIMEOUT = Limits().upstream_response_timeout
DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_MAX_IDLE = 8
DEFAULT_IDLE_TIMEOUT = 60.0  # half the proxy's default idle_timeout: we close first, not it
MAX_PIPELINED = 16  # requests read ahead of the one in flight; then the socket waits
MAX_HEAD = Limits().max_header_bytes  # a local request's line and headers, as the proxy bounds them
CLOSE_GRACE = 1.0  # seconds idle tunnels get to close politely when the endpoint stops
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})  # as `normalize_host` gives them


class _TooLarge(Exception):
    pass


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "target")

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.keep_alive = True

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _LocalParser:
    """httptools callbacks collecting whole local requests (bounded by `max_body`)."""

    def __init__(self, max_body: int) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.max_body = max_body
        self.too_large = False
        self.head_too_large = False
        self.ready: list[_Request] = []
        self._cur = _Request()
        self._head = 0
        self._in_head = False
        self._fed = 0

    def feed(self, data: bytes) -> None:
        """Parse a read; a head still open after reads past MAX_HEAD is refused (httptools keeps
        a header value until its line ends, so the callbacks alone never see an endless one)."""
        self.parser.feed_data(data)
        if self._in_head:
            self._fed += len(data)
            if self._fed > MAX_HEAD + 65536:  # the first read may hold the previous request too
                self.head_too_large = True
                raise httptools.HttpParserError("request head over the size limit")

    def on_message_begin(self) -> None:
        self._cur = _Request()
        self._head = 0
        self._in_head = True
        self._fed = 0

    def on_url(self, url: bytes) -> None:
        self._cur.target += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._cur.headers.append((name.lower(), value))
        self._count(len(name) + len(value) + 4)

    def _count(self, n: int) -> None:
        self._head += n
        if self._head > MAX_HEAD:
            self.head_too_large = True
            raise _TooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cur.method = self.parser.get_method().decode("latin-1")
        self._cur.keep_alive = bool(self.parser.should_keep_alive())
        length = self._cur.header(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            self._too_large()

    def on_body(self, body: bytes) -> None:
        if len(self._cur.body) + len(body) > self.max_body:
            self._too_large()
        self._cur.body += body

    def on_message_complete(self) -> None:
        self.ready.append(self._cur)

    def _too_large(self) -> None:
        self.too_large = True
        raise _TooLarge


def _printable(value: bytes) -> str:
    """A header value fit for a one-line message: printable, quoted by the caller, short."""
    text = "".join(c if c.isprintable() and c not in '"\\' else "?" for c in value.decode("latin-1"))
    return text[:100]


class LocalEndpoint:
    def __init__(
        self,
        client: TunnelClient,
        route_host: str,
        log: Logger,
        *,
        response_timeout: float | None = DEFAULT_RESPONSE_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        allow_hosts: Iterable[str] = (),
        allow_origins: Iterable[str] = (),
        max_idle: int = DEFAULT_MAX_IDLE,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.client = client
        self.route_host = route_host
        self.log = log
        self.response_timeout = response_timeout
        self.max_body = max_body
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._hosts = set(LOOPBACK_NAMES) | {normalize_host(h) for h in allow_hosts}
        self._origins = {o.strip().rstrip("/").lower() for o in allow_origins}
        self.server: asyncio.Server | None = None
        self.tunnels_opened = 0  # tunnels this endpoint has opened: what pooling keeps low
        self._handlers: set[asyncio.Task[None]] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self._closing_conns: set[TunnelConnection] = set()
        self._idle: list[tuple[TunnelConnection, asyncio.TimerHandle]] = []
        self._busy: set[TunnelConnection] = set()
        self._closing = False

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port)
        name = host.lower()
        self._hosts.add(name)  # a bare address: `normalize_host` of "[::1]:8000" is "::1" too
        if name in ("", "0.0.0.0", "::"):
            self.log.warn("connect listens on every interface: any host that can reach it uses the tunnel")

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def idle_tunnels(self) -> int:
        return len(self._idle)

    async def close(self) -> None:
        self._closing = True
        if self.server is not None:
            self.server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers)
        for conn in list(self._busy):
            conn.abort()
        while self._idle:
            conn, timer = self._idle.pop()
            timer.cancel()
            self._close_later(conn)
        if self._closers:
            # A polite close waits for the proxy's answer; shutting down must not hang on it.
            await asyncio.wait(self._closers, timeout=CLOSE_GRACE)
            for conn in list(self._closing_conns):
                conn.abort()

    # --- the tunnel pool ------------------------------------------------------------------

    async def _acquire(self) -> TunnelConnection:
        while self._idle:
            conn, timer = self._idle.pop()  # the most recently used: the least likely to be stale
            timer.cancel()
            if not conn.closed:
                self._busy.add(conn)
                return conn
            self._close_later(conn)
        conn = await self.client.connect(self.route_host.split(":")[0])
        self.tunnels_opened += 1
        self._busy.add(conn)
        return conn

    def _release(self, conn: TunnelConnection) -> None:
        self._busy.discard(conn)
        if conn.closed or self._closing or len(self._idle) >= self.max_idle:
            self._close_later(conn)
            return
        timer = asyncio.get_running_loop().call_later(self.idle_timeout, self._expire, conn)
        self._idle.append((conn, timer))

    def _abort(self, conn: TunnelConnection) -> None:
        self._busy.discard(conn)
        conn.abort()

    def _expire(self, conn: TunnelConnection) -> None:
        for i, (c, _timer) in enumerate(self._idle):
            if c is conn:
                del self._idle[i]
                self._close_later(conn)
                return

    def _close_later(self, conn: TunnelConnection) -> None:
        if conn.closed:
            conn.abort()  # releases the socket if the proxy's close left it to us
            return
        task = asyncio.get_running_loop().create_task(conn.close())
        self._closers.add(task)
        self._closing_conns.add(conn)

        def done(_task: asyncio.Task[None]) -> None:
            self._closers.discard(task)
            self._closing_conns.discard(conn)

        task.add_done_callback(done)

    # --- one local connection ---------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        parser = _LocalParser(self.max_body)
        queue: asyncio.Queue[_Request | ProxyError | None] = asyncio.Queue()
        gone = asyncio.Event()  # the client closed (half or all of) its connection
        room = asyncio.Event()  # the queue has room again
        read_task = asyncio.create_task(self._read_local(reader, parser, queue, gone, room))
        try:
            while True:
                item = await queue.get()
                room.set()
                if item is None:
                    break
                if isinstance(item, ProxyError):
                    await self._answer_error(writer, item)
                    break
                refusal = self._refusal(item)
                if refusal is not None:
                    self.log.warn("request refused", reason=refusal.reason)
                    await self._answer_error(writer, refusal, keep_alive=item.keep_alive)
                    if not item.keep_alive:
                        break
                    continue
                if not await self._exchange(item, writer, gone) or not item.keep_alive:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read_task
            writer.close()
            self._handlers.discard(task)

    async def _read_local(
        self,
        reader: asyncio.StreamReader,
        parser: _LocalParser,
        queue: asyncio.Queue[_Request | ProxyError | None],
        gone: asyncio.Event,
        room: asyncio.Event,
    ) -> None:
        """Read the local socket until it ends, also while a response is in flight (a client that
        pipelines more than MAX_PIPELINED requests is read no further until they are served)."""
        try:
            while True:
                while queue.qsize() >= MAX_PIPELINED:
                    room.clear()
                    await room.wait()
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    parser.feed(data)
                except httptools.HttpParserError:
                    for req in parser.ready:
                        queue.put_nowait(req)
                    if parser.head_too_large:
                        queue.put_nowait(
                            HeadersTooLarge(body=f"Request header fields too large: over {MAX_HEAD} bytes")
                        )
                    elif parser.too_large:
                        limit = f"{self.max_body} bytes (connect --max-body)"
                        queue.put_nowait(BodyTooLarge(body=f"Request body too large: over {limit}"))
                    else:
                        queue.put_nowait(BadRequest(body="Bad request: malformed HTTP request"))
                    return  # nothing after the bad request can be trusted
                for req in parser.ready:
                    queue.put_nowait(req)
                parser.ready.clear()
        except ConnectionError:
            pass
        gone.set()
        queue.put_nowait(None)

    def _refusal(self, req: _Request) -> Forbidden | None:
        """403 for a Host or Origin a DNS-rebinding page would send; None when the request may go."""
        host = req.header(b"host")
        if host is not None and "*" not in self._hosts:
            name = normalize_host(host.decode("latin-1"))
            if name not in self._hosts:
                shown = _printable(host)
                return Forbidden(
                    f"Host {shown!r} is not this endpoint's address",
                    body=f'Forbidden: Host "{shown}" is not a loopback name or the listen address; '
                    f"allow it with --allow-host {_printable(name.encode('latin-1'))}",
                )
        origin = req.header(b"origin")
        if origin is not None and "*" not in self._origins:
            text = origin.decode("latin-1").strip().rstrip("/").lower()
            if text not in self._origins and not self._local_origin(text):
                shown = _printable(origin)
                return Forbidden(
                    f"Origin {shown!r} is not local",
                    body=f'Forbidden: Origin "{shown}" is not a loopback origin; '
                    f"allow it with --allow-origin {shown}",
                )
        return None

    def _local_origin(self, origin: str) -> bool:
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and normalize_host(parts.netloc) in self._hosts - {"*"}

    async def _exchange(self, req: _Request, writer: asyncio.StreamWriter, gone: asyncio.Event) -> bool:
        """Forward `req`; if the client goes away first, abort its tunnel. True: keep serving."""
        forward = asyncio.create_task(self._forward(req, writer))
        # A half-close counts as going away too, as for a browser's fetch abort: what the
        # client can no longer ask for, it cannot be waiting for (`nc` without -q gets nothing).
        waiter = asyncio.create_task(gone.wait())
        try:
            await asyncio.wait({forward, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not forward.done():
                forward.cancel()  # _forward aborts the tunnel on its way out
                with contextlib.suppress(asyncio.CancelledError):
                    await forward
        if forward.cancelled():
            self.log.info("client went away: tunnel exchange aborted", method=req.method)
            return False
        return forward.result()

    async def _forward(self, req: _Request, writer: asyncio.StreamWriter) -> bool:
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in req.headers if n not in _DROP]
        target = req.target.decode("latin-1")
        body = bytes(req.body) if req.body else None
        self.log.info("request started", method=req.method, path=target.split("?", 1)[0])
        conn: TunnelConnection | None = None
        try:
            try:
                # No await between the pool's `closed` check and the request going out; the
                # pool's idle timeout, below the proxy's, keeps it from closing one we take.
                try:
                    conn = await self._acquire()
                except TunnelClientError as exc:
                    self.log.warn("cannot reach the tunnel", stage=exc.stage, error=str(exc))
                    await self._answer_tunnel_error(writer, exc, logged=True)
                    return False
                resp = await conn.request(
                    req.method,
                    target,
                    host=self.route_host,
                    headers=headers,
                    body=body,
                    head_timeout=self.response_timeout,
                )
            except TunnelClientError as exc:
                if conn is not None:
                    self._abort(conn)
                    conn = None
                await self._answer_tunnel_error(writer, exc)
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
                self._abort(conn)
                conn = None
                return False  # closing without the last chunk shows the client the truncation
            if framing.chunked:
                writer.write(LAST_CHUNK)
            self._release(conn)
            conn = None
            await writer.drain()
            self.log.info("request completed", method=req.method, status=resp.status)
            return True
        finally:
            if conn is not None:  # cancelled, or the local client's socket failed under a write
                self._abort(conn)

    async def _answer_tunnel_error(
        self, writer: asyncio.StreamWriter, exc: TunnelClientError, *, logged: bool = False
    ) -> None:
        if exc.stage == "timeout" and str(exc).startswith("no response"):
            reason = f"{exc} (connect --response-timeout); the tunnel was closed, the request aborted"
            self.log.warn("no response in time", error=str(exc))
            await self._answer_error(writer, UpstreamTimeout(reason, body=reason))
            return
        reason = f"tunnel {exc.stage} failed: {exc}"
        if not logged:
            self.log.warn("request through the tunnel failed", stage=exc.stage, error=str(exc))
        await self._answer_error(writer, UpstreamUnreachable(reason, body=reason))

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
