"""Exactly one response per request reaches the client, whatever the upstream writes.

Upstream connections are pooled across tunnels, so bytes an upstream sends beyond the answer
owed would otherwise become the next request's answer, possibly another client's. Each shape
here must close that upstream connection (logged, counted) and never reach a client.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from support.pki import PKI
from support.proxy import RunningProxy, start_proxy
from support.upstreams import Received, RecordingUpstream

HOST = "echo.tunnel.test"
EVIL = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Evil: 1\r\n\r\nEVIL!"


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


# Each misbehaves on /first only. (An upstream that sends a stray response just as a pooled
# connection is reused cannot be told from one answering the new request: no HTTP/1.1 client
# can, docs/architecture.md. What is checked is everything that can be seen.)


async def _two_in_one_write(req: Received, writer: asyncio.StreamWriter) -> None:
    writer.write(_ok(req.target.encode()) + (EVIL if req.target == "/first" else b""))


async def _second_after_a_pause(req: Received, writer: asyncio.StreamWriter) -> None:
    writer.write(_ok(req.target.encode()))
    if req.target == "/first":
        await writer.drain()
        await asyncio.sleep(0.05)  # a separate read on the proxy's side: the shape, not a sync point
        writer.write(EVIL)


async def _after_204(req: Received, writer: asyncio.StreamWriter) -> None:
    if req.target == "/first":
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n" + EVIL)
    else:
        writer.write(_ok(req.target.encode()))


async def _body_after_head(req: Received, writer: asyncio.StreamWriter) -> None:
    if req.method == "HEAD":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!")
    else:
        writer.write(_ok(req.target.encode()))


async def _flood_of_1xx(req: Received, writer: asyncio.StreamWriter) -> None:
    if req.target == "/first":
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 40 + _ok(b"late"))
    else:
        writer.write(_ok(req.target.encode()))


async def _huge_head(req: Received, writer: asyncio.StreamWriter) -> None:
    if req.target == "/first":
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 100_000 + b"\r\nContent-Length: 0\r\n\r\n")
    else:
        writer.write(_ok(req.target.encode()))


async def _start(tmp: Path, pki: PKI, handler: object) -> tuple[RunningProxy, RecordingUpstream]:
    upstream = await RecordingUpstream(handler=handler).start()  # type: ignore[arg-type]
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, log_level="info")
    return proxy, upstream


@pytest.mark.parametrize(
    "handler",
    [_two_in_one_write, _second_after_a_pause, _after_204],
    ids=["two responses in one write", "a second response later", "a response after a 204"],
)
async def test_a_second_response_reaches_no_client(tmp: Path, pki: PKI, handler: object) -> None:
    proxy, upstream = await _start(tmp, pki, handler)
    first = await proxy.client().connect(HOST)
    resp = await first.request("GET", "/first", host=HOST)
    body = await resp.read()
    assert resp.header("x-evil") is None and b"EVIL" not in body
    await _wait_closed_upstream(proxy)
    # The next request on the same tunnel and one on another tunnel each get their own answer.
    for conn in (first, await proxy.client().connect(HOST)):
        resp = await conn.request("GET", "/next", host=HOST)
        assert resp.status == 200 and resp.header("x-evil") is None
        assert await resp.read() == b"/next"
    assert upstream.connections >= 2  # the poisoned connection was not reused
    assert proxy.server.metrics.upstream_unsolicited_total.labels("echo")._value.get() >= 1
    await proxy.stop()
    await upstream.close()


async def test_a_body_after_a_head_answer_reaches_no_client(tmp: Path, pki: PKI) -> None:
    proxy, upstream = await _start(tmp, pki, _body_after_head)
    conn = await proxy.client().connect(HOST)
    resp = await conn.request("HEAD", "/first", host=HOST)
    assert resp.status == 200
    resp = await conn.request("GET", "/next", host=HOST)
    assert resp.status == 200 and await resp.read() == b"/next"
    await proxy.stop()
    await upstream.close()


@pytest.mark.parametrize("handler", [_flood_of_1xx, _huge_head], ids=["a flood of 1xx", "a 100 KB head"])
async def test_an_unbounded_response_head_is_a_502(tmp: Path, pki: PKI, handler: object) -> None:
    proxy, upstream = await _start(tmp, pki, handler)
    conn = await proxy.client().connect(HOST)
    resp = await conn.request("GET", "/first", host=HOST)
    statuses = [resp.status]
    while statuses[-1] < 200:  # the interim responses passed through before the limit
        resp = await conn.read_response()
        statuses.append(resp.status)
    assert statuses[-1] == 502 and len(statuses) <= 17
    await resp.read()
    resp = await (await proxy.client().connect(HOST)).request("GET", "/next", host=HOST)
    assert resp.status == 200 and await resp.read() == b"/next"
    await proxy.stop()
    await upstream.close()


async def test_bytes_on_an_idle_pooled_connection_close_it(tmp: Path, pki: PKI) -> None:
    """An upstream that talks while its connection waits in the pool: never heard by a client."""
    talk = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def handler(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(_ok(req.target.encode()))
        writers.append(writer)
        talk.set()

    proxy, upstream = await _start(tmp, pki, handler)
    conn = await proxy.client().connect(HOST)
    resp = await conn.request("GET", "/first", host=HOST)
    assert await resp.read() == b"/first"
    await talk.wait()
    writers[0].write(EVIL)  # while the connection sits idle in the proxy's pool
    await _wait_closed_upstream(proxy)
    resp = await conn.request("GET", "/next", host=HOST)
    assert resp.header("x-evil") is None and await resp.read() == b"/next"
    assert upstream.connections == 2
    await proxy.stop()
    await upstream.close()


async def _wait_closed_upstream(proxy: RunningProxy) -> None:
    from support.ops import poll

    await poll(
        lambda: proxy.log_has("upstream sent bytes outside a response, connection closed"),
        what="the unsolicited bytes to be noticed",
    )


async def test_the_proxys_own_answer_to_head_has_no_body(tmp: Path, pki: PKI) -> None:
    """Its body would be read as the start of the next response on the tunnel."""
    proxy, upstream = await _start(tmp, pki, _two_in_one_write)
    conn = await proxy.client().connect(HOST)
    # Pipelined: a HEAD the proxy answers itself (no route), then a GET; read as raw plaintext.
    await conn.send_raw(
        b"HEAD / HTTP/1.1\r\nHost: nowhere.tunnel.test\r\n\r\n"
        + f"GET /next HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    )
    async with asyncio.timeout(10):
        while not bytes(conn._plain).endswith(b"/next"):
            assert await conn._recv(), "the tunnel ended early"
    first, _, rest = bytes(conn._plain).partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 502 ") and b"Content-Length: 29" in first
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")  # nothing between the two heads
    await proxy.stop()
    await upstream.close()
