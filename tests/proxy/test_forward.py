"""Exchanges begun without a task (`Forwarder.begin`): a request on a warm pooled connection is
written upstream once the tunnel's read is parsed and answered from the upstream's callbacks.
Each test warms the pool first, so the request under test takes that path, and checks it ends
as the task-run path ends: retried, cut, timed out, kept in order. The last one needs no pool:
a tunnel broken before its exchange began."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from mcp_tunnel.ws_frames import BINARY, TEXT, encode_frame
from support.ops import start_stack
from support.pki import PKI
from support.upstreams import Received, RecordingUpstream

HOST = "echo.tunnel.test"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


def _routes(upstream: RecordingUpstream) -> dict[str, str]:
    return {"echo": f"http://127.0.0.1:{upstream.port}"}


async def test_a_pooled_connection_the_upstream_dropped_is_retried_on_a_fresh_one(
    tmp: Path, pki: PKI
) -> None:
    served: dict[asyncio.StreamWriter, int] = {}

    async def one_per_connection(req: Received, writer: asyncio.StreamWriter) -> None:
        served[writer] = served.get(writer, 0) + 1
        if served[writer] > 1:
            writer.transport.abort()  # gone before answering: the request never got there
            return
        writer.write(OK)

    upstream = await RecordingUpstream(one_per_connection).start()
    stack = start_stack(tmp, pki, _routes(upstream))
    with stack.proc:
        conn = await stack.client().connect(HOST)
        for path in ("/one", "/two"):
            resp = await conn.request("POST", path, host=HOST, body=b"body")
            assert (resp.status, await resp.read()) == (200, b"ok\n")
        await conn.close()
        assert [(r.target, r.body) for r in upstream.requests] == [
            ("/one", b"body"),
            ("/two", b"body"),  # on the pooled connection, dropped
            ("/two", b"body"),  # again, on a new one
        ]
        assert upstream.connections == 2
        line = await stack.wait_log('msg="request completed"', 2)
        assert "path=/two status=200" in line
        assert stack.proc.stop() == 0
    await upstream.close()


async def test_a_second_attempt_dials_afresh_rather_than_take_another_idle_connection(
    tmp: Path, pki: PKI
) -> None:
    """Two idle connections the upstream has both dropped: the retry after the first must not
    take the second (it would be a 502 where a new connection answers)."""
    served: dict[asyncio.StreamWriter, int] = {}
    both = asyncio.Event()

    async def one_per_connection(req: Received, writer: asyncio.StreamWriter) -> None:
        served[writer] = served.get(writer, 0) + 1
        if served[writer] > 1:
            writer.transport.abort()  # this connection went stale in the pool
            return
        if req.target.startswith("/warm"):
            if len(served) == 2:
                both.set()
            await asyncio.wait_for(both.wait(), 10)  # both warm-ups in flight: two connections
        writer.write(OK)

    upstream = await RecordingUpstream(one_per_connection).start()
    stack = start_stack(tmp, pki, _routes(upstream))
    with stack.proc:
        first, second = stack.client(), stack.client()
        a, b = await first.connect(HOST), await second.connect(HOST)
        warm = await asyncio.gather(
            a.request("GET", "/warm1", host=HOST), b.request("GET", "/warm2", host=HOST)
        )
        assert [await r.read() for r in warm] == [b"ok\n", b"ok\n"]
        assert upstream.connections == 2
        resp = await a.request("GET", "/retry", host=HOST)
        assert (resp.status, await resp.read()) == (200, b"ok\n")
        assert sorted(r.target for r in upstream.requests) == ["/retry", "/retry", "/warm1", "/warm2"]
        assert upstream.connections == 3  # the second attempt on a new connection
        await a.close()
        await b.close()
        assert stack.proc.stop() == 0
    await upstream.close()


async def test_a_pooled_connection_dropped_and_then_a_fresh_one_is_a_502(tmp: Path, pki: PKI) -> None:
    async def answers_warm_only(req: Received, writer: asyncio.StreamWriter) -> None:
        if req.target == "/warm":
            writer.write(OK)
        else:
            writer.transport.abort()

    upstream = await RecordingUpstream(answers_warm_only).start()
    stack = start_stack(tmp, pki, _routes(upstream))
    with stack.proc:
        conn = await stack.client().connect(HOST)
        assert await (await conn.request("GET", "/warm", host=HOST)).read() == b"ok\n"
        resp = await conn.request("GET", "/lost", host=HOST)
        assert resp.status == 502
        assert [r.target for r in upstream.requests] == ["/warm", "/lost", "/lost"]
        assert upstream.connections == 2
        line = await stack.wait_log('msg="request completed"', 2)
        assert "path=/lost status=502" in line and 'error="upstream closed before responding"' in line
        await conn.close()
        assert stack.proc.stop() == 0
    await upstream.close()


async def test_a_tunnel_gone_mid_answer_closes_the_upstream_connection(tmp: Path, pki: PKI) -> None:
    hung_up = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while (await reader.readuntil(b"\r\n\r\n")).startswith(b"GET /warm "):
                writer.write(OK)
            await reader.read()  # sits on the request until the proxy lets the connection go
            hung_up.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stack = start_stack(tmp, pki, {"echo": f"http://127.0.0.1:{port}"})
    with stack.proc:
        conn = await stack.client().connect(HOST)
        assert await (await conn.request("GET", "/warm", host=HOST)).read() == b"ok\n"
        await conn.send_raw(f"GET /sits HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        await stack.wait_log('msg="request started"', 2)
        conn.abort()  # the client vanishes without any close
        await asyncio.wait_for(hung_up.wait(), 10)
        line = await stack.wait_log('msg="request completed"', 2)
        assert "path=/sits status=499" in line and "cancelled" in line
        assert stack.proc.stop() == 0
    server.close()


async def test_a_response_timeout_on_a_pooled_connection_is_a_504(tmp: Path, pki: PKI) -> None:
    never = asyncio.Event()

    async def silent_once(req: Received, writer: asyncio.StreamWriter) -> None:
        if req.target == "/slow":
            await never.wait()
        else:
            writer.write(OK)

    upstream = await RecordingUpstream(silent_once).start()
    stack = start_stack(tmp, pki, _routes(upstream), limits={"upstream_response_timeout": "300ms"})
    with stack.proc:
        conn = await stack.client().connect(HOST)
        assert await (await conn.request("GET", "/warm", host=HOST)).read() == b"ok\n"
        resp = await conn.request("GET", "/slow", host=HOST)
        assert (resp.status, await resp.read()) == (504, b"Upstream did not answer in time\n")
        resp = await conn.request("GET", "/after", host=HOST)
        assert (resp.status, await resp.read()) == (200, b"ok\n")
        assert upstream.connections == 2  # the connection that timed out was not pooled again
        await conn.close()
        assert stack.proc.stop() == 0
    never.set()
    await upstream.close()


async def test_pipelined_requests_behind_one_started_at_once_keep_their_order(tmp: Path, pki: PKI) -> None:
    release = asyncio.Event()

    async def held_first(req: Received, writer: asyncio.StreamWriter) -> None:
        if req.target == "/first":
            await release.wait()
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(req.target)}\r\n\r\n{req.target}".encode())

    upstream = await RecordingUpstream(held_first).start()
    stack = start_stack(tmp, pki, _routes(upstream))
    with stack.proc:
        conn = await stack.client().connect(HOST)
        assert await (await conn.request("GET", "/warm", host=HOST)).read() == b"/warm"
        head = "GET {} HTTP/1.1\r\nHost: " + HOST + "\r\n\r\n"
        await conn.send_raw((head.format("/first") + head.format("/second")).encode())
        await asyncio.wait_for(upstream.arrived.wait(), 5)
        while len(upstream.requests) < 2:
            upstream.arrived.clear()
            await asyncio.wait_for(upstream.arrived.wait(), 5)
        assert [r.target for r in upstream.requests] == ["/warm", "/first"]
        release.set()
        assert [await (await conn.read_response()).read() for _ in range(2)] == [b"/first", b"/second"]
        await conn.close()
        assert stack.proc.stop() == 0
    await upstream.close()


async def test_a_request_whose_tunnel_breaks_in_the_same_read_never_reaches_the_upstream(
    tmp: Path, pki: PKI
) -> None:
    upstream = await RecordingUpstream().start()
    stack = start_stack(tmp, pki, _routes(upstream))
    with stack.proc:
        conn = await stack.client().connect(HOST)
        conn.tls.send(f"GET /never HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        request = encode_frame(BINARY, conn.tls.outgoing(), mask=True)
        assert conn.transport is not None
        conn.transport.write(request + encode_frame(TEXT, b"x", mask=True))  # one read: both frames
        line = await stack.wait_log('msg="request completed"')
        assert "path=/never status=499" in line and "cancelled" in line
        assert stack.count("text message on tunnel") == 1
        assert upstream.requests == [] and upstream.connections == 0
        conn.abort()
        assert stack.proc.stop() == 0
    await upstream.close()
