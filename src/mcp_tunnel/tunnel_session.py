"""One tunnel session after the WebSocket upgrade, for either end, sans-I/O (SPEC §2).

A tunnel is a WebSocket whose binary messages carry one TLS byte stream. This module holds
every protocol rule of that stream, for the proxy end (`server_side=True`: the peer masks its
frames, we are the TLS server) and for the client end that plays Anthropic's side (we mask, we
are the TLS client): the frame layer (`ws_frames`), the TLS session (`tls_session`), pings and
pongs, the refusal of text messages (1003) and of broken framing (1002/1009/1007), TLS
handshake failures (our alert goes out before our close frame), TLS stream errors (1002) and
the close ordering: graceful is TLS close_notify then WebSocket close 1000, abrupt is close
1011 with no close_notify, a peer close without close_notify aborts what is in flight, and a
peer's close frame is answered unless ours went first.

The shape is that of websockets' `Protocol` and h11's `Connection`: bytes in (`receive`,
`receive_eof`), events and bytes out (`events_received`, `data_to_send`), no sockets, no
clock, no asyncio. The front-ends (`proxy/tunnel.py`, `client/tunnel_client.py`) move the
bytes, own the transport, flow control, timers, logging and metrics, and act on the events.

The hot path allocates no event: a read that only carries TLS records returns its plaintext
from `receive` directly and leaves `events` empty, and `send_plain` returns the framed
records to write. Events (handshake, close, errors) happen a few times per tunnel; plaintext
becomes a `Plaintext` event only in a read that also has an event, so the order stays true.

The opening HTTP upgrade is not here: the proxy answers it with `ws_handshake` (with its
admission decision between request and 101), the client uses websockets' `ClientProtocol`.
Both are whole-message exchanges before any frame, so a session starts at the first byte
after the 101 and the split costs nothing.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Final

from mcp_tunnel.tls_session import TLSHandshakeError, TLSSession
from mcp_tunnel.ws_frames import (
    BINARY,
    CLOSE,
    CONT,
    INTERNAL_ERROR,
    NORMAL_CLOSURE,
    PING,
    PONG,
    PROTOCOL_ERROR,
    TEXT,
    UNSUPPORTED_DATA,
    FrameError,
    FrameParser,
    close_payload,
    encode_frame,
    frame_header,
    parse_close,
)

# WebSocket states (RFC 6455 §7): CONNECTING is the front-end's, before the 101 (no session
# exists yet); a session starts OPEN.
CONNECTING: Final = 0
OPEN: Final = 1
CLOSE_SENT: Final = 2  # our close frame is queued; the peer's answer is awaited
CLOSED: Final = 3  # the closing handshake is over (or the stream ended): close the socket

MAX_OUT_MESSAGE: Final = 64 * 1024  # the largest binary message we send

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


# --- events ----------------------------------------------------------------------------------


class Event:
    """Something the front-end must act on; in the order it happened."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HandshakeDone(Event):
    """The inner TLS handshake succeeded. `sni`: the name the client sent (server side) or
    the name we sent (client side)."""

    sni: str | None
    alpn: str | None


@dataclass(frozen=True, slots=True)
class Plaintext(Event):
    """Decrypted bytes, in a read that also had an event (otherwise `receive` returns them)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TLSClosed(Event):
    """The peer sent TLS close_notify: no more plaintext will come; what is in flight may end."""


@dataclass(frozen=True, slots=True)
class HandshakeFailed(Event):
    """The inner handshake failed; our alert (if any) and close 1000 are queued. `reason` is
    the alert's words (``unknown ca``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class StreamError(Event):
    """A corrupt TLS record after the handshake; close 1002 is queued."""

    error: str


@dataclass(frozen=True, slots=True)
class TextRefused(Event):
    """The peer sent a text message; close 1003 is queued."""


@dataclass(frozen=True, slots=True)
class FrameRefused(Event):
    """The peer broke the framing rules (`in_close`: in its close frame); our close with
    `code` is queued and the session is CLOSED: close the socket once it is written."""

    code: int
    reason: str
    in_close: bool


@dataclass(frozen=True, slots=True)
class PeerClosed(Event):
    """The peer's close frame. `clean`: its TLS close_notify came first (otherwise what is in
    flight must be aborted). `answered`: we echoed it (it closed first). The session is
    CLOSED: close the socket once the echo is written."""

    code: int
    reason: str
    clean: bool
    answered: bool


# --- the session -----------------------------------------------------------------------------


class TunnelSession:
    """WebSocket frames carrying one TLS session, from the first byte after the 101.

    `server_side`: the proxy end (expects masked frames, TLS server); otherwise the client
    end (masks, TLS client: call `start_handshake` first). `max_message` bounds one incoming
    message (None: no bound; larger closes 1009); `out_message` is the largest binary message
    sent (a longer TLS output is split).
    """

    __slots__ = (
        "_frames",
        "_mask",
        "_out_message",
        "_pending",
        "_plain",
        "_text_message",
        "_tls_closed",
        "_tls_failed",
        "close_code",
        "close_reason",
        "events",
        "server_side",
        "state",
        "tls",
    )

    def __init__(
        self,
        tls: TLSSession,
        *,
        server_side: bool,
        max_message: int | None,
        out_message: int = MAX_OUT_MESSAGE,
    ) -> None:
        self.tls = tls
        self.server_side = server_side
        self._mask = not server_side  # clients mask (RFC 6455 §5.1)
        self._frames = FrameParser(masked=server_side, max_message=max_message)
        self._out_message = max(1, out_message)
        self.state = OPEN
        # Made when there is something to hold (None the rest of the time: an idle tunnel holds
        # no empty lists): the events not yet taken by `events_received`, and frames of ours
        # (pongs, close) not yet in `data_to_send`.
        self.events: list[Event] | None = None
        self._pending: list[bytes] | None = None
        self._plain: list[bytes] = []  # this read's plaintext so far (reused, not reallocated)
        self._text_message = False  # inside a fragmented text message
        self._tls_closed = False  # TLSClosed was reported
        self._tls_failed = False  # the TLS session failed (handshake or a corrupt record)
        self.close_code: int | None = None  # the peer's close frame, once it came
        self.close_reason = ""

    # --- state ------------------------------------------------------------------------------

    @property
    def handshake_done(self) -> bool:
        return self.tls.handshake_done

    @property
    def closing(self) -> bool:
        """No more data goes either way: a close frame was sent or received, or the stream ended."""
        return self.state != OPEN

    # --- bytes in ---------------------------------------------------------------------------

    def start_handshake(self) -> None:
        """Client side: queue the ClientHello (`data_to_send`). Raises TLSHandshakeError."""
        self.tls.start_handshake()

    def receive(self, data: bytes) -> bytes:
        """Feed bytes from the peer; return the plaintext they complete.

        Anything else they cause is in `events` (then the plaintext is there too, as
        `Plaintext`, in order, and the return value is empty), and what must be sent in answer
        is in `data_to_send()`.
        """
        if self.state == CLOSED:
            return b""
        try:
            frames = self._frames.feed(data)
        except FrameError as exc:
            self._refuse_framing(exc, in_close=False)
            return self._take_plain()
        tls = self.tls
        plain = self._plain
        for opcode, fin, payload in frames:
            if opcode == BINARY or (opcode == CONT and not self._text_message):
                if self.state != OPEN:
                    self._after_close(payload)
                    continue
                handshaking = not tls.handshake_done
                try:
                    piece = tls.receive(payload)
                except TLSHandshakeError as failed:
                    self._tls_failed = True
                    self._close(NORMAL_CLOSURE, "tls handshake failed")  # after our alert
                    self._event(HandshakeFailed(failed.reason))
                    continue
                except Exception as exc:  # a corrupt record after the handshake (ssl.SSLError)
                    # A name of its own: compiled, one name in two except clauses keeps the first's type.
                    self._tls_failed = True
                    self._close(PROTOCOL_ERROR, "tls error")
                    self._event(StreamError(str(exc)))
                    continue
                if handshaking and tls.handshake_done:
                    self._event(self._handshake_event())
                if piece:
                    if self.events:
                        self.events.append(Plaintext(piece))
                    else:
                        plain.append(piece)
                if tls.closed_by_peer and not self._tls_closed:
                    self._tls_closed = True
                    self._event(TLSClosed())
            elif opcode in (TEXT, CONT):
                self._text_message = not fin
                if self.state == OPEN:
                    self._close(UNSUPPORTED_DATA, "binary messages only")
                    self._event(TextRefused())
            elif opcode == PING:
                if self.state == OPEN:
                    self._queue(self._frame(PONG, payload))
            elif opcode == CLOSE:
                self._peer_close(payload)
                break
            # PONG: nothing to do; any byte from the peer already shows it is alive
        return self._take_plain()

    def _after_close(self, ciphertext: bytes) -> None:
        """Records that come after our close frame: still decrypted (if TLS is sound) so that
        the peer's close_notify is seen and its close counts as clean, but their plaintext is
        dropped: nobody answers it any more (RFC 6455 §5.5.1 lets data arrive after our close;
        TLS lets us read after our close_notify)."""
        if self._tls_failed or not self.tls.handshake_done or self.state != CLOSE_SENT:
            return
        try:
            self.tls.receive(ciphertext)
        except Exception:  # the close is under way already: nothing more to say about it
            self._tls_failed = True
            return
        if self.tls.closed_by_peer and not self._tls_closed:
            self._tls_closed = True
            self._event(TLSClosed())

    def receive_eof(self) -> None:
        """The peer's TCP stream ended (or the socket is gone): nothing more goes either way."""
        self.state = CLOSED
        self._pending = None

    def _peer_close(self, payload: bytes) -> None:
        try:
            code, reason = parse_close(payload)
        except FrameError as exc:
            self._refuse_framing(exc, in_close=True)
            return
        answered = self.state == OPEN
        if answered:
            self._queue(self._frame(CLOSE, payload))  # its own code back (RFC 6455 §5.5.1)
        self.state = CLOSED
        self.close_code, self.close_reason = code, reason
        self._event(PeerClosed(code, reason, self.tls.closed_by_peer, answered))

    def _refuse_framing(self, exc: FrameError, *, in_close: bool) -> None:
        """The stream cannot be parsed on: say why (if our close was not sent) and end."""
        if self.state == OPEN:
            self._queue(self._frame(CLOSE, close_payload(exc.code, exc.reason)))
        self.state = CLOSED
        self._event(FrameRefused(exc.code, exc.reason, in_close))

    def _handshake_event(self) -> HandshakeDone:
        obj = self.tls.ssl_object
        sni = session_sni(obj) if self.server_side else obj.server_hostname
        return HandshakeDone(sni, obj.selected_alpn_protocol())

    def _event(self, event: Event) -> None:
        """Queue `event` behind the plaintext of this read so far."""
        events = self.events
        if events is None:
            events = self.events = []
        plain = self._plain
        if plain:
            events.append(Plaintext(plain[0] if len(plain) == 1 else b"".join(plain)))
            plain.clear()
        events.append(event)

    def _take_plain(self) -> bytes:
        plain = self._plain
        if not plain:
            return b""
        data = plain[0] if len(plain) == 1 else b"".join(plain)
        plain.clear()
        if self.events:
            self.events.append(Plaintext(data))
            return b""
        return data

    def events_received(self) -> list[Event]:
        """The events not yet taken, oldest first (and forget them)."""
        events = self.events
        if not events:
            return []
        self.events = None
        return events

    # --- bytes out --------------------------------------------------------------------------

    def send_plain(self, data: bytes | memoryview) -> bytes:
        """Encrypt plaintext for the peer; return the framed records (and any frame of ours
        waiting) to write now. Nothing once the session is closing."""
        if self.state != OPEN:
            return b""
        self.tls.send(data)
        return self.data_to_send()

    def send_message(self, data: bytes) -> bytes:
        """`data` as one binary message, unsplit, whatever it is (tests send raw records)."""
        if self.state != OPEN:
            return b""
        return self.data_to_send() + self._frame(BINARY, data)

    def ping(self, payload: bytes) -> bytes:
        """A ping to write (keepalive), or nothing once closing."""
        if self.state != OPEN:
            return b""
        return self._frame(PING, payload)

    def data_to_send(self) -> bytes:
        """What must be written to the peer now, in order: TLS records (framed), then our frames."""
        pending = self._pending
        if self.state == OPEN:
            out = self._framed_tls()
            if pending:
                out += b"".join(pending)
                self._pending = None
            return out
        if not pending:
            return b""
        out = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending = None
        return out

    def _queue(self, frame: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._pending = [frame]
        else:
            pending.append(frame)

    def close_gracefully(self) -> None:
        """TLS close_notify (once the handshake is done), then WebSocket close 1000 (SPEC §2)."""
        if self.state != OPEN:
            return
        if self.tls.handshake_done:
            self.tls.close()
        self._close(NORMAL_CLOSURE, "")

    def close_abruptly(self, reason: str = "upstream failed") -> None:
        """Close 1011 without close_notify: the peer must see a truncation, not an end."""
        self._close(INTERNAL_ERROR, reason)

    def _close(self, code: int, reason: str) -> None:
        """Queue whatever TLS has (close_notify, an alert, a held ticket), then our close frame."""
        if self.state != OPEN:
            return
        records = self._framed_tls()
        if records:
            self._queue(records)
        self._queue(self._frame(CLOSE, close_payload(code, reason)))
        self.state = CLOSE_SENT

    def _framed_tls(self) -> bytes:
        out = self.tls.outgoing()
        n = len(out)
        if not n:
            return b""
        step = self._out_message
        if n <= step:
            if self._mask:
                return encode_frame(BINARY, out, mask=True)
            return frame_header(BINARY, n) + out
        return b"".join([self._frame(BINARY, out[i : i + step]) for i in range(0, n, step)])

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        if self._mask:
            return encode_frame(opcode, payload, mask=True)
        return frame_header(opcode, len(payload)) + payload
