"""The floor proxy: mcp-tunnel's parts and nothing else.

    python -m bench.floor_proxy PORT UPSTREAM_PORT CERT_FILE KEY_FILE [pooled]

What a tunnel proxy built from the product's own pieces costs when it does only the work every
request needs: uvloop, one asyncio protocol per tunnel, the upgrade parsed and answered with
`ws_handshake`, the stream after the 101 driven through `TunnelSession` (frames and the inner
TLS session from `tls_session.make_server_context`, the product's context function), requests
delimited with httptools and written as they came to one upstream connection per tunnel (opened
with the tunnel), the upstream's answers delimited with httptools and passed back as they came.
No validation, routing, logging, metrics, deadlines, flow control, pooling or address checks:
`bench.floor` measures it beside the product and nginx, so the product's features have a price.

With `pooled` (the `floor-pooled` target) a tunnel takes an upstream connection at its first
request from a free list and gives it back when it ends, as the product's pool and nginx's
`keepalive` do: the new-tunnel and idle figures then leave out an upstream connect per tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from typing import cast

import httptools
import uvloop

import mcp_tunnel.tunnel_session
from mcp_tunnel.proxy.flow import MAX_MESSAGE
from mcp_tunnel.proxy.run import GC_YOUNG_THRESHOLD
from mcp_tunnel.tls_session import TLSSession, make_server_context
from mcp_tunnel.tunnel_session import (
    CLOSED,
    HandshakeDone,
    PeerClosed,
    Plaintext,
    TLSClosed,
    TunnelSession,
    remember_sni,
)
from mcp_tunnel.ws_handshake import UpgradeParser, UpgradeRefused, accept, check_upgrade


class Upstream:
    """The tunnel's one upstream connection: responses delimited, their bytes sent back as they came.

    `tunnel` is None while it waits in the pool (`pooled` mode only).
    """

    __slots__ = ("parser", "transport", "tunnel")

    def __init__(self, tunnel: FloorTunnel) -> None:
        self.tunnel: FloorTunnel | None = tunnel
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        if self.tunnel is not None:
            self.tunnel.upstream_made(self)
        else:  # its tunnel ended while it was connecting
            t.close()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.tunnel is not None:
            self.tunnel.send_plain(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_lost()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def on_message_complete(self) -> None:
        if self.tunnel is not None:
            self.tunnel.answered()


class FloorTunnel:
    """One tunnel: the upgrade, then the session, its requests to the upstream and back."""

    __slots__ = (
        "closing",
        "head",
        "in_flight",
        "link",
        "parser",
        "peer_done",
        "pending",
        "server",
        "session",
        "transport",
        "upstream",
    )

    def __init__(self, server: FloorServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.head: UpgradeParser | None = UpgradeParser()
        self.session: TunnelSession | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: asyncio.Transport | None = None
        self.link: Upstream | None = None  # the protocol of `upstream`, or one being connected
        self.pending: list[bytes] = []  # request bytes that came before the upstream connection
        self.in_flight = 0
        self.peer_done = False  # the client's close_notify came
        self.closing = False

    # --- the tunnel's socket ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None:
            self._upgrade(data)
            return
        plaintext = session.receive(data)
        hold = False
        if session.events:
            for event in session.events_received():
                if isinstance(event, Plaintext):
                    self._request_bytes(event.data)
                elif isinstance(event, HandshakeDone):
                    hold = True  # the ticket goes out with the first answer, as the product does
                elif isinstance(event, TLSClosed):
                    self.peer_done = True
                    if not self.in_flight:
                        session.close_gracefully()
                elif isinstance(event, PeerClosed):
                    self._drop_upstream()
                else:  # a broken tunnel: nothing more to do on it
                    self._drop_upstream()
            hold = hold and session.state != CLOSED and self.in_flight > 0
        elif plaintext:
            self._request_bytes(plaintext)
        transport = self.transport
        assert transport is not None
        if not hold:
            out = session.data_to_send()
            if out:
                transport.write(out)
        if session.state == CLOSED:
            self.closing = True
            transport.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.receive_eof()
        self._drop_upstream()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def _upgrade(self, data: bytes) -> None:
        head, transport = self.head, self.transport
        if head is None or transport is None:
            return
        try:
            parsed = head.feed(data)
            if parsed is None:
                return
            request, rest = parsed
            check_upgrade(request)
            response = accept(request)
        except UpgradeRefused as refused:
            self.head = None
            transport.write(refused.response)
            transport.close()
            return
        self.head = None
        transport.write(response)
        tls = TLSSession(self.server.tls_context, server_side=True)
        self.session = TunnelSession(tls, server_side=True, max_message=MAX_MESSAGE)
        if not self.server.pooled:
            self.server.open_upstream(self)
        if rest:
            self.data_received(rest)

    # --- requests out, answers back ----------------------------------------------------------

    def _request_bytes(self, data: bytes) -> None:
        self.parser.feed_data(data)
        upstream = self.upstream
        if upstream is not None:
            upstream.write(data)
            return
        self.pending.append(data)
        if self.link is None and self.server.pooled:  # pooled: the first request takes one
            self.server.take_upstream(self)

    def on_message_complete(self) -> None:  # httptools: a whole request went by
        self.in_flight += 1

    def upstream_made(self, link: Upstream) -> None:
        transport = link.transport
        assert transport is not None
        self.link = link
        if self.closing:
            self._drop_upstream()
            return
        self.upstream = transport
        if self.pending:
            transport.write(b"".join(self.pending))
            self.pending.clear()

    def upstream_lost(self) -> None:
        self.upstream = self.link = None
        session = self.session
        if session is not None and not self.closing and session.state != CLOSED:
            session.close_abruptly()
            self._write(session.data_to_send())

    def answered(self) -> None:
        self.in_flight -= 1
        session = self.session
        if self.peer_done and not self.in_flight and session is not None:
            session.close_gracefully()
            self._write(session.data_to_send())

    def send_plain(self, data: bytes) -> None:
        session = self.session
        if session is not None:
            self._write(session.send_plain(data))

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def _drop_upstream(self) -> None:
        """The tunnel is over: its upstream connection is closed, or (pooled) goes back to the pool."""
        self.closing = True
        link, self.link, self.upstream = self.link, None, None
        if link is not None:
            self.server.release(link, idle=not self.in_flight)


class FloorServer:
    """The listener's shared parts: the TLS context and where the upstream is."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, cert_file: str, key_file: str, upstream_port: int, pooled: bool
    ) -> None:
        self.loop = loop
        self.tls_context = make_server_context(cert_file, key_file)
        self.tls_context.sni_callback = remember_sni  # as the product sets it (server.py)
        self.upstream_port = upstream_port
        self.pooled = pooled
        self.pool: list[Upstream] = []  # idle upstream connections (pooled mode)
        self.connecting: set[asyncio.Task[object]] = set()

    def new_tunnel(self) -> asyncio.BaseProtocol:
        """A `FloorTunnel`: a protocol by its methods, as the product's are (asyncio's types
        want the base class)."""
        return cast(asyncio.BaseProtocol, FloorTunnel(self))

    def open_upstream(self, tunnel: FloorTunnel) -> None:
        tunnel.link = link = Upstream(tunnel)  # connecting: `upstream` is set once connected
        coro = self.loop.create_connection(
            lambda: cast(asyncio.BaseProtocol, link), "127.0.0.1", self.upstream_port
        )
        task: asyncio.Task[object] = self.loop.create_task(coro)
        self.connecting.add(task)
        task.add_done_callback(self._connected)

    def take_upstream(self, tunnel: FloorTunnel) -> None:
        """Pooled mode: an idle upstream connection for `tunnel`, or a new one."""
        pool = self.pool
        while pool:
            link = pool.pop()
            if link.transport is not None and not link.transport.is_closing():
                link.tunnel = tunnel
                tunnel.upstream_made(link)
                return
        self.open_upstream(tunnel)

    def release(self, link: Upstream, *, idle: bool) -> None:
        """A tunnel's upstream connection after the tunnel: pooled if it is idle and pooling is on."""
        link.tunnel = None
        transport = link.transport
        if transport is None or transport.is_closing():
            return
        if self.pooled and idle:
            self.pool.append(link)
        else:
            transport.close()

    def _connected(self, task: asyncio.Task[object]) -> None:
        self.connecting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            print(f"upstream connection failed: {task.exception()!r}", file=sys.stderr, flush=True)


async def serve(port: int, upstream_port: int, cert_file: str, key_file: str, pooled: bool) -> None:
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])  # the product's setting (run.py)
    loop = asyncio.get_running_loop()
    floor = FloorServer(loop, cert_file, key_file, upstream_port, pooled)
    # Before listening: once the port accepts, bench.floor finds this line in the log.
    print(f"floor: {__file__}", flush=True)  # the extension mypyc built, or the .py
    print(f"tunnel_session: {mcp_tunnel.tunnel_session.__file__}", flush=True)
    server = await loop.create_server(floor.new_tunnel, "127.0.0.1", port, reuse_address=True, backlog=1024)
    print(f"floor proxy listening on 127.0.0.1:{port}, loop {type(loop).__module__}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    port, upstream_port, cert_file, key_file = sys.argv[1:5]
    pooled = sys.argv[5:] == ["pooled"]
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(int(port), int(upstream_port), cert_file, key_file, pooled))


if __name__ == "__main__":
    main()
