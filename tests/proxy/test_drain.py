"""Graceful drain on SIGTERM/SIGINT through the real proxy process, and the second signal."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from mcp_tunnel.errors import TunnelClientError
from support.ops import start_stack
from support.pki import PKI
from support.upstreams import Received, RecordingUpstream

HOST = "echo.tunnel.test"


class Held:
    """An upstream whose answers wait for the test: the request stays in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.upstream = RecordingUpstream(self.handle)

    async def handle(self, req: Received, writer: asyncio.StreamWriter) -> None:
        if req.target == "/slow":
            await self.release.wait()
        body = f"done {req.target}\n".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_drain_finishes_in_flight_refuses_new_closes_idle(
    signum: signal.Signals, tmp: Path, pki: PKI
) -> None:
    held = Held()
    await held.upstream.start()
    stack = start_stack(
        tmp, pki, {"echo": f"http://127.0.0.1:{held.upstream.port}"}, shutdown_timeout="20s", log_level="info"
    )
    with stack.proc:
        idle = await stack.client().connect(HOST)
        resp = await idle.request("GET", "/warm", host=HOST)
        assert await resp.read() == b"done /warm\n"
        busy = await stack.client().connect(HOST)
        in_flight = asyncio.create_task(busy.request("GET", "/slow", host=HOST))
        await asyncio.wait_for(held.upstream.arrived.wait(), 10)
        while held.upstream.requests[-1].target != "/slow":
            held.upstream.arrived.clear()
            await asyncio.wait_for(held.upstream.arrived.wait(), 10)

        stack.proc.proc.send_signal(signum)
        await stack.wait_log("waiting for requests in flight")
        assert (await stack.admin("/readyz"))[0] == 503
        # The idle tunnel was closed gracefully: TLS close_notify, then the WebSocket close.
        assert not await idle._recv() or idle.tls.closed_by_peer
        # No new tunnel connections.
        with pytest.raises(TunnelClientError):
            await stack.client(timeout=3).connect(HOST)
        assert stack.proc.proc.poll() is None  # still running: a request is in flight

        held.release.set()
        resp = await asyncio.wait_for(in_flight, 10)
        assert resp.status == 200
        assert resp.header("connection") == "close"  # the client learns the tunnel is ending
        assert await resp.read() == b"done /slow\n"
        assert await asyncio.to_thread(stack.proc.proc.wait, 10) == 0
        await stack.wait_log("msg=stopped")
        assert stack.count("cutting requests in flight") == 0
    await held.upstream.close()


async def test_open_sse_stream_runs_until_the_deadline_then_exit_0(tmp: Path, pki: PKI) -> None:
    stop_streaming = asyncio.Event()

    async def sse(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        n = 0
        while not stop_streaming.is_set():
            event = f"data: {n}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            n += 1
            await asyncio.wait([asyncio.ensure_future(stop_streaming.wait())], timeout=0.1)

    upstream = await RecordingUpstream(sse).start()
    stack = start_stack(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, shutdown_timeout="1s")
    with stack.proc:
        conn = await stack.client().connect(HOST)
        resp = await conn.request("GET", "/events", host=HOST, headers=[("Accept", "text/event-stream")])
        body = resp.iter_body()
        assert (await anext(body)).startswith(b"data: 0")
        loop = asyncio.get_running_loop()
        stack.proc.proc.send_signal(signal.SIGTERM)
        signalled = loop.time()
        await stack.wait_log("waiting for requests in flight")
        events_after_signal = 0
        with pytest.raises(TunnelClientError):  # the stream is cut at the deadline, not before
            async for piece in body:
                events_after_signal += piece.count(b"data: ")
        cut = loop.time() - signalled
        assert events_after_signal >= 3, "the stream stopped at the signal instead of the deadline"
        assert 0.9 <= cut < 4.0
        assert await asyncio.to_thread(stack.proc.proc.wait, 10) == 0
        await stack.wait_log("cutting requests in flight", 1)
    stop_streaming.set()
    await upstream.close()


async def test_second_signal_exits_at_once(tmp: Path, pki: PKI) -> None:
    held = Held()
    await held.upstream.start()
    stack = start_stack(tmp, pki, {"echo": f"http://127.0.0.1:{held.upstream.port}"}, shutdown_timeout="60s")
    with stack.proc:
        conn = await stack.client().connect(HOST)
        in_flight = asyncio.create_task(conn.request("GET", "/slow", host=HOST))
        await asyncio.wait_for(held.upstream.arrived.wait(), 10)
        stack.proc.proc.send_signal(signal.SIGTERM)
        await stack.wait_log("waiting for requests in flight")
        loop = asyncio.get_running_loop()
        start = loop.time()
        stack.proc.proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(stack.proc.proc.wait, 10)
        assert loop.time() - start < 3.0, "the second signal waited for the drain"
        assert code == 1
        await stack.wait_log("second signal, exiting now")
        in_flight.cancel()
    held.release.set()
    await held.upstream.close()
