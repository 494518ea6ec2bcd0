"""What one tunnel peer can make the proxy hold is bounded (proxy/flow.py).

A peer that sends and never reads (pings whose pongs it ignores, pipelined requests whose
answers it ignores) must not grow the proxy's buffers: past HIGH_WATER of unsent bytes the
tunnel stops reading, at most MAX_PIPELINED requests (plus one parse slice) wait their turn,
and a peer that never reads again is dropped at `limits.write_timeout`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from pathlib import Path

from mcp_tunnel.proxy.flow import FEED_SLICE, HIGH_WATER, MAX_PIPELINED, READ_BACKLOG
from mcp_tunnel.proxy.tunnel import TunnelProtocol
from mcp_tunnel.ws_frames import PING, encode_frame
from support.ops import poll
from support.pki import PKI
from support.proxy import RunningProxy, start_proxy
from support.upstreams import RecordingUpstream

HOST = "echo.tunnel.test"


async def _proxy(tmp: Path, pki: PKI, upstream: RecordingUpstream, **limits: object) -> RunningProxy:
    return await start_proxy(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, limits=limits, log_level="info"
    )


async def _upgraded_socket(port: int) -> socket.socket:
    """A raw socket past the WebSocket upgrade (non-blocking: the proxy runs on this loop)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers back up at once
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def _only_tunnel(proxy: RunningProxy) -> TunnelProtocol:
    (tunnel,) = proxy.server.tunnels
    return tunnel


async def _send_until_blocked(sock: socket.socket, data: bytes, budget: int) -> int:
    """Write `data` again and again until the proxy stops taking it (or `budget` bytes went)."""
    loop = asyncio.get_running_loop()
    sent = 0
    while sent < budget:
        try:
            sent += sock.send(data)
        except BlockingIOError:
            try:  # the proxy is not reading: wait a moment for it to start again
                await asyncio.wait_for(loop.sock_sendall(sock, data), 1.0)
                sent += len(data)
            except TimeoutError:
                return sent
            except ConnectionResetError:  # dropped while we waited (the write timeout)
                return sent
        await asyncio.sleep(0)  # let the proxy (same loop) run
    return sent


async def test_pings_whose_pongs_are_never_read_stop_the_reading(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    proxy = await _proxy(tmp, pki, upstream)
    sock = await _upgraded_socket(proxy.server.port)
    pings = encode_frame(PING, b"p" * 125, mask=True) * 500
    budget = 200 * 1024 * 1024
    sent = await _send_until_blocked(sock, pings, budget)
    assert sent < budget, "the proxy never stopped reading"
    tunnel = _only_tunnel(proxy)
    assert tunnel.transport is not None
    # Unsent pongs stay within HIGH_WATER plus what one read can answer.
    assert tunnel.transport.get_write_buffer_size() <= HIGH_WATER + 512 * 1024
    assert tunnel.stalled_since > 0
    assert tunnel._read_paused & READ_BACKLOG
    sock.close()
    await proxy.stop()


async def test_a_peer_that_never_reads_again_is_dropped_at_the_write_timeout(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    proxy = await _proxy(tmp, pki, upstream, write_timeout="500ms")
    sock = await _upgraded_socket(proxy.server.port)
    await _send_until_blocked(sock, encode_frame(PING, b"p" * 125, mask=True) * 500, 200 * 1024 * 1024)
    await poll(lambda: not proxy.server.tunnels, what="the stalled tunnel to be dropped")
    assert proxy.log_has("tunnel peer stopped reading, closing")
    sock.close()
    await proxy.stop()


async def test_pipelined_requests_are_read_only_a_few_ahead(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    proxy = await _proxy(tmp, pki, upstream)
    conn = await proxy.client().connect(HOST)
    request = f"GET /p HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    n = 3000
    tunnel = _only_tunnel(proxy)
    most = 0
    done = False

    async def watch() -> None:
        nonlocal most
        while not done:
            if tunnel.http is not None:
                most = max(most, len(tunnel.http.exchanges))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await conn.send_raw(request * n)  # one write: the proxy gets them in a few large reads
    # The answers, counted in the raw plaintext (the test client reads one response at a time).
    async with asyncio.timeout(30):
        while bytes(conn._plain).count(b"HTTP/1.1 200 ") < n:
            assert await conn._recv(), "the tunnel ended before every answer came"
    done = True
    await watcher
    assert len(upstream.requests) == n
    assert 1 < most <= MAX_PIPELINED + FEED_SLICE // len(request) + 1
    await proxy.stop()


async def test_a_head_that_never_ends_is_431_not_buffered(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """httptools keeps a header value until its line ends; the proxy bounds the open head itself."""
    from mcp_tunnel.errors import TunnelClientError

    proxy = await _proxy(tmp, pki, upstream, header_timeout="60s")
    conn = await proxy.client().connect(HOST)
    await conn.send_raw(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: ".encode())
    sent = 0
    while sent < 4 * 1024 * 1024 and not conn.closed:  # far past max_header_bytes (32 KiB)
        try:
            await conn.send_raw(b"p" * 16384)
        except TunnelClientError:
            break
        sent += 16384
    resp = await asyncio.wait_for(conn.read_response(), 5)
    assert resp.status == 431  # at once, not at the 60 s header timeout
    assert upstream.requests == []
    await proxy.stop()
