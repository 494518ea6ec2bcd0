"""The proxy end of one tunnel: an asyncio front-end over `TunnelSession` (SPEC §2).

`ws_handshake` decides the answer to the upgrade request (and the server's admission whether
to give it); after the 101 every byte goes through `tunnel_session.TunnelSession`, which holds
the framing, the inner TLS session and the close ordering. This module only moves the bytes:
it owns the transport, flow control (pause/resume reading, the write buffer's high water),
the connection's deadline, logging and metrics, and hands the plaintext to the inner HTTP/1.1
connection (`InnerHTTP`).

It knows the rest of the proxy only through a `TunnelContext` (built by server.py): no
import of the server, not even for types.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import cast

from mcp_tunnel.config import Limits
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.exchange import Tunnel
from mcp_tunnel.proxy.flow import (
    DEADLINE_CLOSE,
    DEADLINE_HANDSHAKE,
    HIGH_WATER,
    MAX_MESSAGE,
    READ_BACKLOG,
)
from mcp_tunnel.proxy.http_server import HTTPContext, InnerHTTP
from mcp_tunnel.routing import normalize_host
from mcp_tunnel.tls_session import TLSSession
from mcp_tunnel.tunnel_session import (
    CLOSE_SENT,
    CLOSED,
    CONNECTING,
    OPEN,
    Event,
    FrameRefused,
    HandshakeDone,
    HandshakeFailed,
    PeerClosed,
    Plaintext,
    StreamError,
    TextRefused,
    TLSClosed,
    TunnelSession,
    remember_sni,
)
from mcp_tunnel.ws_handshake import UpgradeParser, UpgradeRefused, accept, check_upgrade, refusal_response

__all__ = ["CLOSED", "CLOSE_SENT", "CONNECTING", "OPEN", "TunnelContext", "TunnelProtocol", "remember_sni"]

CLOSE_WAIT_SECONDS = 5.0  # how long a closing tunnel waits for the peer's close frame


class TunnelContext:
    """What a tunnel needs from the process, and only that; server.py builds one and keeps
    `limits` current across reloads (a tunnel reads them when it needs them)."""

    __slots__ = (
        "admission",
        "admitted",
        "closed",
        "handshake_failed",
        "handshake_refused",
        "handshake_succeeded",
        "http",
        "limits",
        "log",
        "loop",
        "opened",
        "tls_context",
    )

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        log: Logger,
        limits: Limits,
        tls_context: Callable[[], ssl.SSLContext],
        admission: Callable[[], str | None],
        opened: Callable[[TunnelProtocol], None],
        admitted: Callable[[TunnelProtocol], None],
        closed: Callable[[TunnelProtocol], None],
        handshake_failed: Callable[[TunnelProtocol, str], None],
        handshake_refused: Callable[[TunnelProtocol, str], None],
        handshake_succeeded: Callable[[TunnelProtocol], None],
        http: HTTPContext,
    ) -> None:
        self.loop = loop
        self.log = log
        self.limits = limits  # the handshake timeout; server.py swaps them on reload
        self.tls_context = tls_context  # the pair for new handshakes (a reload swaps it)
        self.admission = admission  # why a new tunnel must be refused (the 503 body), or None
        self.opened = opened
        self.admitted = admitted
        self.closed = closed
        self.handshake_failed = handshake_failed  # the TLS alert's words
        self.handshake_refused = handshake_refused  # a metrics label: timeout, raw_tls, ...
        self.handshake_succeeded = handshake_succeeded
        self.http = http  # what each tunnel's inner HTTP layer is built with


class TunnelProtocol(Tunnel):
    """The proxy end of one WebSocket from cloudflared.

    An asyncio protocol by its methods rather than by `asyncio.Protocol` as a base: with a base
    that is not compiled it would not be a native class, and every call the HTTP and forwarding
    layers make through `exchange.Tunnel` would be a generic Python call instead of a native one.
    """

    __slots__ = (
        "_deadline_kind",
        "_handshake_over",
        "_head",
        "_on_writable",
        "_paused_writing",
        "_ping_sent",
        "_read_paused",
        "_sniffed",
        "admitted",
        "closing",
        "ctx",
        "deadline",
        "http",
        "last_rx",
        "peer",
        "session",
        "sni",
        "sni_host",
        "stalled_since",
        "transport",
    )

    def __init__(self, ctx: TunnelContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        # The upgrade request's parser until it is answered; then `session` takes the stream.
        self._head: UpgradeParser | None = UpgradeParser()
        self.session: TunnelSession | None = None
        self.http: InnerHTTP | None = None
        self.peer = "-"
        self.sni: str | None = None
        self.sni_host: str | None = None  # normalised like Host, to compare with it
        self.closing = False
        self.admitted = False  # past the upgrade: counted against max_connections
        self._handshake_over = False  # succeeded, or its failure was already counted
        self._sniffed = False
        self._paused_writing = False
        self._read_paused = 0  # READ_* bits
        self.stalled_since = 0.0  # loop time the peer stopped taking what we send; 0: it takes it
        # What waits for the peer to take our backlog; made only then (an empty list on every
        # idle tunnel is 56 bytes for nothing).
        self._on_writable: list[Callable[[], object]] | None = None
        # One deadline per connection (handshake, header read, idle, close), checked by the
        # server's periodic sweep: re-arming it per request is one float store, not a timer.
        self.deadline = 0.0
        self._deadline_kind = 0  # a `flow.DEADLINE_*`: what `deadline` is for
        self.last_rx = 0.0
        self._ping_sent: float | None = None

    @property
    def state(self) -> int:
        """The WebSocket state: CONNECTING before the 101, then the session's."""
        session = self.session
        return CONNECTING if session is None else session.state

    @property
    def tls(self) -> TLSSession | None:
        session = self.session
        return None if session is None else session.tls

    # --- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they are one.
        self.transport = t = cast(asyncio.Transport, transport)
        peer = t.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "-"
        t.set_write_buffer_limits(high=HIGH_WATER)
        self.ctx.opened(self)
        self.set_timer(self.ctx.limits.handshake_timeout, DEADLINE_HANDSHAKE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timer()
        session = self.session
        if session is not None:
            if not self._handshake_over and not self.closing:
                self._handshake_over = True
                self.ctx.handshake_refused(self, "unexpected_eof")
            session.receive_eof()
        if self.http is not None:
            self.http.abort("tunnel connection lost")
        self.ctx.closed(self)

    def pause_writing(self) -> None:
        """The peer is not reading what we owe it: read nothing more from it until it does.

        Whatever it sends (pings, pipelined requests) makes more to send, so reading on would
        let one peer grow our buffers without bound. A peer that stays stalled for
        `limits.write_timeout` is dropped by the server's sweep (`check_stalled`).
        """
        self._paused_writing = True
        self.stalled_since = self.ctx.loop.time()
        self.pause_reading(READ_BACKLOG)

    def resume_writing(self) -> None:
        self._paused_writing = False
        self.stalled_since = 0.0
        self.resume_reading(READ_BACKLOG)
        callbacks, self._on_writable = self._on_writable, None
        if callbacks is not None:
            for callback in callbacks:
                callback()

    def pause_reading(self, reason: int) -> None:
        """Stop reading from the peer for `reason` (a `flow.READ_*` bit) until `resume_reading`."""
        was = self._read_paused
        self._read_paused = was | reason
        transport = self.transport
        if not was and transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self, reason: int) -> None:
        was = self._read_paused
        if not was & reason:
            return
        self._read_paused = now = was & ~reason
        transport = self.transport
        if not now and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def check_stalled(self, now: float, timeout: float) -> None:
        """Called by the server's sweep: drop a peer that has taken nothing for `timeout`."""
        if now - self.stalled_since >= timeout:
            self.ctx.log.info("tunnel peer stopped reading, closing", peer=self.peer)
            if self.http is not None:
                self.http.abort("write timeout")
            self.abort()

    @property
    def writable(self) -> bool:
        return not self._paused_writing

    def when_writable(self, callback: Callable[[], object]) -> None:
        """Run `callback` once the peer has taken enough of what we sent (now, if it has)."""
        if self._paused_writing:
            if self._on_writable is None:
                self._on_writable = [callback]
            else:
                self._on_writable.append(callback)
        else:
            callback()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.ctx.loop.time()
        self._ping_sent = None  # anything from the peer shows it is alive
        session = self.session
        if session is None:
            self._handshake_data(data)
            return
        plaintext = session.receive(data)
        if session.events:
            if self._events(session, session.events_received()):
                return  # the ticket waits for the first answer (see `_events`)
        elif plaintext:
            http = self.http
            if http is not None:
                http.feed(plaintext)
                http.read_done()
        self._write(session.data_to_send())  # what this read made the session say, in one write
        if session.state == CLOSED:
            self._close_transport()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost aborts what is in flight

    # --- the WebSocket upgrade ---------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        """Collect the upgrade request; answer it once its head is whole."""
        head = self._head
        if head is None:
            return  # answered already; the connection is closing
        ctx = self.ctx
        if not self._sniffed:
            self._sniffed = True
            if data[:1] == b"\x16":
                self._head = None
                self._handshake_over = True
                ctx.handshake_refused(self, "raw_tls")
                ctx.log.warn(
                    "tls handshake on the WebSocket listener: the listener is plain WebSocket, "
                    "TLS belongs inside it (curl https://... to this port is expected to fail)",
                    peer=self.peer,
                )
                # As Go's server does: a plain-text 400 that OpenSSL reads as a record with a
                # bad version, so `curl https://...` reports "wrong version number" (the official
                # troubleshooting's text); then a clean close once it is written.
                self.closing = True
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(
                        refusal_response(400, "This port expects a WebSocket carrying TLS, not TLS itself.\n")
                    )
                    self.transport.close()
                return
        try:
            parsed = head.feed(data)
            if parsed is None:
                return
            request, rest = parsed
            self._head = None
            check_upgrade(request)
            response = accept(request)
        except UpgradeRefused as refused:
            self._refuse(refused)
            return
        refusal = ctx.admission()
        if refusal:
            self._answer(refusal_response(503, refusal + "\n"))
            ctx.log.warn("tunnel connection refused", peer=self.peer, reason=refusal)
            return
        if self.transport is not None:
            self.transport.write(response)
        tls = TLSSession(ctx.tls_context(), server_side=True)
        self.session = TunnelSession(tls, server_side=True, max_message=MAX_MESSAGE)
        self.http = InnerHTTP(ctx.http, self)
        ctx.admitted(self)
        ctx.log.debug("tunnel connection opened", peer=self.peer)
        if rest:  # a client that did not wait for the 101
            self.data_received(rest)

    def _refuse(self, refused: UpgradeRefused) -> None:
        self._answer(refused.response)
        if refused.not_websocket:
            self.ctx.handshake_refused(self, "not_websocket")
            if not refused.quiet:
                self.ctx.log.info("non-websocket request on tunnel listener", peer=self.peer)
        else:
            self.ctx.handshake_refused(self, "websocket")
            self.ctx.log.info("websocket handshake refused", peer=self.peer, status=refused.status)

    def _answer(self, response: bytes) -> None:
        """Send a refusal and close: there is no WebSocket on this connection."""
        self._head = None
        self.closing = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(response)
            transport.close()

    # --- what the session reports --------------------------------------------------------

    def _events(self, session: TunnelSession, events: list[Event]) -> bool:
        """Act on a read's events in order; True when its output is to be held back."""
        http = self.http
        assert http is not None
        log, peer = self.ctx.log, self.peer
        hold = False
        for event in events:
            if isinstance(event, Plaintext):
                http.feed(event.data)
            elif isinstance(event, HandshakeDone):
                self.cancel_timer()
                self._handshake_over = True
                self.sni = sni = event.sni
                host = normalize_host(sni) if sni else None
                self.sni_host = sni if host == sni else host  # one string kept, not two alike
                self.ctx.handshake_succeeded(self)
                http.start()
                hold = True
            elif isinstance(event, TLSClosed):
                http.peer_closed()
            elif isinstance(event, PeerClosed):
                if not event.clean:
                    # A WebSocket that closes without close_notify aborts what is in flight.
                    http.abort("websocket closed without close_notify")
            elif isinstance(event, HandshakeFailed):
                self._handshake_over = True
                self.ctx.handshake_failed(self, event.reason)
            elif isinstance(event, StreamError):
                log.info("tls stream error", peer=peer, error=event.error)
                http.abort("tls stream error")
            elif isinstance(event, TextRefused):
                log.info("text message on tunnel, closing", peer=peer)
                http.abort("text message on tunnel")
            elif isinstance(event, FrameRefused):
                log.info("websocket protocol error, closing", peer=peer, error=event.reason)
                http.abort("websocket protocol error")
        http.read_done()
        self._session_moved(session)
        # The client's Finished came with its first request: the session ticket waits for the
        # answer (or a close) and goes out in the same write, one fewer per tunnel.
        return hold and session.state == OPEN and bool(http.exchanges)

    def _session_moved(self, session: TunnelSession) -> None:
        """After the session changed state: our close was sent, so the close wait starts."""
        if session.state != OPEN and not self.closing:
            self.closing = True
            if session.state == CLOSE_SENT:
                self._close_wait()

    # --- sending -----------------------------------------------------------------------

    def send_plain(self, data: bytes) -> None:
        """Encrypt and frame plaintext for the peer, at once."""
        session, transport = self.session, self.transport
        if session is None or self.closing or transport is None or transport.is_closing():
            return
        out = session.send_plain(data)
        if out:
            transport.write(out)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def _close_transport(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()  # after what is buffered has been written

    def keepalive(self, now: float, interval: float, timeout: float) -> None:
        """Called periodically by the server: ping a quiet tunnel, drop one that never answers."""
        session = self.session
        if session is None or session.state != OPEN or self.closing:
            return
        if self._ping_sent is not None:
            if now - self._ping_sent >= timeout:
                self.ctx.log.info("tunnel peer stopped answering pings, closing", peer=self.peer)
                if self.http is not None:
                    self.http.abort("ping timeout")
                self._abort_transport()
        elif now - self.last_rx >= interval:
            self._ping_sent = now
            self._write(session.ping(b"mcp-tunnel"))

    # --- closing -----------------------------------------------------------------------

    def close_gracefully(self) -> None:
        """TLS close_notify first, then WebSocket close 1000 (SPEC §2)."""
        if self.closing:
            return
        session = self.session
        if session is None:
            self._close_before_upgrade()
            return
        session.close_gracefully()
        self._closed_by_us(session)

    def close_abruptly(self) -> None:
        """End the inner connection without close_notify so the client sees a truncation."""
        if self.closing:
            return
        session = self.session
        if session is None:
            self._close_before_upgrade()
            return
        session.close_abruptly()
        self._closed_by_us(session)

    def _closed_by_us(self, session: TunnelSession) -> None:
        self.closing = True
        # What TLS had queued (a close_notify, a held ticket) and the close frame, in one write.
        self._write(session.data_to_send())
        self._close_wait()

    def _close_before_upgrade(self) -> None:
        """No upgrade yet (draining): there is no WebSocket to close, only the socket."""
        self._close_transport()

    def _close_wait(self) -> None:
        # The peer should answer our close; do not wait for it forever.
        self.deadline = self.ctx.loop.time() + CLOSE_WAIT_SECONDS
        self._deadline_kind = DEADLINE_CLOSE

    def _handshake_timeout(self) -> None:
        self._handshake_over = True
        self.ctx.handshake_refused(self, "timeout")
        stage = "websocket upgrade" if self.session is None else "tls"
        self.ctx.log.info("tunnel handshake timed out", peer=self.peer, stage=stage)
        self._abort_transport()

    def abort(self) -> None:
        """Drop the socket now (the drain deadline passed, or the peer is gone)."""
        self.cancel_timer()
        self._abort_transport()

    def _abort_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def cancel_timer(self) -> None:
        self.deadline = 0.0

    def set_timer(self, delay: float, kind: int) -> None:
        """Replace the connection's deadline (header read, body, idle) as its state moves on."""
        if self.closing:
            return  # the close deadline stays: a closing connection must not wait on idle again
        if delay > 0:
            self.deadline = self.ctx.loop.time() + delay
            self._deadline_kind = kind
        else:
            self.deadline = 0.0

    def fire_deadline(self) -> None:
        """Called by the server's sweep once `deadline` has passed."""
        kind, self.deadline = self._deadline_kind, 0.0
        if kind == DEADLINE_HANDSHAKE:
            self._handshake_timeout()
        elif kind == DEADLINE_CLOSE:
            self._abort_transport()
        elif self.http is not None:
            self.http.deadline_passed(kind)
