"""Request bodies a client gets wrong: each answered at once with its status, never completed upstream.

A malformed chunked body, one over `limits.max_body_bytes` and one that does not arrive within
`limits.body_timeout` end their exchange at once (400, 413, 408), whether or not the head has
already gone upstream, log one line and close the tunnel after the answer. A tunnel that goes
away mid-upload ends its exchange as 499, with nothing left dangling in asyncio.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from mcp_tunnel.client.tunnel_client import TunnelConnection
from mcp_tunnel.errors import TunnelClientError
from support.ops import poll
from support.pki import PKI
from support.proxy import RunningProxy, start_proxy
from support.upstreams import RecordingUpstream

HOST = "echo.tunnel.test"
HEAD = f"POST /mcp HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()

# Each shape is refused by llhttp partway through the body; the proxy must answer, not hang.
MALFORMED = {
    "bad size": b"zz\r\nabc\r\n0\r\n\r\n",
    "size overflow": b"1ffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "data without CRLF": b"3\r\nabcXY0\r\n\r\n",
    "trailer without colon": b"3\r\nabc\r\n0\r\nno-colon-here\r\n\r\n",
    "leading space in size": b" 3\r\nabc\r\n0\r\n\r\n",
    "bare LF": b"3\nabc\n0\n\n",
}


async def _proxy(tmp: Path, pki: PKI, upstream: RecordingUpstream, **limits: object) -> RunningProxy:
    # A long response timeout: an answer that waited for it would fail the test's deadline.
    return await start_proxy(
        tmp,
        pki,
        {"echo": f"http://127.0.0.1:{upstream.port}"},
        limits={"upstream_response_timeout": "60s", **limits},
        log_level="info",
    )


async def _answer(conn: TunnelConnection, within: float = 5.0) -> int:
    resp = await asyncio.wait_for(conn.read_response(), within)
    await resp.read()
    return resp.status


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_chunked_body_is_answered_400_at_once(
    tmp: Path, pki: PKI, upstream: RecordingUpstream, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await _proxy(tmp, pki, upstream)
    conn = await proxy.client().connect(HOST)
    # The head alone first, so the exchange is under way upstream when the body breaks.
    await conn.send_raw(HEAD + b"3\r\nabc\r\n")
    await poll(lambda: upstream.connections >= 1, what="the head to go upstream")
    await conn.send_raw(body)
    assert await _answer(conn) == 400
    await poll(lambda: conn.closed, what="the tunnel to close after the 400")
    assert upstream.requests == []  # no complete request ever reached it
    lines = proxy.log_lines()
    assert sum("request body refused" in line for line in lines) == 1
    assert any("status=400" in line and "request completed" in line for line in lines)
    assert not any("Traceback" in line for line in lines)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await proxy.stop()


async def test_chunked_body_over_the_limit_gets_413(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await _proxy(tmp, pki, upstream, max_body_bytes=1000)
    conn = await proxy.client().connect(HOST)
    await conn.send_raw(HEAD + b"200\r\n" + b"x" * 512 + b"\r\n")
    await poll(lambda: upstream.connections >= 1, what="the head to go upstream")
    await conn.send_raw(b"400\r\n" + b"y" * 1024 + b"\r\n")  # 1,536 bytes: over
    assert await _answer(conn) == 413
    await poll(lambda: conn.closed, what="the tunnel to close after the 413")
    assert upstream.requests == []
    assert proxy.log_has("request body over the limit")
    await proxy.stop()


async def test_a_body_that_stops_arriving_gets_408(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await _proxy(tmp, pki, upstream, body_timeout="400ms")
    conn = await proxy.client().connect(HOST)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await conn.send_raw(HEAD + b"3\r\nabc\r\n")  # and nothing more
    assert await _answer(conn) == 408
    assert loop.time() - start >= 0.4
    await poll(lambda: conn.closed, what="the tunnel to close after the 408")
    assert upstream.requests == []
    await proxy.stop()


async def test_a_body_dribbled_under_the_timeout_still_gets_408(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """The timeout covers the whole body, so a byte now and then does not keep it open."""
    proxy = await _proxy(tmp, pki, upstream, body_timeout="600ms")
    conn = await proxy.client().connect(HOST)
    await conn.send_raw(HEAD)
    answered = asyncio.ensure_future(_answer(conn, within=5.0))
    sent = 0
    while not answered.done() and sent < 100:
        try:
            await conn.send_raw(b"1\r\nx\r\n")
        except TunnelClientError:  # the proxy answered and closed between two bytes
            break
        sent += 1
        await asyncio.wait({answered}, timeout=0.05)
    assert await answered == 408
    assert 5 <= sent < 100
    await proxy.stop()


async def test_a_body_in_time_is_not_cut(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await _proxy(tmp, pki, upstream, body_timeout="2s")
    conn = await proxy.client().connect(HOST)
    await conn.send_raw(HEAD + b"3\r\nabc\r\n")
    await poll(lambda: upstream.connections >= 1, what="the head to go upstream")
    await conn.send_raw(b"2\r\nde\r\n0\r\n\r\n")
    assert await _answer(conn) == 200
    assert upstream.requests[0].body == b"abcde"
    # The tunnel stays open and serves the next request after the body's deadline would have passed.
    resp = await conn.request("GET", "/after", host=HOST)
    assert resp.status == 200
    await resp.read()
    await proxy.stop()


async def test_tunnel_gone_mid_upload_leaves_nothing_unretrieved(
    tmp: Path, pki: PKI, upstream: RecordingUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await _proxy(tmp, pki, upstream)
    conn = await proxy.client().connect(HOST)
    await conn.send_raw(HEAD + b"3\r\nabc\r\n")
    await poll(lambda: upstream.connections >= 1, what="the head to go upstream")
    conn.abort()
    await poll(lambda: proxy.log_has("status=499"), what="the exchange to end as 499")
    import gc

    gc.collect()  # an unretrieved task exception is reported when the task is collected
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not any("Traceback" in line for line in proxy.log_lines())
    await proxy.stop()
