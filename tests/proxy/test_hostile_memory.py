"""Peers that send and never read (issue #17), against the compiled and the pure build.

SPEC §5: "a bound on what may wait to be sent on one tunnel (past it the proxy stops reading
that tunnel)". A client that pings without reading the pongs, and one that pipelines 100,000
requests without reading the answers, must not make the proxy buffer without bound: its
resident memory (VmRSS) grows by less than `RSS_BOUND` and it keeps answering other tunnels.

Why 6 MiB ("a few MiB per tunnel", issue #17): what may legitimately wait for one tunnel is its
write buffer's high-water mark (256 KiB), one socket read (256 KiB at most) and what that read
parsed, TLS buffers, plus allocator slack: ~1-2 MiB (measured: 0.8-1.2 MiB in both builds; before
the bounds, 70 MiB for the pings and 175-238 MiB for the requests). The floods below are sized so
that buffering them costs several times the bound: 48 MiB of pings would queue ~46 MiB of pongs,
and 100,000 requests held as exchanges (or their ~100-byte answers as TLS records and frames)
cost well over 6 MiB. Both
floods are bounded in bytes and in time (`FLOOD_SECONDS`): a proxy that stops reading makes
our writes stall, and the flood ends at the deadline with whatever it could not send.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from typing import cast

from mcp_tunnel.ws_frames import BINARY, PING
from support.hostile import PROMPT, HostileProxy, StartProxy
from support.rawtunnel import UPGRADE, frame

MIB = 1 << 20
RSS_BOUND = 6 * MIB
FLOOD_SECONDS = 4.0


STALL = 1.0  # seconds without progress: the proxy has stopped reading us, as it should


async def _send_for(
    sock: socket.socket, chunk: bytes, total: int, peak: list[int], proxy: HostileProxy
) -> int:
    """Send `chunk` again and again on `sock` until `total` bytes went out, FLOOD_SECONDS passed
    or a send made no progress for STALL seconds; the bytes sent. `peak` gets the highest RSS
    seen on the way."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FLOOD_SECONDS
    sent = 0
    while sent < total and loop.time() < deadline:
        try:
            await asyncio.wait_for(
                loop.sock_sendall(sock, chunk), min(STALL, max(0.01, deadline - loop.time()))
            )
        except TimeoutError:
            break
        sent += len(chunk)
        peak[0] = max(peak[0], proxy.rss())
    return sent


async def _upgraded_socket(port: int) -> socket.socket:
    """A WebSocket on a plain non-blocking socket with a small receive buffer: once the 101 is
    read, nothing more is ever read from it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, UPGRADE.format(host=f"127.0.0.1:{port}", key=key).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1), PROMPT)
        assert data, "the upgrade was not answered"
        head += data  # byte by byte: nothing after the head is read
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


async def test_pings_whose_pongs_are_never_read(hostile: StartProxy) -> None:
    proxy = hostile()
    await proxy.answers_normally()  # warm: what a first request loads is not counted
    baseline = proxy.rss()
    peak = [baseline]
    sock = await _upgraded_socket(proxy.port)
    try:
        chunk = b"".join(frame(PING, b"p" * 125) for _ in range(1000))  # 131 KB: 1000 pings
        sent = await _send_for(sock, chunk, 48 * MIB, peak, proxy)
        await proxy.answers_normally()  # responsive, with that tunnel still hanging
        peak[0] = max(peak[0], proxy.rss())
        grown = peak[0] - baseline
        assert grown < RSS_BOUND, (
            f"RSS grew by {grown / MIB:.1f} MiB after {sent / MIB:.1f} MiB of pings nobody read the pongs of"
        )
    finally:
        sock.close()
    await proxy.finish()


async def test_pipelined_requests_whose_answers_are_never_read(hostile: StartProxy) -> None:
    proxy = hostile()
    await proxy.answers_normally()
    baseline = proxy.rss()
    peak = [baseline]
    tunnel = await proxy.tunnel()
    transport = cast(asyncio.Transport, tunnel.writer.transport)
    transport.pause_reading()  # from here on, nothing is read
    request = b"GET /p HTTP/1.1\r\nHost: " + proxy.host().encode() + b"\r\n\r\n"
    records = tunnel.encrypt(request * 100_000)
    step = 64 * 1024  # messages as a real client sends them (the proxy takes up to 1 MiB)
    data = b"".join(frame(BINARY, records[i : i + step]) for i in range(0, len(records), step))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FLOOD_SECONDS
    transport.write(data)
    progress_at, unsent = loop.time(), len(data)
    while loop.time() < min(deadline, progress_at + STALL) and unsent:
        peak[0] = max(peak[0], proxy.rss())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tunnel.writer.drain(), 0.05)
        if transport.get_write_buffer_size() < unsent:
            progress_at, unsent = loop.time(), transport.get_write_buffer_size()
    try:
        await proxy.answers_normally()
        peak[0] = max(peak[0], proxy.rss())
        grown = peak[0] - baseline
        assert grown < RSS_BOUND, (
            f"RSS grew by {grown / MIB:.1f} MiB with {(len(data) - unsent) / MIB:.1f} MiB of pipelined "
            f"requests taken in (all sent: {unsent == 0}) and none of their answers read"
        )
    finally:
        tunnel.abort()
    await proxy.finish()


async def test_a_header_that_never_ends(hostile: StartProxy) -> None:
    """httptools holds a header value until its line ends: the proxy must bound the open head
    itself (431 past `limits.max_header_bytes`), not let 20 MiB of one value pile up."""
    proxy = hostile()
    await proxy.answers_normally()
    baseline = proxy.rss()
    peak = [baseline]
    tunnel = await proxy.tunnel()
    head = b"GET / HTTP/1.1\r\nHost: " + proxy.host().encode() + b"\r\nX-Pad: "
    records = tunnel.encrypt(head + b"p" * (20 * MIB))
    step = 64 * 1024
    data = b"".join(frame(BINARY, records[i : i + step]) for i in range(0, len(records), step))
    transport = cast(asyncio.Transport, tunnel.writer.transport)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FLOOD_SECONDS
    transport.write(data)
    while loop.time() < deadline and transport.get_write_buffer_size() and not transport.is_closing():
        peak[0] = max(peak[0], proxy.rss())
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(tunnel.writer.drain(), 0.05)
    try:
        await proxy.answers_normally()
        peak[0] = max(peak[0], proxy.rss())
        grown = peak[0] - baseline
        assert grown < RSS_BOUND, f"RSS grew by {grown / MIB:.1f} MiB on one header that never ends"
    finally:
        tunnel.abort()
    await proxy.finish()
