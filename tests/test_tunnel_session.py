"""tunnel_session in memory: a client-side session against a server-side one, bytes passed by hand.

No sockets and no event loop: each test moves the bytes one session says to send into the other
(`Pair.pump`), with real TLS (certificates from support.pki), and looks at the events, the
plaintext and the frames on the wire. The last test is a bounded, seeded fuzz of interleavings.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mcp_tunnel.client.tunnel_client import client_ssl_context
from mcp_tunnel.tls_session import TLSSession, make_server_context
from mcp_tunnel.tunnel_session import (
    CLOSE_SENT,
    CLOSED,
    MAX_OUT_MESSAGE,
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
from mcp_tunnel.ws_frames import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    Frame,
    FrameParser,
    close_payload,
    encode_frame,
    parse_close,
)
from support.pki import PKI, make_pki

MAX_MESSAGE = 1 << 20


@dataclass
class Side:
    """One session and what it has reported."""

    session: TunnelSession
    plain: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)  # everything but Plaintext
    wire: bytearray = field(default_factory=bytearray)  # all it ever said, for frame checks
    sent: bytearray = field(default_factory=bytearray)  # plaintext its session accepted

    def take(self, plain: bytes) -> None:
        """What one `receive` returned: the plaintext, or events (with the plaintext among them)."""
        events = self.session.events_received()
        if events:
            assert plain == b"", "plaintext must be an event in a read that has events"
        self.plain += plain
        for event in events:
            if isinstance(event, Plaintext):
                assert not {TLSClosed, PeerClosed} & set(self.kinds()), "plaintext after the end"
                self.plain += event.data
            else:
                self.events.append(event)

    def kinds(self) -> list[type[Event]]:
        return [type(e) for e in self.events]

    def frames(self) -> list[Frame]:
        """The frames it wrote (the client's are masked)."""
        parser = FrameParser(masked=not self.session.server_side, max_message=None)
        return parser.feed(bytes(self.wire))


class Pair:
    """A client-side and a server-side session and the two byte streams between them."""

    def __init__(
        self,
        pki: PKI,
        *,
        client_ca: Path | None = None,
        host: str | None = None,
        client_out: int = MAX_OUT_MESSAGE,
        server_max: int = MAX_MESSAGE,
    ) -> None:
        sctx = make_server_context(str(pki.cert_file), str(pki.key_file))
        sctx.sni_callback = remember_sni
        cctx = client_ssl_context(str(client_ca or pki.ca_file))
        self.host = host or pki.host("echo")
        self.server = Side(
            TunnelSession(TLSSession(sctx, server_side=True), server_side=True, max_message=server_max)
        )
        self.client = Side(
            TunnelSession(
                TLSSession(cctx, server_side=False, server_hostname=self.host),
                server_side=False,
                max_message=None,
                out_message=client_out,
            )
        )
        self.to_server = bytearray()
        self.to_client = bytearray()

    def out(self, side: Side, data: bytes) -> None:
        """Bytes `side` must write: onto the wire towards the other."""
        side.wire += data
        (self.to_server if side is self.client else self.to_client).extend(data)

    def flush(self, side: Side) -> None:
        self.out(side, side.session.data_to_send())

    def send(self, side: Side, data: bytes) -> None:
        accepted = side.session.state == OPEN
        self.out(side, side.session.send_plain(data))
        if accepted:
            side.sent += data

    def deliver(self, to: Side, n: int | None = None) -> None:
        """Up to `n` (all) of the bytes waiting for `to`, in one read."""
        queue = self.to_server if to is self.server else self.to_client
        n = len(queue) if n is None else n
        chunk = bytes(queue[:n])
        del queue[:n]
        to.take(to.session.receive(chunk))
        self.flush(to)

    def pump(self, limit: int = 100) -> None:
        """Move bytes both ways until neither side has anything more to say."""
        for _ in range(limit):
            if not self.to_server and not self.to_client:
                return
            if self.to_server:
                self.deliver(self.server)
            if self.to_client:
                self.deliver(self.client)
        raise AssertionError("the sessions never went quiet")

    def handshake(self) -> None:
        self.client.session.start_handshake()
        self.flush(self.client)
        self.pump()
        assert self.client.session.handshake_done and self.server.session.handshake_done


def close_of(frame: Frame) -> tuple[int, str]:
    assert frame.opcode == CLOSE
    return parse_close(frame.payload)


@pytest.fixture
def pair(pki: PKI) -> Pair:
    p = Pair(pki)
    p.handshake()
    return p


# --- handshake and data ------------------------------------------------------------------------


def test_handshake_reports_sni_and_alpn_on_both_sides(pki: PKI) -> None:
    p = Pair(pki)
    p.handshake()
    assert p.server.events == [HandshakeDone(p.host, "http/1.1")]  # the name the client sent
    assert p.client.events == [HandshakeDone(p.host, "http/1.1")]
    assert p.client.session.state == p.server.session.state == OPEN


def test_data_both_ways_is_returned_without_events(pair: Pair) -> None:
    pair.send(pair.client, b"GET / HTTP/1.1\r\n\r\n")
    pair.deliver(pair.server)
    assert pair.server.plain == b"GET / HTTP/1.1\r\n\r\n"
    assert pair.server.session.events is None  # the hot path: bytes back, not even an event list
    pair.send(pair.server, b"HTTP/1.1 200 OK\r\n\r\n")
    pair.deliver(pair.client)
    assert pair.client.plain == b"HTTP/1.1 200 OK\r\n\r\n"
    assert all(f.opcode == BINARY for f in pair.client.frames()[1:] + pair.server.frames())


def test_large_output_is_split_into_messages_of_at_most_64k(pair: Pair) -> None:
    data = random.Random(1).randbytes(300_000)
    before = len(pair.server.frames())
    pair.send(pair.server, data)
    pair.pump()
    assert pair.client.plain == data
    sizes = [len(f.payload) for f in pair.server.frames()[before:]]
    assert len(sizes) >= 5 and max(sizes) <= MAX_OUT_MESSAGE


def test_client_out_message_splits_what_it_sends(pki: PKI) -> None:
    p = Pair(pki, client_out=7)
    p.handshake()
    before = len(p.client.frames())
    p.send(p.client, b"x" * 100)
    p.pump()
    assert p.server.plain == b"x" * 100
    assert max(len(f.payload) for f in p.client.frames()[before:]) == 7


def test_bytes_split_anywhere_still_arrive_whole(pair: Pair) -> None:
    data = bytes(range(256)) * 40
    pair.send(pair.client, data)
    while pair.to_server:
        pair.deliver(pair.server, 3)  # three bytes per read
    assert pair.server.plain == data


def test_a_message_over_max_message_closes_1009(pki: PKI) -> None:
    p = Pair(pki, server_max=1000)
    p.handshake()
    p.send(p.client, b"y" * 5000)
    p.pump()
    assert p.server.kinds()[-1] is FrameRefused
    refused = p.server.events[-1]
    assert isinstance(refused, FrameRefused) and refused.code == 1009
    assert close_of(p.server.frames()[-1])[0] == 1009
    assert p.server.session.state == CLOSED


# --- pings ---------------------------------------------------------------------------------------


def test_server_answers_a_ping_with_its_payload(pair: Pair) -> None:
    pair.to_server += encode_frame(PING, b"are you there", mask=True)
    pair.deliver(pair.server)
    pong = pair.server.frames()[-1]
    assert (pong.opcode, pong.payload) == (PONG, b"are you there")
    assert pair.server.events[1:] == []


def test_client_answers_the_server_ping_masked(pair: Pair) -> None:
    pair.out(pair.server, pair.server.session.ping(b"mcp-tunnel"))
    pair.deliver(pair.client)
    pong = pair.client.frames()[-1]  # parsed as masked frames: unmasked would raise
    assert (pong.opcode, pong.payload) == (PONG, b"mcp-tunnel")


def test_no_pong_and_no_ping_once_closing(pair: Pair) -> None:
    pair.server.session.close_gracefully()
    pair.flush(pair.server)
    assert pair.server.session.ping(b"x") == b""
    pair.to_server += encode_frame(PING, b"late", mask=True)
    pair.deliver(pair.server)
    assert PONG not in [f.opcode for f in pair.server.frames()]


# --- closing -------------------------------------------------------------------------------------


def test_graceful_close_from_the_server(pair: Pair) -> None:
    pair.send(pair.server, b"last words")
    pair.server.session.close_gracefully()
    pair.flush(pair.server)
    assert pair.server.session.state == CLOSE_SENT
    assert pair.server.session.send_plain(b"too late") == b""
    pair.pump()
    frames = pair.server.frames()
    assert frames[-1].opcode == CLOSE and frames[-2].opcode == BINARY  # close_notify, then 1000
    assert close_of(frames[-1]) == (1000, "")
    assert pair.client.plain == b"last words"
    assert pair.client.kinds()[1:] == [TLSClosed, PeerClosed]
    assert pair.client.events[-1] == PeerClosed(1000, "", clean=True, answered=True)
    # The client echoed without a close_notify of its own: for the server not a clean end,
    # but it closed first, so there was nothing in flight to abort.
    assert pair.server.events[-1] == PeerClosed(1000, "", clean=False, answered=False)
    assert [f.opcode for f in pair.client.frames()].count(CLOSE) == 1  # the echo, once
    assert pair.client.session.state == pair.server.session.state == CLOSED


def test_graceful_close_from_the_client(pair: Pair) -> None:
    pair.send(pair.client, b"bye")
    pair.client.session.close_gracefully()
    pair.flush(pair.client)
    pair.pump()
    assert pair.server.plain == b"bye"
    assert pair.server.kinds()[1:] == [TLSClosed, PeerClosed]
    assert pair.server.events[-1] == PeerClosed(1000, "", clean=True, answered=True)
    assert pair.client.events[-1] == PeerClosed(1000, "", clean=False, answered=False)
    assert pair.client.session.close_code == 1000
    assert pair.client.session.state == pair.server.session.state == CLOSED


def test_abrupt_close_has_no_close_notify_and_code_1011(pair: Pair) -> None:
    pair.send(pair.server, b"half a resp")
    pair.server.session.close_abruptly()
    pair.flush(pair.server)
    pair.pump()
    assert pair.client.plain == b"half a resp"  # what was sent before still arrives
    assert pair.client.kinds()[1:] == [PeerClosed]  # no TLSClosed: a truncation
    assert pair.client.events[-1] == PeerClosed(1011, "upstream failed", clean=False, answered=True)
    assert not pair.client.session.tls.closed_by_peer


def test_peer_close_without_close_notify_is_not_clean(pair: Pair) -> None:
    pair.send(pair.client, b"POST /x HTTP/1.1\r\n")
    pair.deliver(pair.server)
    pair.to_server += encode_frame(CLOSE, close_payload(1000), mask=True)  # no close_notify
    pair.deliver(pair.server)
    assert pair.server.events[-1] == PeerClosed(1000, "", clean=False, answered=True)
    assert close_of(pair.server.frames()[-1]) == (1000, "")  # answered with its code


def test_a_close_without_a_code_is_echoed_empty(pair: Pair) -> None:
    pair.to_server += encode_frame(CLOSE, b"", mask=True)
    pair.deliver(pair.server)
    assert pair.server.events[-1] == PeerClosed(1005, "", clean=False, answered=True)
    assert pair.server.frames()[-1] == Frame(CLOSE, True, b"")


def test_client_close_while_handshaking_sends_no_close_notify(pki: PKI) -> None:
    p = Pair(pki)
    p.client.session.start_handshake()
    p.client.session.close_gracefully()  # before the server said anything
    p.flush(p.client)
    assert [f.opcode for f in p.client.frames()] == [BINARY, CLOSE]  # the ClientHello, then 1000
    p.pump()
    assert not p.client.session.handshake_done and not p.server.session.handshake_done
    assert p.server.kinds() == [PeerClosed]  # its flight was dropped: we closed before it went out
    assert p.server.events[-1] == PeerClosed(1000, "", clean=False, answered=True)
    assert [f.opcode for f in p.server.frames()] == [CLOSE]
    assert p.client.events == [PeerClosed(1000, "", clean=False, answered=False)]
    assert p.client.session.state == p.server.session.state == CLOSED


def test_server_close_while_handshaking_sends_no_close_notify(pki: PKI) -> None:
    p = Pair(pki)
    p.client.session.start_handshake()
    p.flush(p.client)
    server = p.server.session
    assert server.receive(bytes(p.to_server)) == b""  # the ClientHello; no flush yet
    p.to_server.clear()
    server.close_gracefully()  # its handshake is not done: its flight goes out, then 1000
    p.flush(p.server)
    assert [f.opcode for f in p.server.frames()] == [BINARY, CLOSE]
    p.pump()
    assert not server.handshake_done
    assert TLSClosed not in p.client.kinds()
    assert p.client.events[-1] == PeerClosed(1000, "", clean=False, answered=True)
    assert p.client.session.state == server.state == CLOSED


def test_simultaneous_close_ends_both_without_an_echo(pair: Pair) -> None:
    pair.client.session.close_gracefully()
    pair.server.session.close_gracefully()
    pair.flush(pair.client)
    pair.flush(pair.server)
    pair.pump()
    for side in (pair.client, pair.server):
        assert side.events[-1] == PeerClosed(1000, "", clean=True, answered=False)
        assert [f.opcode for f in side.frames()].count(CLOSE) == 1
        assert side.session.state == CLOSED


def test_data_after_our_close_is_dropped_but_its_close_notify_counts(pair: Pair) -> None:
    pair.server.session.close_gracefully()
    pair.flush(pair.server)
    pair.send(pair.client, b"GET /late HTTP/1.1\r\n\r\n")  # crossing our close
    pair.client.session.close_gracefully()
    pair.flush(pair.client)
    pair.deliver(pair.server)
    assert pair.server.plain == b""  # nobody will answer it
    assert pair.server.kinds()[1:] == [TLSClosed, PeerClosed]
    assert pair.server.events[-1] == PeerClosed(1000, "", clean=True, answered=False)


def test_events_keep_their_order_within_one_read(pair: Pair) -> None:
    pair.send(pair.client, b"one request")
    pair.client.session.close_gracefully()
    pair.flush(pair.client)  # data, close_notify and close frame in one read for the server
    plain = pair.server.session.receive(bytes(pair.to_server))
    events = pair.server.session.events_received()
    assert plain == b""
    assert events == [Plaintext(b"one request"), TLSClosed(), PeerClosed(1000, "", True, True)]


def test_nothing_is_received_once_closed(pair: Pair) -> None:
    pair.to_server += encode_frame(CLOSE, close_payload(1001), mask=True)
    pair.deliver(pair.server)
    assert pair.server.session.state == CLOSED
    pair.send(pair.client, b"more")
    pair.deliver(pair.server)
    assert pair.server.plain == b"" and pair.server.kinds()[-1] is PeerClosed


def test_eof_ends_the_session(pair: Pair) -> None:
    pair.server.session.close_gracefully()  # queued, never written
    pair.server.session.receive_eof()
    assert pair.server.session.state == CLOSED
    assert pair.server.session.data_to_send() == b""


# --- TLS failures --------------------------------------------------------------------------------


def test_client_rejecting_the_certificate_tells_the_server_why(pki: PKI, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    p = Pair(pki, client_ca=other.ca_file)
    p.client.session.start_handshake()
    p.flush(p.client)
    p.pump()
    failed = p.client.events[0]
    assert isinstance(failed, HandshakeFailed) and failed.reason.startswith("certificate verify failed")
    server_failed = p.server.events[0]
    assert isinstance(server_failed, HandshakeFailed) and "unknown ca" in server_failed.reason
    # The alert went out before the close frame: the server could say why.
    frames = p.client.frames()
    assert [f.opcode for f in frames[-2:]] == [BINARY, CLOSE]
    assert close_of(frames[-1]) == (1000, "tls handshake failed")
    assert p.client.session.state == p.server.session.state == CLOSED


def test_a_name_the_certificate_does_not_cover_fails_the_client(pki: PKI) -> None:
    p = Pair(pki, host="elsewhere.example.invalid")
    p.client.session.start_handshake()
    p.flush(p.client)
    p.pump()
    assert p.client.kinds()[0] is HandshakeFailed
    assert p.server.kinds()[0] is HandshakeFailed


def test_garbage_instead_of_a_client_hello_fails_the_server_handshake(pki: PKI) -> None:
    p = Pair(pki)
    p.to_server += encode_frame(BINARY, b"\x16\x03\x01\x00\x05hello", mask=True)
    p.deliver(p.server)
    assert p.server.kinds() == [HandshakeFailed]
    assert close_of(p.server.frames()[-1]) == (1000, "tls handshake failed")
    assert p.server.session.state == CLOSE_SENT  # waits for the peer's answer


def test_a_corrupt_record_after_the_handshake_closes_1002(pair: Pair) -> None:
    pair.to_server += encode_frame(BINARY, b"\x17\x03\x03\x00\x08garbage!", mask=True)
    pair.deliver(pair.server)
    assert pair.server.kinds()[1:] == [StreamError]
    assert close_of(pair.server.frames()[-1]) == (1002, "tls error")
    assert pair.server.session.state == CLOSE_SENT


# --- broken framing and text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"\xc2\x81\x00\x00\x00\x00x", 1002, "reserved bits"),  # RSV1 on a masked binary frame
        (b"\x82\x01x", 1002, "incorrect masking"),  # unmasked from a client
        (b"\x83\x80\x00\x00\x00\x00", 1002, "invalid opcode"),
        (b"\x09\x80\x00\x00\x00\x00", 1002, "fragmented control frame"),
        (b"\x80\x80\x00\x00\x00\x00", 1002, "unexpected continuation"),
    ],
)
def test_broken_framing_closes_with_its_code(pair: Pair, raw: bytes, code: int, words: str) -> None:
    pair.to_server += raw
    pair.deliver(pair.server)
    refused = pair.server.events[-1]
    assert isinstance(refused, FrameRefused) and refused.code == code and words in refused.reason
    assert not refused.in_close
    assert close_of(pair.server.frames()[-1])[0] == code
    assert pair.server.session.state == CLOSED


def test_an_invalid_close_frame_is_refused_in_close(pair: Pair) -> None:
    pair.to_server += encode_frame(CLOSE, close_payload(999), mask=True)
    pair.deliver(pair.server)
    refused = pair.server.events[-1]
    assert isinstance(refused, FrameRefused) and refused.in_close and refused.code == 1002


def test_broken_framing_from_the_server_closes_the_client_masked(pair: Pair) -> None:
    pair.to_client += b"\x82\x81\x00\x00\x00\x00x"  # a masked frame from a server
    pair.deliver(pair.client)
    assert pair.client.kinds()[-1] is FrameRefused
    assert close_of(pair.client.frames()[-1])[0] == 1002


@pytest.mark.parametrize("to_server", [True, False])
def test_a_text_message_is_refused_with_1003(pair: Pair, to_server: bool) -> None:
    side = pair.server if to_server else pair.client
    queue = pair.to_server if to_server else pair.to_client
    queue += encode_frame(TEXT, b"hello", mask=to_server)
    pair.deliver(side)
    assert side.kinds()[-1] is TextRefused
    assert close_of(side.frames()[-1]) == (1003, "binary messages only")
    assert side.session.state == CLOSE_SENT


def test_a_fragmented_text_message_is_refused_once(pair: Pair) -> None:
    text_start = b"\x01\x83\x00\x00\x00\x00abc"  # TEXT, not final, masked with a zero key
    more = b"\x80\x83\x00\x00\x00\x00def"  # its final continuation
    pair.to_server += text_start + more
    pair.deliver(pair.server)
    assert pair.server.kinds()[1:] == [TextRefused]
    assert pair.server.plain == b""  # the continuation was not taken for TLS bytes


# --- the fuzz ------------------------------------------------------------------------------------


def test_fuzz_interleavings_end_in_a_documented_state(pki: PKI) -> None:
    """Random sends, pings and closes from either side, delivered in random pieces.

    Oracle: no exception; once everything is delivered both sessions are CLOSED if either
    closed (OPEN otherwise); the plaintext each received is a prefix of what the other's
    session accepted, and all of it when the receiver did not close first, and none after the
    end; the events are the documented ones, in a documented order; a close is clean (with a
    TLSClosed before it) exactly when the peer closed gracefully, answered exactly when the
    receiver had not closed itself, and carries the code of whoever closed.
    """
    rng = random.Random(20261205)
    started = time.monotonic()
    runs = 0
    while runs < 60 and time.monotonic() - started < 4.0:
        runs += 1
        p = Pair(pki)
        p.handshake()
        closed_first: dict[str, str] = {}  # who closed while open, and how
        for _ in range(rng.randrange(1, 25)):
            side_name = rng.choice(["client", "server"])
            side = p.client if side_name == "client" else p.server
            op = rng.random()
            if op < 0.45:
                p.send(side, rng.randbytes(rng.choice([1, 10, 500, 3000, 70_000])))
            elif op < 0.55:
                p.out(side, side.session.ping(b"p"))
            elif op < 0.62:
                if side.session.state == OPEN:
                    closed_first[side_name] = "graceful"
                side.session.close_gracefully()
                p.flush(side)
            elif op < 0.66:
                if side.session.state == OPEN:
                    closed_first[side_name] = "abrupt"
                side.session.close_abruptly()
                p.flush(side)
            else:  # a random piece of what waits, to one side
                to = rng.choice([p.client, p.server])
                queue = p.to_server if to is p.server else p.to_client
                if queue:
                    p.deliver(to, rng.randrange(1, len(queue) + 1))
        p.pump(limit=1000)
        expected = CLOSED if closed_first else OPEN
        assert p.client.session.state == p.server.session.state == expected, runs
        for receiver, sender, name, other in (
            (p.server, p.client, "server", "client"),
            (p.client, p.server, "client", "server"),
        ):
            got, sent = bytes(receiver.plain), bytes(sender.sent)
            assert sent.startswith(got), (runs, name)
            if name not in closed_first:
                assert got == sent, (runs, name)
            assert max(len(f.payload) for f in sender.frames()) <= MAX_OUT_MESSAGE
            kinds = receiver.kinds()
            assert kinds[0] is HandshakeDone and kinds.count(HandshakeDone) == 1
            assert set(kinds[1:]) <= {TLSClosed, PeerClosed}, (runs, kinds)
            # A close_notify came, and made the peer's close clean, exactly when it closed gracefully.
            clean = closed_first.get(other) == "graceful"
            assert (TLSClosed in kinds) == clean, (runs, name, kinds)
            if closed_first:
                last = receiver.events[-1]
                assert isinstance(last, PeerClosed) and kinds.count(PeerClosed) == 1
                assert last.clean == clean and last.answered == (name not in closed_first), (runs, name)
                how = closed_first.get(other) or closed_first[name]  # the close that was answered
                assert last.code == {"graceful": 1000, "abrupt": 1011}[how], (runs, name)
    assert runs >= 20  # enough of them ran to mean something
