"""The upstream response timeout: one periodic check for the exchanges waiting for a head.

The forwarder keeps no timer per request; a check every 1/8 of the timeout fails the overdue
ones. The timeout covers the response head only: a body may take as long as it takes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from mcp_tunnel.proxy.policy import check_interval
from support.pki import PKI
from support.proxy import start_proxy
from support.upstreams import Received, RecordingUpstream

HOST = "echo.tunnel.test"
TIMEOUT = 0.2


async def test_head_in_time_then_a_slow_body_is_not_cut(tmp: Path, pki: PKI) -> None:
    async def slow_body(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        await writer.drain()
        await asyncio.sleep(TIMEOUT * 3)
        writer.write(b"cd")

    upstream = await RecordingUpstream(slow_body).start()
    proxy = await start_proxy(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, limits={"upstream_response_timeout": "200ms"}
    )
    conn = await proxy.client().connect(HOST)
    resp = await conn.request("GET", "/stream", host=HOST)
    assert resp.status == 200
    assert await resp.read() == b"abcd"
    assert not proxy.server.forwarder._waiting
    await conn.close()
    await proxy.stop()
    await upstream.close()


async def test_every_overdue_exchange_gets_504_in_time_and_the_check_stops(tmp: Path, pki: PKI) -> None:
    never = asyncio.Event()

    async def silent(req: Received, writer: asyncio.StreamWriter) -> None:
        await never.wait()

    upstream = await RecordingUpstream(silent).start()
    proxy = await start_proxy(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, limits={"upstream_response_timeout": "200ms"}
    )
    loop = asyncio.get_running_loop()
    conns = [await proxy.client().connect(HOST) for _ in range(3)]

    async def timed(i: int) -> float:
        await asyncio.sleep(i * 0.07)  # staggered: they fall due between two checks
        start = loop.time()
        resp = await conns[i].request("GET", f"/slow{i}", host=HOST)
        assert (resp.status, await resp.read()) == (504, b"Upstream did not answer in time\n")
        return loop.time() - start

    took = await asyncio.gather(*(timed(i) for i in range(3)))
    late = check_interval(TIMEOUT) + 0.5  # one check interval, plus slack for a loaded machine
    assert all(TIMEOUT <= t < TIMEOUT + late for t in took), took
    assert not proxy.server.forwarder._waiting
    deadline = loop.time() + 5
    while proxy.server.forwarder._check is not None:  # nothing waits: the periodic check stops
        assert loop.time() < deadline, "the periodic check kept running with nothing to check"
        await asyncio.sleep(check_interval(TIMEOUT))
    assert proxy.log_has('error="upstream response timeout"')
    for conn in conns:
        await conn.close()
    await proxy.stop()
    never.set()
    await upstream.close()


def test_check_interval_bounds() -> None:
    assert check_interval(300.0) == 1.0
    assert check_interval(0.2) == 0.025
    assert check_interval(0.01) == 0.02
