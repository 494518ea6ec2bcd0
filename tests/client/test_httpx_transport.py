"""`TunnelTransport`: a request cancelled at any stage takes its tunnel with it, so the proxy
aborts the upstream exchange at once and nothing is left open until the client closes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx2

from client.hanging import HangingUpstream
from mcp_tunnel.client.httpx_transport import TunnelTransport
from mcp_tunnel.client.tunnel_client import TunnelClient, client_ssl_context
from support.pki import PKI
from support.proxy import start_proxy

HOST = "echo.tunnel.test"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def until_true(check: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)  # polling with a deadline


async def _cancel_after(tmp: Path, pki: PKI, prefix: bytes, *, read_first: bool) -> float:
    up = await HangingUpstream(prefix).start()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    transport = TunnelTransport(proxy.client())
    first = asyncio.Event()

    async def call(http: httpx2.AsyncClient) -> None:
        async with http.stream("POST", f"https://{HOST}/mcp", content=b"{}") as resp:
            async for _ in resp.aiter_raw():
                first.set()

    async with httpx2.AsyncClient(transport=transport) as http:
        task = asyncio.create_task(call(http))
        await asyncio.wait_for(first.wait() if read_first else up.got_request.wait(), 5)
        started = time.perf_counter()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert transport.open_connections == 0  # before the client closes: nothing held
        await asyncio.wait_for(up.closed.wait(), 5)
        elapsed = up.closed_at - started
        await until_true(lambda: not proxy.server.tunnels)
    await proxy.stop()
    await up.close()
    return elapsed


async def test_cancel_while_waiting_for_the_head_closes_the_tunnel(tmp: Path, pki: PKI) -> None:
    assert await _cancel_after(tmp, pki, b"", read_first=False) < 1.0


async def test_cancel_while_reading_the_body_closes_the_tunnel(tmp: Path, pki: PKI) -> None:
    elapsed = await _cancel_after(tmp, pki, HEAD + b"7\r\ndata: 1\r\n", read_first=True)
    assert elapsed < 1.0


async def test_cancel_while_connecting_leaves_no_socket(pki: PKI) -> None:
    """A proxy that never answers the upgrade: the cancelled connect closes its socket."""
    accepted = asyncio.Event()
    eof = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # until the client drops the connection
        eof.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = TunnelTransport(TunnelClient(f"ws://127.0.0.1:{port}/", client_ssl_context(str(pki.ca_file))))
    async with httpx2.AsyncClient(transport=transport) as http:
        task = asyncio.create_task(http.get(f"https://{HOST}/mcp"))
        await asyncio.wait_for(accepted.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.wait_for(eof.wait(), 2)
        assert transport.open_connections == 0
    server.close()


async def test_finished_requests_reuse_the_tunnel(tmp: Path, pki: PKI) -> None:
    up = await HangingUpstream(b"").start()
    up.rest = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    up.release.set()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    transport = TunnelTransport(proxy.client())
    async with httpx2.AsyncClient(transport=transport) as http:
        for _ in range(3):
            assert (await http.get(f"https://{HOST}/x")).text == "ok"
        assert transport.open_connections == 1
    await proxy.stop()
    await up.close()
