"""One tunnel connection: WebSocket framing, then the inner TLS session (SPEC §2).

This layer only moves bytes. `ws_handshake` decides the answer to the upgrade request, then
`ws_frames` splits the stream into frames, which carry one TLS byte stream (`TLSSession`)
whose plaintext goes to the inner HTTP/1.1 connection. Message boundaries mean nothing;
binary payloads are fed to TLS as they arrive.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from mcp_tunnel.proxy.exchange import Tunnel
from mcp_tunnel.proxy.flow import HIGH_WATER, MAX_MESSAGE, READ_BACKLOG
from mcp_tunnel.proxy.http_server import InnerHTTP
from mcp_tunnel.routing import normalize_host
from mcp_tunnel.tls_session import TLSHandshakeError, TLSSession
from mcp_tunnel.ws_frames import (
    BINARY,
    CLOSE,
    CONT,
    INTERNAL_ERROR,
    NO_STATUS_RCVD,
    NORMAL_CLOSURE,
    PING,
    PONG,
    PROTOCOL_ERROR,
    TEXT,
    UNSUPPORTED_DATA,
    Frame,
    FrameError,
    FrameParser,
    close_payload,
    frame_header,
    parse_close,
)
from mcp_tunnel.ws_handshake import UpgradeParser, UpgradeRefused, accept, check_upgrade, refusal_response

if TYPE_CHECKING:
    from mcp_tunnel.proxy.server import ProxyServer


MAX_OUT_MESSAGE = 64 * 1024
CLOSE_WAIT_SECONDS = 5.0  # how long a closing tunnel waits for the peer's close frame

# WebSocket states: before the 101, open, our close frame sent, closing handshake over.
CONNECTING, OPEN, CLOSE_SENT, CLOSED = 0, 1, 2, 3


_SNI_ATTRIBUTE = "mcp_tunnel_sni"


def remember_sni(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
    """`SSLContext.sni_callback`: note the name the client sent on its session object.

    A server-side `SSLObject` does not expose the client's SNI (its `server_hostname` is what
    we passed: None); this callback is the only place it is seen.
    """
    setattr(obj, _SNI_ATTRIBUTE, name)


def session_sni(obj: ssl.SSLObject) -> str | None:
    value = getattr(obj, _SNI_ATTRIBUTE, None)
    return value if isinstance(value, str) else None


class TunnelProtocol(asyncio.Protocol, Tunnel):
    """The proxy end of one WebSocket from cloudflared."""

    __slots__ = (
        "_deadline_cb",
        "_drain_waiters",
        "_handshake_over",
        "_head",
        "_on_writable",
        "_paused_writing",
        "_ping_sent",
        "_read_paused",
        "_sniffed",
        "_text_message",
        "admitted",
        "closing",
        "deadline",
        "frames",
        "http",
        "last_rx",
        "peer",
        "server",
        "sni",
        "sni_host",
        "stalled_since",
        "state",
        "tls",
        "transport",
    )

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        # The upgrade request's parser until it is answered; then `frames` takes the stream.
        self._head: UpgradeParser | None = UpgradeParser()
        self.frames: FrameParser | None = None
        self.state = CONNECTING
        self.tls: TLSSession | None = None
        self.http: InnerHTTP | None = None
        self.peer = "-"
        self.sni: str | None = None
        self.sni_host: str | None = None  # normalised like Host, to compare with it
        self.closing = False
        self.admitted = False  # past the upgrade: counted against max_connections
        self._handshake_over = False  # succeeded, or its failure was already counted
        self._text_message = False
        self._sniffed = False
        self._paused_writing = False
        self._read_paused = 0  # READ_* bits
        self.stalled_since = 0.0  # loop time the peer stopped taking what we send; 0: it takes it
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._on_writable: list[Callable[[], object]] = []
        # One deadline per connection (handshake, header read, idle, close), checked by the
        # server's periodic sweep: re-arming it per request is one float store, not a timer.
        self.deadline = 0.0
        self._deadline_cb: Callable[[], object] | None = None
        self.last_rx = 0.0
        self._ping_sent: float | None = None

    # --- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they are one.
        self.transport = t = cast(asyncio.Transport, transport)
        peer = t.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "-"
        t.set_write_buffer_limits(high=HIGH_WATER)
        self.server.tunnel_opened(self)
        self.set_timer(self.server.limits.handshake_timeout, self._handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timer()
        if self.tls is not None and not self._handshake_over and not self.closing:
            self._handshake_over = True
            self.server.handshake_refused(self, "unexpected_eof")
        if self.http is not None:
            self.http.abort("tunnel connection lost")
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("tunnel connection lost"))
        self._drain_waiters.clear()
        self.server.tunnel_closed(self)

    def pause_writing(self) -> None:
        """The peer is not reading what we owe it: read nothing more from it until it does.

        Whatever it sends (pings, pipelined requests) makes more to send, so reading on would
        let one peer grow our buffers without bound. A peer that stays stalled for
        `limits.write_timeout` is dropped by the server's sweep (`check_stalled`).
        """
        self._paused_writing = True
        self.stalled_since = self.server.loop.time()
        self.pause_reading(READ_BACKLOG)

    def resume_writing(self) -> None:
        self._paused_writing = False
        self.stalled_since = 0.0
        self.resume_reading(READ_BACKLOG)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        callbacks, self._on_writable = self._on_writable, []
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
            self.server.log.info("tunnel peer stopped reading, closing", peer=self.peer)
            if self.http is not None:
                self.http.abort("write timeout")
            self.abort()

    @property
    def writable(self) -> bool:
        return not self._paused_writing

    def when_writable(self, callback: Callable[[], object]) -> None:
        """Run `callback` once the peer has taken enough of what we sent (now, if it has)."""
        if self._paused_writing:
            self._on_writable.append(callback)
        else:
            callback()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.server.loop.time()
        self._ping_sent = None  # anything from the peer shows it is alive
        frames = self.frames
        if frames is None:
            self._handshake_data(data)
            return
        try:
            received = frames.feed(data)
        except FrameError as exc:
            self._frame_error(exc)
            return
        tls, http = self.tls, self.http
        handshaking = tls is not None and not tls.handshake_done
        for frame in received:
            self._frame(frame)
        if handshaking and tls is not None and tls.handshake_done and http is not None and http.exchanges:
            # The client's Finished came with its first request: the session ticket waits for
            # the answer (or a close) and goes out in the same write, one fewer per tunnel.
            return
        self._flush_tls()  # what this read's frames made TLS say, in one write

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost aborts what is in flight

    # --- the WebSocket upgrade ---------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        """Collect the upgrade request; answer it once its head is whole."""
        head = self._head
        if head is None:
            return  # answered already; the connection is closing
        if not self._sniffed:
            self._sniffed = True
            if data[:1] == b"\x16":
                self._head = None
                self._handshake_over = True
                self.server.handshake_refused(self, "raw_tls")
                self.server.log.warn(
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
        refusal = self.server.admission()
        if refusal:
            self._answer(refusal_response(503, refusal + "\n"))
            self.server.log.warn("tunnel connection refused", peer=self.peer, reason=refusal)
            return
        if self.transport is not None:
            self.transport.write(response)
        self.state = OPEN
        self.frames = FrameParser(masked=True, max_message=MAX_MESSAGE)
        self.tls = TLSSession(self.server.tls_context(), server_side=True)
        self.http = InnerHTTP(self.server.http_context, self)
        self.server.tunnel_admitted(self)
        self.server.log.debug("tunnel connection opened", peer=self.peer)
        if rest:  # a client that did not wait for the 101
            self.data_received(rest)

    def _refuse(self, refused: UpgradeRefused) -> None:
        self._answer(refused.response)
        if refused.not_websocket:
            self.server.handshake_refused(self, "not_websocket")
            if not refused.quiet:
                self.server.log.info("non-websocket request on tunnel listener", peer=self.peer)
        else:
            self.server.handshake_refused(self, "websocket")
            self.server.log.info("websocket handshake refused", peer=self.peer, status=refused.status)

    def _answer(self, response: bytes) -> None:
        """Send a refusal and close: there is no WebSocket on this connection."""
        self._head = None
        self.closing = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(response)
            transport.close()

    # --- frames ------------------------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode == BINARY or (opcode == CONT and not self._text_message):
            self._ciphertext(frame.payload)
        elif opcode in (TEXT, CONT):
            self._text_message = not frame.fin
            if self.state == OPEN:
                self.server.log.info("text message on tunnel, closing", peer=self.peer)
                if self.http is not None:
                    self.http.abort("text message on tunnel")
                self._close_ws(UNSUPPORTED_DATA, "binary messages only")
        elif opcode == PING:
            if self.state == OPEN:
                self._send_frame(PONG, frame.payload)
        elif opcode == CLOSE:
            self._peer_close(frame.payload)

    def _peer_close(self, payload: bytes) -> None:
        """The peer's close frame: answer it (unless we closed first), then end the TCP side."""
        try:
            code, reason = parse_close(payload)
        except FrameError as exc:
            self._frame_error(exc)
            return
        if self.http is not None and not (self.tls and self.tls.closed_by_peer):
            # A WebSocket that closes without close_notify aborts what is in flight.
            self.http.abort("websocket closed without close_notify")
        if self.state == OPEN:
            self._send_frame(CLOSE, b"" if code == NO_STATUS_RCVD else close_payload(code, reason))
        self.state = CLOSED
        self.closing = True
        self._close_transport()

    def _frame_error(self, exc: FrameError) -> None:
        """The peer broke the framing rules: close with the code that says which (1002, 1009)."""
        self.server.log.info("websocket protocol error, closing", peer=self.peer, error=exc.reason)
        if self.http is not None:
            self.http.abort("websocket protocol error")
        if self.state == OPEN:
            self._send_frame(CLOSE, close_payload(exc.code, exc.reason))
        self.state = CLOSED
        self.closing = True
        self.frames = None
        self._close_transport()

    def _ciphertext(self, data: bytes) -> None:
        tls, http = self.tls, self.http
        if tls is None or http is None or self.closing:
            return
        handshaking = not tls.handshake_done
        try:
            plaintext = tls.receive(data)
        except TLSHandshakeError as failed:
            self._handshake_over = True
            self.server.handshake_failed(self, failed.reason)
            self._close_ws(NORMAL_CLOSURE, "tls handshake failed")  # after the alert we generated
            return
        except Exception as exc:  # a corrupt record after the handshake (ssl.SSLError)
            # A name of its own: compiled, one name in two except clauses keeps the first's type.
            self.server.log.info("tls stream error", peer=self.peer, error=str(exc))
            http.abort("tls stream error")
            self._close_ws(PROTOCOL_ERROR, "tls error")
            return
        if handshaking and tls.handshake_done:
            self.cancel_timer()
            self._handshake_over = True
            self.sni = sni = session_sni(tls.ssl_object)
            self.sni_host = normalize_host(sni) if sni else None
            self.server.handshake_succeeded(self)
            http.start()
        if plaintext:
            http.feed(plaintext)
        if tls.closed_by_peer:
            http.peer_closed()

    # --- sending -----------------------------------------------------------------------

    def send_plain(self, data: bytes) -> None:
        """Encrypt and frame plaintext for the peer, at once."""
        tls = self.tls
        if tls is None or self.closing or self.transport is None or self.transport.is_closing():
            return
        tls.send(data)
        self._flush_tls()

    def _flush_tls(self, then: bytes = b"") -> None:
        """Write what TLS has queued, framed, and `then` (a frame of ours) after it in the same write."""
        tls, transport = self.tls, self.transport
        if transport is None or self.state != OPEN or transport.is_closing():
            return
        out = tls.outgoing() if tls is not None else b""
        if len(out) <= MAX_OUT_MESSAGE:
            if out:
                transport.write(frame_header(BINARY, len(out)) + out + then)
            elif then:
                transport.write(then)
            return
        pieces: list[bytes] = []
        for i in range(0, len(out), MAX_OUT_MESSAGE):
            piece = out[i : i + MAX_OUT_MESSAGE]
            pieces += (frame_header(BINARY, len(piece)), piece)
        if then:
            pieces.append(then)
        transport.writelines(pieces)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame_header(opcode, len(payload)) + payload)

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()  # after what is buffered has been written

    def keepalive(self, now: float, interval: float, timeout: float) -> None:
        """Called periodically by the server: ping a quiet tunnel, drop one that never answers."""
        if self.state != OPEN or self.closing:
            return
        if self._ping_sent is not None:
            if now - self._ping_sent >= timeout:
                self.server.log.info("tunnel peer stopped answering pings, closing", peer=self.peer)
                if self.http is not None:
                    self.http.abort("ping timeout")
                self._abort_transport()
        elif now - self.last_rx >= interval:
            self._ping_sent = now
            self._send_frame(PING, b"mcp-tunnel")

    async def drain(self) -> None:
        """Wait until the peer has taken enough of what we sent (backpressure)."""
        if not self._paused_writing:
            return
        waiter: asyncio.Future[None] = self.server.loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    # --- closing -----------------------------------------------------------------------

    def close_gracefully(self) -> None:
        """TLS close_notify first, then WebSocket close 1000 (SPEC §2)."""
        if self.closing:
            return
        if self.tls is not None and self.tls.handshake_done:
            self.tls.close()  # queued: `_close_ws` writes it with the close frame
        self._close_ws(NORMAL_CLOSURE, "")

    def close_abruptly(self) -> None:
        """End the inner connection without close_notify so the client sees a truncation."""
        self._close_ws(INTERNAL_ERROR, "upstream failed")

    def _close_ws(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        if self.state == CONNECTING:
            # No upgrade yet (draining): there is no WebSocket to close, only the socket.
            self._close_transport()
            return
        if self.state == OPEN:
            # Whatever TLS has queued (a close_notify, an alert, a held ticket) goes first, in
            # the same write.
            payload = close_payload(code, reason)
            self._flush_tls(frame_header(CLOSE, len(payload)) + payload)
            self.state = CLOSE_SENT
        # The peer should answer our close; do not wait for it forever.
        self.deadline = self.server.loop.time() + CLOSE_WAIT_SECONDS
        self._deadline_cb = self._abort_transport

    def _handshake_timeout(self) -> None:
        self._handshake_over = True
        self.server.handshake_refused(self, "timeout")
        stage = "websocket upgrade" if self.tls is None else "tls"
        self.server.log.info("tunnel handshake timed out", peer=self.peer, stage=stage)
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

    def set_timer(self, delay: float, callback: Callable[[], object]) -> None:
        """Replace the connection's deadline (idle or header-read) as its state moves on."""
        if self.closing:
            return  # the close deadline stays: a closing connection must not wait on idle again
        if delay > 0:
            self.deadline = self.server.loop.time() + delay
            self._deadline_cb = callback
        else:
            self.deadline = 0.0

    def fire_deadline(self) -> None:
        """Called by the server's sweep once `deadline` has passed."""
        callback, self.deadline = self._deadline_cb, 0.0
        if callback is not None:
            callback()
