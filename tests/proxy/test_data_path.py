"""The data path end to end: real WebSocket, real inner TLS, real HTTP/1.1 to a real upstream."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mcp_tunnel.errors import TunnelClientError
from support.pki import PKI
from support.proxy import start_proxy
from support.upstreams import Received, RecordingUpstream


async def test_request_and_headers_forwarded(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(pki.host("echo"))
    resp = await conn.request(
        "POST",
        "/mcp?token=abc&x=1",
        host=pki.host("echo"),
        headers=[
            ("Authorization", "Bearer secret-value"),
            ("Mcp-Session-Id", "s-1"),
            ("MCP-Protocol-Version", "2025-06-18"),
            ("Last-Event-ID", "7"),
            ("Accept", "application/json, text/event-stream"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", "for=6.6.6.6"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "drop me"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
        ],
        body=b'{"jsonrpc":"2.0"}',
    )
    assert resp.status == 200
    assert await resp.read() == b"POST /mcp?token=abc&x=1 17\n"
    (req,) = upstream.requests
    assert req.target == "/mcp?token=abc&x=1"
    assert req.header("host") == pki.host("echo")
    assert req.header("x-forwarded-proto") == "https"
    assert req.all("x-forwarded-host") == [pki.host("echo")]
    assert req.header("x-forwarded-for") is None
    assert req.header("forwarded") is None
    for hop in ("connection", "x-hop", "keep-alive", "proxy-connection", "te"):
        assert req.header(hop) is None, hop
    assert req.header("authorization") == "Bearer secret-value"
    assert req.header("mcp-session-id") == "s-1"
    assert req.header("mcp-protocol-version") == "2025-06-18"
    assert req.header("last-event-id") == "7"
    assert req.header("accept") == "application/json, text/event-stream"
    assert req.body == b'{"jsonrpc":"2.0"}'
    assert proxy.log_has('msg="route configured" route=echo host=echo.tunnel.test')
    assert proxy.log_has('msg="request started" method=POST host=echo.tunnel.test path=/mcp')
    assert not any("token=abc" in line or "secret-value" in line for line in proxy.log_lines())
    await conn.close()
    await proxy.stop()


async def test_host_header_upstream_option(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, upstream={"host_header": "upstream"}
    )
    conn = await proxy.client().connect(pki.host("echo"))
    resp = await conn.request("GET", "/", host=pki.host("echo"))
    await resp.read()
    assert upstream.requests[0].header("host") == f"127.0.0.1:{upstream.port}"
    assert upstream.requests[0].header("x-forwarded-host") == pki.host("echo")
    await conn.close()
    await proxy.stop()


async def test_full_hostname_route_and_case_port_dot(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(tmp, pki, {"Wiki.Tunnel.Test": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(pki.host("wiki"))
    resp = await conn.request("GET", "/a", host="WIKI.tunnel.test.:443")
    assert resp.status == 200
    await resp.read()
    await conn.close()
    await proxy.stop()


async def test_many_requests_one_connection_keepalive(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(pki.host("echo"))
    for i in range(20):
        resp = await conn.request("GET", f"/n/{i}", host=pki.host("echo"))
        assert await resp.read() == f"GET /n/{i} 0\n".encode()
    assert len(upstream.requests) == 20
    assert len(proxy.server.tunnels) == 1
    assert upstream.connections == 1  # upstream keep-alive reused too
    await conn.close()
    await proxy.stop()


async def test_tls_stream_in_one_byte_messages(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client(max_message=1).connect(pki.host("echo"))
    resp = await conn.request("POST", "/one", host=pki.host("echo"), body=b"x" * 300)
    assert await resp.read() == b"POST /one 300\n"
    await conn.close()
    await proxy.stop()


async def test_many_records_coalesced_in_one_message(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client(max_message=1 << 20).connect(pki.host("echo"))
    host = pki.host("echo")
    # Three pipelined requests and a 100 KiB body: several TLS records, one WebSocket message.
    body = b"y" * (100 * 1024)
    wire = b"".join(
        f"POST /p/{i} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        for i in range(3)
    )
    conn.tls.send(wire)
    records = conn.tls.outgoing()
    assert len(records) > 3 * 16384  # more than one record's worth
    await conn.send_message(records)
    for i in range(3):
        resp = await conn.read_response()
        assert await resp.read() == f"POST /p/{i} {len(body)}\n".encode()
    await conn.close()
    await proxy.stop()


async def test_text_message_closes_1003(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    async with connect(proxy.url, compression=None) as ws:
        await ws.send("hello")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1003
    await proxy.stop()


async def test_message_over_one_mib_closes_1009(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    async with connect(proxy.url, compression=None, max_size=None) as ws:
        await ws.send(b"\x16" * ((1 << 20) + 1))
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    await proxy.stop()


async def test_no_compression_or_subprotocol_negotiated(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    async with connect(proxy.url, subprotocols=["mcp-tunnel"], compression="deflate") as ws:  # type: ignore[list-item]
        assert ws.subprotocol is None
        assert ws.response is not None
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
    await proxy.stop()


async def test_sse_not_buffered(tmp: Path, pki: PKI) -> None:
    """The upstream sends one event, then waits until the client has seen it before the next."""
    client_saw_first = asyncio.Event()

    async def sse(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        event = b"data: one\n\n"
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.wait_for(client_saw_first.wait(), 10)
        event = b"data: two\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))

    up = await RecordingUpstream(handler=sse).start()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    conn = await proxy.client().connect(pki.host("echo"))
    resp = await conn.request("GET", "/sse", host=pki.host("echo"), headers=[("Accept", "text/event-stream")])
    assert resp.header("content-type") == "text/event-stream"
    pieces = []
    async for piece in resp.iter_body():
        pieces.append(piece)
        if b"data: one" in b"".join(pieces):
            client_saw_first.set()
    assert b"".join(pieces) == b"data: one\n\ndata: two\n\n"
    await conn.close()
    await proxy.stop()
    await up.close()


async def test_redirect_passed_back_not_followed(tmp: Path, pki: PKI) -> None:
    async def redirect(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/elsewhere\r\nContent-Length: 0\r\n\r\n"
        )

    up = await RecordingUpstream(handler=redirect).start()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    conn = await proxy.client().connect(pki.host("echo"))
    resp = await conn.request("GET", "/", host=pki.host("echo"))
    assert resp.status == 302
    assert resp.header("location") == "http://10.0.0.1/elsewhere"
    assert await resp.read() == b""
    assert len(up.requests) == 1
    await conn.close()
    await proxy.stop()
    await up.close()


async def test_streamed_request_body(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(pki.host("echo"))

    async def body():  # type: ignore[no-untyped-def]
        for i in range(5):
            yield b"part%d;" % i

    resp = await conn.request("POST", "/up", host=pki.host("echo"), body=body())
    assert await resp.read() == b"POST /up 30\n"
    assert upstream.requests[0].body == b"part0;part1;part2;part3;part4;"
    assert upstream.requests[0].header("transfer-encoding") == "chunked"
    await conn.close()
    await proxy.stop()


async def test_client_disconnect_cancels_upstream(tmp: Path, pki: PKI) -> None:
    upstream_saw_close = asyncio.Event()
    started = asyncio.Event()

    async def slow(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"5\r\nfirst\r\n")
        await writer.drain()
        started.set()
        transport = writer.transport
        deadline = asyncio.get_running_loop().time() + 10
        while not transport.is_closing() and asyncio.get_running_loop().time() < deadline:
            try:
                writer.write(b"1\r\n.\r\n")
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.01)  # a ticking stream, not synchronisation
        upstream_saw_close.set()

    up = await RecordingUpstream(handler=slow).start()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    conn = await proxy.client().connect(pki.host("echo"))
    await conn.request("GET", "/stream", host=pki.host("echo"))
    await asyncio.wait_for(started.wait(), 5)
    conn.abort()  # the client vanishes without any close
    await asyncio.wait_for(upstream_saw_close.wait(), 5)
    await proxy.stop()
    await up.close()


async def test_upstream_dying_mid_body_is_a_visible_truncation(tmp: Path, pki: PKI) -> None:
    async def dies(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"z" * 10)
        await writer.drain()
        writer.transport.abort()

    up = await RecordingUpstream(handler=dies).start()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    conn = await proxy.client().connect(pki.host("echo"))
    resp = await conn.request("GET", "/", host=pki.host("echo"))
    with pytest.raises(TunnelClientError) as info:
        await resp.read()
    assert info.value.stage == "http"
    await proxy.stop()
    await up.close()


async def test_plain_http_on_listener_gets_400(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    for request in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
        writer.write(request)
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.startswith(b"HTTP/1.1 400 "), data
        assert b"expects a WebSocket carrying TLS" in data
        writer.close()
    await proxy.stop()


async def test_raw_tls_on_listener_is_logged_and_closed(tmp: Path, pki: PKI) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": "http://127.0.0.1:9"})
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", proxy.server.port, ssl=ctx, server_hostname=pki.host("echo")
            ),
            5,
        )
    assert proxy.log_has("the listener is plain WebSocket, TLS belongs inside it")
    await proxy.stop()


async def test_graceful_close_sends_close_notify_then_1000(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(pki.host("echo"))
    resp = await conn.request("GET", "/", host=pki.host("echo"), headers=[("Connection", "close")])
    assert resp.header("connection") == "close"
    await resp.read()
    # The proxy closes: close_notify arrives inside the stream, then the WebSocket close.
    while await conn._recv():
        pass
    assert conn.tls.closed_by_peer
    assert conn.close_code == 1000
    await proxy.stop()


async def test_close_delimited_upstream_body_arrives_whole(tmp: Path, pki: PKI) -> None:
    """No Content-Length, no chunking: the body ends when the upstream closes; the client gets it
    re-chunked and complete, and the tunnel stays usable."""

    async def close_delimited(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    up = await RecordingUpstream(handler=close_delimited).start()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    conn = await proxy.client().connect(pki.host("echo"))
    for _ in range(2):
        resp = await conn.request("GET", "/", host=pki.host("echo"))
        assert resp.header("transfer-encoding") == "chunked"
        assert await resp.read() == b"all of it"
    await conn.close()
    await proxy.stop()
    await up.close()


async def test_idle_tunnel_lets_its_request_parser_go(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """Between requests a tunnel holds no parser; a request that then arrives in pieces still parses."""
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(pki.host("echo"))
    host = pki.host("echo")
    (tunnel,) = proxy.server.tunnels
    assert tunnel.http is not None and tunnel.http.parser is None  # none before the first request
    resp = await conn.request("GET", "/one", host=host)
    assert await resp.read() == b"GET /one 0\n"
    assert tunnel.http.parser is None
    await conn.send_raw(b"POST /two HTTP/1.1\r\nHo")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while tunnel.http.parser is None:  # the half request has reached the proxy
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    await conn.send_raw(f"st: {host}\r\nContent-Length: 3\r\n\r\nabc".encode())
    resp = await conn.read_response()
    assert await resp.read() == b"POST /two 3\n"
    assert [r.target for r in upstream.requests] == ["/one", "/two"]
    await conn.close()
    await proxy.stop()
