"""Requests the proxy answers itself: right status, one line of text, nothing reaches the upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.pki import PKI
from support.proxy import start_proxy
from support.upstreams import RecordingUpstream

HOST = "echo.tunnel.test"

CASES = {
    "cl_and_te": (
        f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "Bad request",  # llhttp refuses this shape before our own check would
    ),
    "absolute_form_mismatch": (
        f"GET http://other.tunnel.test/admin HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
        400,
        "request target does not match Host",
    ),
    "http10_without_host": ("GET / HTTP/1.0\r\n\r\n", 400, "missing Host"),
    "http11_without_host": ("GET / HTTP/1.1\r\n\r\n", 400, "missing Host"),
    "two_hosts": (f"GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: evil.test\r\n\r\n", 400, "more than one Host"),
    "malformed": ("GET / HTTP/1.1\r\nHost " + HOST + "\r\n\r\n", 400, "malformed HTTP request"),
    "bad_te": (
        f"POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
        "unsupported Transfer-Encoding",
    ),
    "conflicting_lengths": (
        f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
        "",
    ),
    # llhttp parses these two request lines itself; the proxy answers 505 (1.2, 3.0: llhttp's 400).
    "http2_request_line": (f"GET / HTTP/2.0\r\nHost: {HOST}\r\n\r\n", 505, "HTTP version not supported"),
    "http09_request_line": (f"GET / HTTP/0.9\r\nHost: {HOST}\r\n\r\n", 505, "HTTP version not supported"),
    # Ports routing would have stripped unread, sending these to `echo`.
    "host_port_not_numeric": (f"GET / HTTP/1.1\r\nHost: {HOST}:abc\r\n\r\n", 400, "invalid Host header"),
    "host_port_empty": (f"GET / HTTP/1.1\r\nHost: {HOST}:\r\n\r\n", 400, "invalid Host header"),
    "host_port_out_of_range": (f"GET / HTTP/1.1\r\nHost: {HOST}:65536\r\n\r\n", 400, "invalid Host header"),
    "absolute_form_bad_port": (
        f"GET http://{HOST}:0/ HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
        400,
        "invalid request target",
    ),
    "oversized_headers": (
        f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {'a' * 40000}\r\n\r\n",
        431,
        "Request header fields too large",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_refused_and_never_forwarded(
    name: str, tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    raw, status, phrase = CASES[name]
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(HOST)
    await conn.send_raw(raw.encode())
    resp = await conn.read_response()
    body = await resp.read()
    assert resp.status == status, body
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    assert phrase.encode() in body
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    assert upstream.requests == []
    assert upstream.connections == 0
    await proxy.stop()


async def test_dropped_headers_never_reach_the_upstream(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """Names with `_`, proxy credentials and client-address claims are dropped; the request is served.

    A pipelined second request shows the `_` framing look-alikes changed nothing: the body was
    framed by the real Content-Length, on a pooled connection other tunnels share.
    """
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(HOST)
    await conn.send_raw(
        (
            f"POST /mcp HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n"
            "Transfer_Encoding: chunked\r\nContent_Length: 99\r\nX_Forwarded_For: 6.6.6.6\r\n"
            "Proxy-Authorization: Basic dXNlcjpwYXNz\r\nX-Real-IP: 6.6.6.6\r\n"
            "X-Forwarded-Server: evil.example\r\nX-Kept: yes\r\n\r\nhello"
            f"GET /next HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
        ).encode()
    )
    for expected in (b"POST /mcp 5\n", b"GET /next 0\n"):
        resp = await conn.read_response()
        assert resp.status == 200
        assert await resp.read() == expected
    first, second = upstream.requests
    names = {name.lower() for name, _ in first.headers}
    assert not {n for n in names if "_" in n}, names
    for dropped in ("proxy-authorization", "x-real-ip", "x-forwarded-server", "transfer-encoding"):
        assert dropped not in names, dropped
    assert first.header("content-length") == "5" and first.body == b"hello"
    assert first.header("x-kept") == "yes"
    assert second.target == "/next"
    await proxy.stop()


async def test_absolute_form_matching_host_is_forwarded_as_origin_form(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(HOST)
    await conn.send_raw(f"GET https://{HOST}/x?q=1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    resp = await conn.read_response()
    assert resp.status == 200
    await resp.read()
    assert upstream.requests[0].target == "/x?q=1"
    await proxy.stop()


async def test_no_route(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect("nope.tunnel.test")
    resp = await conn.request("GET", "/", host="nope.tunnel.test")
    assert resp.status == 502
    assert await resp.read() == b"No route configured for host\n"
    assert proxy.log_has('msg="no route for host" host=nope.tunnel.test')
    # the connection stays usable after a proxy-made answer
    resp = await conn.request("GET", "/", host=HOST)
    assert resp.status == 200
    await resp.read()
    assert len(upstream.requests) == 1
    await proxy.stop()


async def test_suffix_needs_a_dot_boundary(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(HOST)
    resp = await conn.request("GET", "/", host="echotunnel.test")
    assert resp.status == 502
    await resp.read()
    assert upstream.requests == []
    await proxy.stop()


async def test_body_limit(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, limits={"max_body_bytes": 100}
    )
    conn = await proxy.client().connect(HOST)
    resp = await conn.request("POST", "/", host=HOST, body=b"x" * 101)
    assert resp.status == 413
    await resp.read()
    assert upstream.requests == []
    await proxy.stop()


async def test_upstream_unreachable_is_502_without_address(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    conn = await proxy.client().connect(HOST)
    resp = await conn.request("GET", "/", host=HOST)
    body = await resp.read()
    assert resp.status == 502
    assert b"127.0.0.1" not in body
    assert proxy.log_has("dial tcp 127.0.0.1:9: connect: connection refused")
    await proxy.stop()
