"""The tunnel client's own connection layer: the opening handshake, WebSocket frames, closing.

Real sockets on loopback against the real proxy. Where a test needs the proxy's side to do
something the proxy never does (send a text message, split frames across reads, vanish
mid-response), a `Relay` sits between the client and the proxy: it passes the opening
handshake through, records every frame both ways, and re-sends what the proxy sends in the
shape the test asks for. Answers the proxy would never give to an upgrade come from a small
scripted server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mcp_tunnel.client import TunnelClient, client_ssl_context
from mcp_tunnel.client.tunnel_client import _ResponseReader
from mcp_tunnel.errors import TunnelClientError
from mcp_tunnel.ws_frames import BINARY, CLOSE, CONT, PING, PONG, TEXT, Frame, FrameParser
from support.pki import PKI
from support.procs import free_port
from support.proxy import RunningProxy, start_proxy
from support.upstreams import Received, RecordingUpstream

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ALERT, APPLICATION_DATA = 0x15, 0x17  # TLS record types (1.3 sends alerts as application data)


def server_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """An unmasked frame as a server sends it (any fin / reserved bits, unlike ws_frames)."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def close_code(frame: Frame) -> int:
    return int(struct.unpack("!H", frame.payload[:2])[0])


class Relay:
    """client <-> relay <-> proxy; records frames both ways and reshapes what the proxy sends.

    `split`: every byte the proxy sends reaches the client in its own write (and read).
    `fragment`: every binary message is re-sent as fragments of that size, with a ping between
    the first two, all in one write. `after_upgrade`: bytes sent right behind the 101 head, in
    the same write. `swallow_close`: the client's close frame (and all after it) never reaches
    the proxy.
    """

    def __init__(
        self,
        proxy_port: int,
        *,
        split: bool = False,
        fragment: int | None = None,
        after_upgrade: bytes = b"",
        swallow_close: bool = False,
    ) -> None:
        self.proxy_port = proxy_port
        self.split = split
        self.fragment = fragment
        self.after_upgrade = after_upgrade
        self.swallow_close = swallow_close
        self.from_proxy: list[Frame] = []
        self.from_client: list[Frame] = []
        self.changed = asyncio.Event()
        self.client_writer: asyncio.StreamWriter | None = None
        self.proxy_writer: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None
        self._lock = asyncio.Lock()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> Relay:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"

    async def close(self) -> None:
        for writer in (self.client_writer, self.proxy_writer):
            if writer is not None:
                writer.close()
        if self.server is not None:
            self.server.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    def frames_from_client(self, opcode: int) -> list[Frame]:
        return [f for f in self.from_client if f.opcode == opcode]

    def frames_from_proxy(self, opcode: int) -> list[Frame]:
        return [f for f in self.from_proxy if f.opcode == opcode]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Until `condition` holds, re-checked whenever a frame passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - loop.time()))

    async def inject(self, frame: bytes) -> None:
        """Bytes to the client as if the proxy sent them (between whole frames)."""
        await self._write(frame)

    def cut(self) -> None:
        """EOF to the client (no close frame), and the proxy side dropped."""
        if self.client_writer is not None:
            self.client_writer.close()
        if self.proxy_writer is not None:
            self.proxy_writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        proxy_reader, proxy_writer = await asyncio.open_connection("127.0.0.1", self.proxy_port)
        self.client_writer, self.proxy_writer = writer, proxy_writer
        proxy_writer.write(await reader.readuntil(b"\r\n\r\n"))
        head = await proxy_reader.readuntil(b"\r\n\r\n")
        writer.write(head + self.after_upgrade)
        with contextlib.suppress(ConnectionError):
            await asyncio.gather(self._to_proxy(reader, proxy_writer), self._to_client(proxy_reader))
        writer.close()
        proxy_writer.close()

    async def _to_proxy(self, reader: asyncio.StreamReader, proxy_writer: asyncio.StreamWriter) -> None:
        parser = FrameParser(masked=True, max_message=None)
        forwarding = True
        while data := await reader.read(65536):
            frames = parser.feed(data)
            self._saw(self.from_client, frames)
            if self.swallow_close and any(f.opcode == CLOSE for f in frames):
                forwarding = False
            if forwarding:
                proxy_writer.write(data)
        if forwarding and not proxy_writer.is_closing():
            proxy_writer.write_eof()

    async def _to_client(self, proxy_reader: asyncio.StreamReader) -> None:
        parser = FrameParser(masked=False, max_message=None)
        while data := await proxy_reader.read(65536):
            frames = parser.feed(data)
            self._saw(self.from_proxy, frames)
            out = b"".join(self._reshape(f) for f in frames)
            if out:
                await self._write(out)
        if self.client_writer is not None:
            self.client_writer.close()

    def _reshape(self, frame: Frame) -> bytes:
        size = self.fragment
        if size is None or frame.opcode != BINARY or len(frame.payload) <= size:
            return server_frame(frame.opcode, frame.payload, fin=frame.fin)
        pieces = [frame.payload[i : i + size] for i in range(0, len(frame.payload), size)]
        out = [server_frame(BINARY, pieces[0], fin=False), server_frame(PING, b"between fragments")]
        out += [server_frame(CONT, p, fin=i == len(pieces) - 1) for i, p in enumerate(pieces[1:], 1)]
        return b"".join(out)

    async def _write(self, data: bytes) -> None:
        writer = self.client_writer
        assert writer is not None
        async with self._lock:
            if not self.split:
                writer.write(data)
                await writer.drain()
                return
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)  # let the client read this byte on its own

    def _saw(self, into: list[Frame], frames: list[Frame]) -> None:
        if frames:
            into.extend(frames)
            self.changed.set()


class Scripted:
    """A server that reads an upgrade request and runs `script` on the connection."""

    def __init__(self, script: Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.script = script
        self.server: asyncio.Server | None = None
        self.done = asyncio.Event()

    async def start(self) -> Scripted:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            request = await reader.readuntil(b"\r\n\r\n")
            await self.script(request, writer)
            await writer.drain()
            await reader.read()  # until the client goes
        writer.close()
        self.done.set()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def accept_for(request: bytes) -> str:
    for line in request.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-key":
            digest = hashlib.sha1((value.strip() + GUID).encode()).digest()
            return base64.b64encode(digest).decode()
    raise AssertionError("no Sec-WebSocket-Key in the upgrade request")


def answer(raw: bytes, *, then_close: bool = False, bytewise: bool = False) -> Scripted:
    async def script(request: bytes, writer: asyncio.StreamWriter) -> None:
        if bytewise:
            for i in range(len(raw)):
                writer.write(raw[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)
        else:
            writer.write(raw)
        if then_close:
            await writer.drain()
            writer.close()

    return Scripted(script)


def client_for(url: str, pki: PKI, *, timeout: float = 10.0, max_message: int | None = None) -> TunnelClient:
    return TunnelClient(url, client_ssl_context(str(pki.ca_file)), timeout=timeout, max_message=max_message)


async def echo_proxy(tmp: Path, pki: PKI, upstream: RecordingUpstream, **extra: object) -> RunningProxy:
    return await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, **extra)


@contextlib.asynccontextmanager
async def relayed(
    tmp: Path,
    pki: PKI,
    upstream: RecordingUpstream,
    *,
    proxy_config: dict[str, object] | None = None,
    **relay_options: Any,
) -> AsyncIterator[tuple[RunningProxy, Relay]]:
    """The echo proxy with a `Relay` in front of it, both stopped however the test ends."""
    proxy = await echo_proxy(tmp, pki, upstream, **(proxy_config or {}))
    try:
        relay = await Relay(proxy.server.port, **relay_options).start()
        try:
            yield proxy, relay
        finally:
            await relay.close()
    finally:
        await proxy.stop()


# --- the opening handshake ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "then_close", "bytewise"),
    [
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nbusy\n", 503, False, False),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nbusy\n", 503, False, True),
        (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such tunnel", 404, True, False),
        (
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbad\r\n0\r\n\r\n",
            400,
            False,
            False,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 200, False, False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, False, False),
    ],
    ids=["503", "503-bytewise", "404-close-delimited", "400-chunked", "200", "204"],
)
async def test_refused_upgrade_is_reported_with_its_status(
    pki: PKI, raw: bytes, status: int, then_close: bool, bytewise: bool
) -> None:
    server = await answer(raw, then_close=then_close, bytewise=bytewise).start()
    with pytest.raises(TunnelClientError) as info:
        await client_for(server.url, pki, timeout=5.0).connect(pki.host("echo"))
    assert info.value.stage == "websocket"
    assert str(info.value) == f"{server.url} answered HTTP {status}"
    await asyncio.wait_for(server.done.wait(), 5)  # and the client hung up
    await server.close()


async def test_real_proxy_refusal_is_reported_with_its_status(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    proxy = await echo_proxy(tmp, pki, upstream, limits={"max_connections": 1})
    first = await proxy.client().connect(pki.host("echo"))
    with pytest.raises(TunnelClientError) as info:
        await proxy.client().connect(pki.host("echo"))
    assert info.value.stage == "websocket"
    assert str(info.value) == f"{proxy.url} answered HTTP 503"
    await first.close()
    await proxy.stop()


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n", "Sec-WebSocket-Accept"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "did not receive a valid HTTP response"),
        (b"", "did not receive a valid HTTP response"),
    ],
    ids=["wrong-accept", "not-http", "closed-without-answer"],
)  # fmt: skip
async def test_invalid_upgrade_answers_are_websocket_errors(pki: PKI, raw: bytes, words: str) -> None:
    server = await answer(raw, then_close=True).start()
    with pytest.raises(TunnelClientError) as info:
        await client_for(server.url, pki, timeout=5.0).connect(pki.host("echo"))
    assert info.value.stage == "websocket"
    assert str(info.value).startswith(f"{server.url}: ") and words in str(info.value)
    await server.close()


async def test_silent_server_is_a_timeout(pki: PKI) -> None:
    async def silent(request: bytes, writer: asyncio.StreamWriter) -> None:
        pass

    server = await Scripted(silent).start()
    with pytest.raises(TunnelClientError) as info:
        await client_for(server.url, pki, timeout=0.3).connect(pki.host("echo"))
    assert info.value.stage == "timeout"
    assert str(info.value) == f"no WebSocket connection to {server.url} within 0.3s"
    await asyncio.wait_for(server.done.wait(), 5)
    await server.close()


async def test_unreachable_proxy_and_bad_url_are_websocket_errors(pki: PKI) -> None:
    url = f"ws://127.0.0.1:{free_port()}/"
    with pytest.raises(TunnelClientError) as info:
        await client_for(url, pki, timeout=5.0).connect(pki.host("echo"))
    assert info.value.stage == "websocket" and str(info.value).startswith(f"{url}: ")
    with pytest.raises(TunnelClientError) as info:
        await client_for("http://127.0.0.1:1/", pki).connect(pki.host("echo"))
    assert info.value.stage == "websocket" and "scheme isn't ws or wss" in str(info.value)


async def test_upgrade_request_is_a_plain_websocket_upgrade(pki: PKI) -> None:
    seen: list[bytes] = []

    async def refuse(request: bytes, writer: asyncio.StreamWriter) -> None:
        seen.append(request)
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    server = await Scripted(refuse).start()
    with pytest.raises(TunnelClientError):
        await client_for(server.url + "tunnel?x=1", pki).connect(pki.host("echo"))
    head = seen[0].decode("latin-1").lower()
    assert head.startswith("get /tunnel?x=1 http/1.1\r\n")
    for line in ("upgrade: websocket", "connection: upgrade", "sec-websocket-version: 13", "user-agent: "):
        assert f"\r\n{line}" in head
    assert "sec-websocket-extensions" not in head and "sec-websocket-protocol" not in head
    await asyncio.wait_for(server.done.wait(), 5)
    await server.close()


# --- frames -----------------------------------------------------------------------------------


async def test_frames_split_across_reads(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    async with relayed(tmp, pki, upstream, split=True) as (_, relay):
        conn = await client_for(relay.url, pki).connect(pki.host("echo"))
        for i in range(3):
            resp = await conn.request("POST", f"/split/{i}", host=pki.host("echo"), body=b"s" * (1000 * i))
            assert resp.status == 200
            assert await resp.read() == f"POST /split/{i} {1000 * i}\n".encode()
        assert len(relay.frames_from_proxy(BINARY)) >= 4  # handshake flight + three answers
        await conn.close()


async def test_fragmented_messages_with_a_ping_between_fragments_all_in_one_read(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    async with relayed(tmp, pki, upstream, fragment=7) as (_, relay):
        conn = await client_for(relay.url, pki).connect(pki.host("echo"))
        resp = await conn.request("POST", "/fragments", host=pki.host("echo"), body=b"f" * 5000)
        assert await resp.read() == b"POST /fragments 5000\n"
        pongs = relay.frames_from_client(PONG)
        assert pongs and all(p.payload == b"between fragments" for p in pongs)
        await conn.close()


async def test_first_frame_in_the_same_read_as_the_101(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    ping = server_frame(PING, b"right behind the 101")
    async with relayed(tmp, pki, upstream, after_upgrade=ping) as (_, relay):
        conn = await client_for(relay.url, pki).connect(pki.host("echo"))
        await relay.wait_until(lambda: bool(relay.frames_from_client(PONG)))
        assert relay.frames_from_client(PONG)[0].payload == b"right behind the 101"
        resp = await conn.request("GET", "/after", host=pki.host("echo"))
        assert await resp.read() == b"GET /after 0\n"
        await conn.close()


async def test_one_byte_messages(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    async with relayed(tmp, pki, upstream) as (_, relay):
        conn = await client_for(relay.url, pki, max_message=1).connect(pki.host("echo"))
        resp = await conn.request("POST", "/one", host=pki.host("echo"), body=b"x" * 300)
        assert await resp.read() == b"POST /one 300\n"
        sent = relay.frames_from_client(BINARY)
        assert len(sent) > 300 and all(len(f.payload) == 1 and f.fin for f in sent)
        await conn.close()


async def test_pings_are_answered_with_pongs(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    # The proxy pings a quiet tunnel every 100 ms and drops it after 300 ms without an answer.
    async with relayed(
        tmp, pki, upstream, proxy_config={"limits": {"ws_ping_interval": "100ms", "ws_ping_timeout": "300ms"}}
    ) as (proxy, relay):
        conn = await client_for(relay.url, pki).connect(pki.host("echo"))
        await relay.inject(server_frame(PING, b"are you there"))
        await relay.wait_until(
            lambda: len(relay.frames_from_proxy(PING)) >= 3 and len(relay.frames_from_client(PONG)) >= 4
        )
        pongs = [f.payload for f in relay.frames_from_client(PONG)]
        assert pongs.count(b"are you there") == 1
        answers = [p for p in pongs if p != b"are you there"]
        assert answers[:3] == [f.payload for f in relay.frames_from_proxy(PING)][:3]
        resp = await conn.request("GET", "/still-open", host=pki.host("echo"))
        assert await resp.read() == b"GET /still-open 0\n"
        assert not proxy.log_has("stopped answering pings")
        await conn.close()


async def _held_response(started: asyncio.Event, release: asyncio.Event) -> RecordingUpstream:
    async def held(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"h" * 10)
        await writer.drain()
        started.set()
        await release.wait()

    return await RecordingUpstream(handler=held).start()


async def test_text_message_from_the_proxy_is_an_error(tmp: Path, pki: PKI) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    up = await _held_response(started, release)
    async with relayed(tmp, pki, up) as (_, relay):
        conn = await client_for(relay.url, pki).connect(pki.host("echo"))
        resp = await conn.request("GET", "/held", host=pki.host("echo"))
        body = resp.iter_body()
        assert await anext(body) == b"h" * 10
        await relay.inject(server_frame(TEXT, b"hello"))
        with pytest.raises(TunnelClientError) as info:
            await anext(body)
        assert (info.value.stage, str(info.value)) == ("websocket", "proxy sent a text message")
        await relay.wait_until(lambda: bool(relay.frames_from_client(CLOSE)))
        assert close_code(relay.frames_from_client(CLOSE)[0]) == 1003
        assert conn.closed
        await conn.close()
        release.set()
    await up.close()


async def test_broken_framing_from_the_proxy_closes_1002(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    async with relayed(tmp, pki, upstream) as (_, relay):
        conn = await client_for(relay.url, pki).connect(pki.host("echo"))
        await relay.inject(server_frame(BINARY, b"x", rsv=0x40))  # a reserved bit no extension owns
        with pytest.raises(TunnelClientError) as info:
            await conn._recv()
        assert info.value.stage == "websocket" and "reserved bits" in str(info.value)
        await relay.wait_until(lambda: bool(relay.frames_from_client(CLOSE)))
        assert close_code(relay.frames_from_client(CLOSE)[0]) == 1002
        await conn.close()


async def test_eof_mid_response_is_an_http_error(tmp: Path, pki: PKI) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    up = await _held_response(started, release)
    async with relayed(tmp, pki, up) as (_, relay):
        conn = await client_for(relay.url, pki).connect(pki.host("echo"))
        resp = await conn.request("GET", "/held", host=pki.host("echo"))
        assert resp.status == 200
        await asyncio.wait_for(started.wait(), 5)
        relay.cut()
        with pytest.raises(TunnelClientError) as info:
            await resp.read()
        assert info.value.stage == "http"
        assert str(info.value) == "connection closed before the response body ended"
        assert conn.close_code == 1006  # ended without a close frame
        assert conn.closed and not await conn._recv()
        with pytest.raises(TunnelClientError) as info:
            await conn.send_raw(b"GET / HTTP/1.1\r\n\r\n")
        assert info.value.stage == "websocket"
        await conn.close()
        release.set()
    await up.close()


async def test_eof_before_the_response_head(tmp: Path, pki: PKI) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def never(req: Received, writer: asyncio.StreamWriter) -> None:
        arrived.set()
        await release.wait()

    up = await RecordingUpstream(handler=never).start()
    async with relayed(tmp, pki, up) as (_, relay):
        conn = await client_for(relay.url, pki).connect(pki.host("echo"))
        pending = asyncio.create_task(conn.request("GET", "/never", host=pki.host("echo")))
        await asyncio.wait_for(arrived.wait(), 5)
        relay.cut()
        with pytest.raises(TunnelClientError) as info:
            await asyncio.wait_for(pending, 5)
        assert (info.value.stage, str(info.value)) == ("http", "connection closed before a response arrived")
        await conn.close()
        release.set()
    await up.close()


# --- closing ---------------------------------------------------------------------------------


async def test_our_close_sends_close_notify_then_1000_and_records_the_answer(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    async with relayed(tmp, pki, upstream) as (_, relay):
        conn = await client_for(relay.url, pki).connect(pki.host("echo"))
        resp = await conn.request("GET", "/", host=pki.host("echo"))
        await resp.read()
        assert conn.close_code is None and not conn.closed
        await conn.close()
        assert conn.closed
        last = relay.from_client[-2:]
        # close_notify: one alert record (encrypted under TLS 1.3), then the close frame.
        assert last[0].opcode == BINARY and last[0].payload[0] in (ALERT, APPLICATION_DATA)
        assert len(last[0].payload) <= 5 + 2 + 1 + 16 + 8
        assert last[1].opcode == CLOSE and close_code(last[1]) == 1000
        assert conn.close_code == 1000  # the proxy's answer
        assert [close_code(f) for f in relay.frames_from_proxy(CLOSE)] == [1000]
        await conn.close()  # a second close does nothing


async def test_proxy_close_is_answered_and_its_code_recorded(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    async with relayed(tmp, pki, upstream) as (_, relay):
        conn = await client_for(relay.url, pki).connect(pki.host("echo"))
        resp = await conn.request("GET", "/", host=pki.host("echo"), headers=[("Connection", "close")])
        assert resp.header("connection") == "close"
        assert await resp.read() == b"GET / 0\n"
        while await conn._recv():
            pass
        assert conn.tls.closed_by_peer and conn.closed
        assert conn.close_code == 1000 and conn.close_reason == ""
        await relay.wait_until(lambda: bool(relay.frames_from_client(CLOSE)))
        assert [close_code(f) for f in relay.frames_from_client(CLOSE)] == [1000]  # the echo, once


async def test_upstream_failure_mid_body_is_close_1011(tmp: Path, pki: PKI) -> None:
    async def dies(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"z" * 10)
        await writer.drain()
        writer.transport.abort()

    up = await RecordingUpstream(handler=dies).start()
    proxy = await echo_proxy(tmp, pki, up)
    conn = await proxy.client().connect(pki.host("echo"))
    resp = await conn.request("GET", "/", host=pki.host("echo"))
    with pytest.raises(TunnelClientError) as info:
        await resp.read()
    assert info.value.stage == "http"
    assert conn.close_code == 1011 and not conn.tls.closed_by_peer  # a truncation, not an end
    await conn.close()
    await proxy.stop()
    await up.close()


async def test_close_waits_for_the_answer_only_up_to_the_timeout(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    async with relayed(tmp, pki, upstream, swallow_close=True) as (_, relay):
        conn = await client_for(relay.url, pki, timeout=0.5).connect(pki.host("echo"))
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(conn.close(), 5)
        assert 0.5 <= loop.time() - start < 3
        assert conn.close_code == 1006  # no answer ever came


async def test_abort_drops_the_connection_at_once(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    async with relayed(tmp, pki, upstream) as (_, relay):
        conn = await client_for(relay.url, pki).connect(pki.host("echo"))
        conn.abort()
        assert conn.closed and not await conn._recv()
        assert conn.close_code == 1006
        assert relay.frames_from_client(CLOSE) == []


async def test_send_message_sends_one_message_whatever_max_message(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    async with relayed(tmp, pki, upstream) as (_, relay):
        conn = await client_for(relay.url, pki, max_message=16).connect(pki.host("echo"))
        host = pki.host("echo")
        conn.tls.send(f"GET /whole HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        records = conn.tls.outgoing()
        assert len(records) > 16
        await conn.send_message(records)
        resp = await conn.read_response()
        assert await resp.read() == b"GET /whole 0\n"
        sizes = [len(f.payload) for f in relay.frames_from_client(BINARY)]
        assert sizes.count(len(records)) == 1 and max(n for n in sizes if n != len(records)) == 16
        await conn.close()


def test_responses_that_come_in_one_piece_are_read_one_by_one() -> None:
    """The session hands over a read's plaintext in one piece: two responses can share it."""
    reader = _ResponseReader(head_only=False)
    assert reader.parser is not None
    reader.parser.feed_data(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
        b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\ntwo"
        b"HTTP/1.1 204 No Content\r\n"
    )
    assert (reader.status, reader.body, reader.complete) == (200, [b"one"], True)
    second, third = reader.take_following()
    assert (second.status, second.reason, second.body, second.complete) == (201, b"Created", [b"two"], True)
    assert (third.status, third.headers_done, third.complete) == (0, False, False)  # its head is not over
    assert third.parser is not None
    third.parser.feed_data(b"\r\n")
    assert (third.status, third.complete) == (204, True)
