"""The WebSocket layer of a tunnel (SPEC §2): control frames, closing, and broken framing.

The proxy answers the upgrade with websockets and frames the stream itself afterwards, so these
tests talk to it with websockets' own client where the peer behaves, and with a raw socket
where it must not (unmasked frames, reserved bits, frames before the 101).
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mcp_tunnel.client import client_ssl_context
from mcp_tunnel.tls_session import TLSSession
from mcp_tunnel.ws_frames import BINARY, CLOSE, PING, PONG, Frame, FrameParser, encode_frame, parse_close
from support.pki import PKI
from support.proxy import RunningProxy, start_proxy
from support.upstreams import RecordingUpstream

UPGRADE = (
    "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class RawWebSocket:
    """A client that writes frames byte for byte, including ones a real client never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = FrameParser(masked=False, max_message=None)
        self.frames: list[Frame] = []

    @classmethod
    async def open(cls, proxy: RunningProxy, *, after_request: bytes = b"") -> RawWebSocket:
        port = int(proxy.url.rsplit(":", 1)[1].strip("/"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(UPGRADE.format(host=f"127.0.0.1:{port}", key=key).encode() + after_request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def next_frame(self) -> Frame | None:
        """The proxy's next frame, or None once it has closed the TCP connection."""
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                return None
            self.frames += self.parser.feed(data)
        return self.frames.pop(0)

    async def closed_with(self) -> int:
        """Read to the proxy's close frame, check the TCP side ends after it; its close code."""
        while (frame := await self.next_frame()) is not None:
            if frame.opcode == CLOSE:
                assert await self.next_frame() is None  # the server closes TCP after its close
                return parse_close(frame.payload)[0]
        raise AssertionError("connection ended without a close frame")


async def test_ping_answered_with_pong(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    async with connect(proxy.url, compression=None, ping_interval=None) as ws:
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
    await proxy.stop()


async def test_quiet_tunnel_is_pinged_and_dropped_when_it_never_answers(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": "http://127.0.0.1:9"},
        limits={"ws_ping_interval": "200ms", "ws_ping_timeout": "200ms"},
    )
    raw = await RawWebSocket.open(proxy)
    frame = await raw.next_frame()
    assert frame is not None and frame.opcode == PING and frame.payload == b"mcp-tunnel"
    # No pong and nothing else: the proxy gives up on the peer.
    assert await raw.next_frame() is None
    assert proxy.log_has("tunnel peer stopped answering pings, closing")
    await proxy.stop()


async def test_a_ping_timeout_shorter_than_the_interval_is_kept(tmp: Path, pki: PKI) -> None:
    """The unanswered ping is judged at its own timeout, not at the next ping interval."""
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": "http://127.0.0.1:9"},
        limits={"ws_ping_interval": "2s", "ws_ping_timeout": "200ms"},
    )
    raw = await RawWebSocket.open(proxy)
    frame = await asyncio.wait_for(raw.next_frame(), 10)
    assert frame is not None and frame.opcode == PING
    # Dropped well before the next interval would come round (it used to wait for it: 2 s).
    assert await asyncio.wait_for(raw.next_frame(), 1.5) is None
    assert proxy.log_has("tunnel peer stopped answering pings, closing")
    await proxy.stop()


async def test_answered_pings_keep_a_quiet_tunnel_open(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": "http://127.0.0.1:9"},
        limits={"ws_ping_interval": "100ms", "ws_ping_timeout": "300ms"},
    )
    raw = await RawWebSocket.open(proxy)
    for _ in range(3):  # three pings answered, each after the one before it
        frame = await raw.next_frame()
        assert frame is not None and frame.opcode == PING
        raw.send(encode_frame(PONG, frame.payload, mask=True))
    assert not proxy.log_has("tunnel peer stopped answering pings")
    raw.writer.close()
    await proxy.stop()


async def test_client_close_is_answered_with_its_code(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    ws = await connect(proxy.url, compression=None)
    await asyncio.wait_for(ws.close(4000, "done here"), 5)
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 4000
    assert ws.protocol.close_rcvd_then_sent is False  # we closed first, the proxy answered
    await proxy.stop()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(b"\x82\x01\x16", 1002, id="unmasked"),
        pytest.param(b"\xc2\x81abcd\x16", 1002, id="reserved-bit"),
        pytest.param(b"\x83\x81abcd\x16", 1002, id="unknown-data-opcode"),
        pytest.param(b"\x8b\x81abcd\x16", 1002, id="unknown-control-opcode"),
        pytest.param(b"\x09\x81abcd\x16", 1002, id="fragmented-ping"),
        pytest.param(b"\x80\x81abcd\x16", 1002, id="continuation-without-message"),
        pytest.param(
            b"\x88\x82abcd" + bytes(a ^ b for a, b in zip(b"\x03\xe7", b"ab", strict=True)),
            1002,
            id="close-999",
        ),
        pytest.param(b"\x82\xff" + ((1 << 20) + 1).to_bytes(8, "big") + b"abcd", 1009, id="declared-too-big"),
    ],
)
async def test_broken_framing_closes_with_the_code_that_says_why(
    tmp: Path, pki: PKI, frame: bytes, code: int
) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    raw = await RawWebSocket.open(proxy)
    raw.send(frame)
    assert await raw.closed_with() == code
    assert proxy.log_has("websocket protocol error, closing")
    await proxy.stop()


async def test_frames_sent_before_the_101_are_not_lost(tmp: Path, pki: PKI) -> None:
    """A client that pipelines its ClientHello behind the upgrade request still gets a session."""
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    tls = TLSSession(
        client_ssl_context(str(pki.ca_file)), server_side=False, server_hostname=pki.host("echo")
    )
    tls.start_handshake()
    hello = encode_frame(BINARY, tls.outgoing(), mask=True)
    raw = await RawWebSocket.open(proxy, after_request=hello)
    while not tls.handshake_done:
        frame = await raw.next_frame()
        assert frame is not None and frame.opcode == BINARY
        tls.receive(frame.payload)
        out = tls.outgoing()
        if out:
            raw.send(encode_frame(BINARY, out, mask=True))
    assert tls.ssl_object.version() in ("TLSv1.2", "TLSv1.3")
    raw.writer.close()
    await proxy.stop()


async def test_text_message_mid_stream_closes_1003_and_is_logged(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    async with connect(proxy.url, compression=None) as ws:
        await ws.send(b"\x16\x03\x01")  # the start of a TLS record, then a text message
        await ws.send("not tls")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1003
    assert proxy.log_has("text message on tunnel, closing")
    await proxy.stop()


async def _first_exchange(
    proxy: RunningProxy,
    ctx: ssl.SSLContext,
    host: str,
    *,
    one_message: bool,
    session: ssl.SSLSession | None = None,
) -> tuple[ssl.SSLObject, bytes]:
    """Handshake, then send the client's Finished and a request in one write (one message, or
    two as most clients send them); return the session object and the plaintext of the first
    binary message that comes back."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=host, session=session)
    raw = await RawWebSocket.open(proxy)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.send(encode_frame(BINARY, outgoing.read(), mask=True))
        frame = await raw.next_frame()
        assert frame is not None and frame.opcode == BINARY
        incoming.write(frame.payload)
    finished = outgoing.read()
    obj.write(f"GET /first HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    if one_message:
        raw.send(encode_frame(BINARY, finished + outgoing.read(), mask=True))
    else:
        raw.send(encode_frame(BINARY, finished, mask=True) + encode_frame(BINARY, outgoing.read(), mask=True))
    frame = await raw.next_frame()
    assert frame is not None and frame.opcode == BINARY
    incoming.write(frame.payload)
    plain = b""
    while True:
        try:
            plain += obj.read(65536)
        except ssl.SSLWantReadError:
            break
    raw.writer.close()
    return obj, plain


@pytest.mark.parametrize("one_message", [True, False], ids=["one-message", "two-messages"])
async def test_session_ticket_rides_with_the_first_answer_and_resumes(
    tmp: Path, pki: PKI, upstream: RecordingUpstream, one_message: bool
) -> None:
    """The ticket waits for the first response and shares its message; a later tunnel resumes."""
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    ctx = client_ssl_context(str(pki.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    first, plain = await _first_exchange(proxy, ctx, pki.host("echo"), one_message=one_message)
    assert plain.startswith(b"HTTP/1.1 200 "), plain
    session = first.session
    assert session is not None and session.has_ticket  # it came in that same message
    second, plain = await _first_exchange(
        proxy, ctx, pki.host("echo"), one_message=one_message, session=session
    )
    assert second.session_reused
    assert plain.startswith(b"HTTP/1.1 200 "), plain
    await proxy.stop()
