"""SPEC §5 limits and timeouts, each enforced by the real proxy process with small configured values."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mcp_tunnel.client.tunnel_client import TunnelConnection
from mcp_tunnel.errors import TunnelClientError
from support.ops import Stack, poll, sample, start_stack
from support.pki import PKI
from support.upstreams import Received, RecordingUpstream

HOST = "echo.tunnel.test"


async def _closed_after(conn: TunnelConnection) -> float:
    """Read until the proxy ends the tunnel; the loop time at which it did."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TunnelClientError):
        while await conn._recv():
            if conn.tls.closed_by_peer:
                break
    return loop.time()


def _routes(upstream: RecordingUpstream) -> dict[str, str]:
    return {"echo": f"http://127.0.0.1:{upstream.port}"}


async def test_handshake_timeout_cuts_silent_sockets_and_silent_tls(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    stack = start_stack(tmp, pki, _routes(upstream), limits={"handshake_timeout": "300ms"})
    with stack.proc:
        loop = asyncio.get_running_loop()
        # 1. A TCP connection that never sends its WebSocket upgrade.
        start = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half an upgrade, then nothing
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert loop.time() - start >= 0.3
        writer.close()
        # 2. An upgraded WebSocket that never starts TLS.
        start = loop.time()
        async with connect(stack.url, compression=None) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        assert loop.time() - start >= 0.3
        await stack.wait_log("tunnel handshake timed out", 2)
        assert stack.count('stage="websocket upgrade"') == 1 and stack.count("stage=tls") == 1
        metrics = await stack.metrics()
        assert sample(metrics, "mcp_tunnel_handshake_failures_total", reason="timeout") == 2
        # A client that does its handshake in time is served.
        assert (await stack.get("echo"))[0] == 200
        stack.proc.stop()


async def test_slowloris_header_is_cut(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    stack = start_stack(tmp, pki, _routes(upstream), limits={"header_timeout": "1s"})
    with stack.proc:
        conn = await stack.client().connect(HOST)
        closed = asyncio.create_task(_closed_after(conn))
        loop = asyncio.get_running_loop()
        start = loop.time()
        head = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: " + "a" * 200
        sent = 0
        for byte in head:
            if closed.done():
                break
            with contextlib.suppress(TunnelClientError):
                await conn.send_raw(byte.encode())
            sent += 1
            await asyncio.wait([closed], timeout=0.2)  # the attack's pace: one byte per 0.2 s
        ended = await asyncio.wait_for(closed, 5)
        assert sent < len(head), "the header was never cut"
        assert 1.0 <= ended - start < 4.0
        assert upstream.requests == []
        await stack.wait_log("request header timeout", 1)
        stack.proc.stop()


async def test_idle_keepalive_connection_closed(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    stack = start_stack(tmp, pki, _routes(upstream), limits={"idle_timeout": "500ms"})
    with stack.proc:
        conn = await stack.client().connect(HOST)
        resp = await conn.request("GET", "/one", host=HOST)
        assert resp.status == 200 and await resp.read() == b"GET /one 0\n"
        idle_from = asyncio.get_running_loop().time()
        ended = await asyncio.wait_for(_closed_after(conn), 5)
        assert conn.tls.closed_by_peer  # closed gracefully: TLS close_notify first
        assert 0.5 <= ended - idle_from < 4.0
        stack.proc.stop()


@contextlib.contextmanager
def _full_backlog_listener() -> Iterator[int]:
    """A loopback listener that never accepts, its accept queue already full: SYNs go unanswered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        filler = socket.create_connection(("127.0.0.1", port), timeout=2)
        fillers.append(filler)
        probe = socket.socket()
        probe.setblocking(False)
        fillers.append(probe)
        probe.connect_ex(("127.0.0.1", port))
        _, writable, _ = select.select([], [probe], [], 0.3)
        if writable and probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            pytest.skip("this kernel completes connections past a full accept queue")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_upstream_connect_timeout_is_504(tmp: Path, pki: PKI) -> None:
    with _full_backlog_listener() as port:
        stack = start_stack(
            tmp, pki, {"echo": f"http://127.0.0.1:{port}"}, limits={"upstream_connect_timeout": "300ms"}
        )
        with stack.proc:
            loop = asyncio.get_running_loop()
            start = loop.time()
            status, body = await stack.get("echo")
            assert (status, body) == (504, b"Upstream did not answer in time\n")
            assert 0.3 <= loop.time() - start < 4.0
            metrics = await stack.metrics()
            assert sample(metrics, "mcp_tunnel_upstream_refusals_total", route="echo", reason="timeout") == 1
            assert sample(metrics, "mcp_tunnel_requests_total", route="echo", status_class="5xx") == 1
            stack.proc.stop()


async def test_upstream_response_header_timeout_is_504(tmp: Path, pki: PKI) -> None:
    never = asyncio.Event()

    async def silent(req: Received, writer: asyncio.StreamWriter) -> None:
        await never.wait()

    upstream = await RecordingUpstream(silent).start()
    stack = start_stack(tmp, pki, _routes(upstream), limits={"upstream_response_timeout": "300ms"})
    with stack.proc:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await stack.get("echo", "/slow") == (504, b"Upstream did not answer in time\n")
        assert 0.3 <= loop.time() - start < 4.0
        assert [r.target for r in upstream.requests] == ["/slow"]
        line = await stack.wait_log('msg="request completed"')
        assert "status=504" in line and 'error="upstream response timeout"' in line
        stack.proc.stop()
    never.set()
    await upstream.close()


async def test_a_request_still_waiting_for_its_answer_is_logged_as_started(tmp: Path, pki: PKI) -> None:
    """A request the upstream sits on has its "request started" line long before its timeout,
    stamped with the time it arrived (the official troubleshooting looks for that line); the
    pooled connection keeps the connector's own lines out of it."""
    never = asyncio.Event()

    async def slow(req: Received, writer: asyncio.StreamWriter) -> None:
        if req.target == "/warm":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        await never.wait()
        writer.close()  # hangs up without an answer

    upstream = await RecordingUpstream(slow).start()
    stack = start_stack(tmp, pki, _routes(upstream), limits={"upstream_response_timeout": "20s"})
    with stack.proc:
        assert (await stack.get("echo", "/warm"))[0] == 200  # a pooled connection: no connect line
        sent_at = time.time()
        request = asyncio.ensure_future(stack.get("echo", "/slow"))
        line = await stack.wait_log('msg="request started"', 2, timeout=5.0)
        assert "path=/slow" in line and not request.done()
        stamp = datetime.strptime(line.split()[0], "time=%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs(stamp.timestamp() - sent_at) < 0.5
        never.set()
        assert (await request)[0] == 502
        assert stack.proc.stop() == 0
    await upstream.close()


async def test_a_streamed_answer_is_logged_as_started_while_it_streams(tmp: Path, pki: PKI) -> None:
    """A streamed answer (SSE) has its "request started" line while it streams, not when the
    stream ends."""
    more = asyncio.Event()

    async def stream(req: Received, writer: asyncio.StreamWriter) -> None:
        if req.target == "/warm":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await more.wait()
        writer.write(b"0\r\n\r\n")

    upstream = await RecordingUpstream(stream).start()
    stack = start_stack(tmp, pki, _routes(upstream))
    with stack.proc:
        conn = await stack.client().connect(HOST)
        assert (await (await conn.request("GET", "/warm", host=HOST)).read()) == b""
        resp = await conn.request("GET", "/events", host=HOST)
        assert resp.status == 200
        line = await stack.wait_log('msg="request started"', 2, timeout=5.0)
        assert "path=/events" in line and stack.log().count("request completed") == 1
        more.set()
        assert await resp.read() == b"data: 1"
        await stack.wait_log("request completed", 2)
        await conn.close()
        assert stack.proc.stop() == 0
    await upstream.close()


async def test_header_and_body_size_limits(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    stack = start_stack(tmp, pki, _routes(upstream), limits={"max_header_bytes": 2048, "max_body_bytes": 16})
    with stack.proc:
        assert (await stack.get("echo", headers=[("X-Big", "a" * 1500)]))[0] == 200
        status, body = await stack.get("echo", headers=[("X-Big", "a" * 2100)])
        assert (status, body) == (431, b"Request header fields too large\n")
        conn = await stack.client().connect(HOST)
        resp = await conn.request("POST", "/", host=HOST, body=b"x" * 17)
        assert (resp.status, await resp.read()) == (413, b"Request body too large\n")
        await conn.close()
        assert len(upstream.requests) == 1  # only the request under the limits got through
        stack.proc.stop()


async def _open_tunnels(stack: Stack, n: int) -> list[TunnelConnection]:
    return [await stack.client().connect(HOST) for _ in range(n)]


async def test_max_connections_refuses_new_tunnels_with_503(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    stack = start_stack(tmp, pki, _routes(upstream), limits={"max_connections": 2})
    with stack.proc:
        first, second = await _open_tunnels(stack, 2)  # exactly the limit is allowed
        with pytest.raises(TunnelClientError) as refused:
            await stack.client().connect(HOST)
        assert refused.value.stage == "websocket" and "HTTP 503" in str(refused.value)
        for conn in (first, second):  # the admitted ones keep working
            resp = await conn.request("GET", "/still", host=HOST)
            assert resp.status == 200 and await resp.read() == b"GET /still 0\n"
        metrics = await stack.metrics()
        assert sample(metrics, "mcp_tunnel_tunnels_open") == 2
        assert sample(metrics, "mcp_tunnel_tunnels_refused_total", reason="capacity") == 1
        await first.close()

        async def one_open() -> bool:
            return sample(await stack.metrics(), "mcp_tunnel_tunnels_open") == 1

        await poll(one_open, what="the closed tunnel to be counted out")
        third = await stack.client().connect(HOST)  # a slot freed is a slot usable
        resp = await third.request("GET", "/", host=HOST)
        assert resp.status == 200
        await resp.read()
        await third.close()
        await second.close()
        stack.proc.stop()
