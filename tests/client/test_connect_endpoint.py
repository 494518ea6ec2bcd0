"""`connect` as a local server real MCP clients rely on: it notices a client that goes away, has
no head cut of its own, refuses DNS-rebinding Host and Origin values, bounds bodies, and keeps
tunnels warm across local connections."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2

from client.hanging import HangingUpstream
from mcp_tunnel.client import connect_cli
from mcp_tunnel.client.local_endpoint import DEFAULT_RESPONSE_TIMEOUT, LocalEndpoint
from mcp_tunnel.client.tunnel_client import TunnelClient, client_ssl_context
from mcp_tunnel.config import Limits
from mcp_tunnel.logs import Logger
from support.builds import SRC
from support.pki import PKI
from support.procs import BIN, free_port
from support.proxy import RunningProxy, start_proxy
from support.upstreams import RecordingUpstream

HOST = "echo.tunnel.test"
SLOW_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def _endpoint(proxy: RunningProxy, logs: io.StringIO | None = None, **kwargs: Any) -> LocalEndpoint:
    client = TunnelClient(proxy.url, client_ssl_context(str(proxy.pki.ca_file)), timeout=5)
    endpoint = LocalEndpoint(client, HOST, Logger("info", stream=logs or io.StringIO()), **kwargs)
    await endpoint.start("127.0.0.1", 0)
    return endpoint


def accepted(proxy: RunningProxy) -> float:
    value = proxy.server.metrics.registry.get_sample_value("mcp_tunnel_tunnels_accepted_total")
    return value or 0.0


async def until(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)  # polling with a deadline


async def _raw_request(port: int, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    return reader, writer


async def _client_goes_away(tmp: Path, pki: PKI, prefix: bytes, how: str) -> float:
    """Seconds from the local client's close (or half-close) to the upstream connection's end."""
    up = await HangingUpstream(prefix).start()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    logs = io.StringIO()
    endpoint = await _endpoint(proxy, logs)
    reader, writer = await _raw_request(
        endpoint.port, b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
    )
    await asyncio.wait_for(up.got_request.wait(), 5)
    if prefix:
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    started = time.perf_counter()
    if how == "close":
        writer.close()
    else:
        sock = writer.get_extra_info("socket")
        sock.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(up.closed.wait(), 5)
    elapsed = up.closed_at - started
    print(f"upstream closed {elapsed * 1000:.1f} ms after the local client's {how}")
    await until(lambda: not proxy.server.tunnels and not endpoint._busy)
    assert "client went away: tunnel exchange aborted" in logs.getvalue()
    writer.close()
    await endpoint.close()
    await proxy.stop()
    await up.close()
    return elapsed


async def test_client_closing_before_the_head_aborts_upstream_at_once(tmp: Path, pki: PKI) -> None:
    elapsed = await _client_goes_away(tmp, pki, b"", "close")
    assert elapsed < 1.0, elapsed


async def test_client_closing_mid_stream_aborts_upstream_at_once(tmp: Path, pki: PKI) -> None:
    elapsed = await _client_goes_away(tmp, pki, SLOW_HEAD + b"7\r\ndata: 1\r\n", "close")
    assert elapsed < 1.0, elapsed


async def test_client_half_close_mid_stream_aborts_upstream(tmp: Path, pki: PKI) -> None:
    elapsed = await _client_goes_away(tmp, pki, SLOW_HEAD, "half")
    assert elapsed < 1.0, elapsed


async def test_default_head_wait_is_the_proxys(tmp: Path) -> None:
    """No 30 s cut: connect waits for a head as long as the proxy does by default (5 minutes)."""
    assert DEFAULT_RESPONSE_TIMEOUT == Limits().upstream_response_timeout == 300.0
    args = connect_cli._parser().parse_args(["--proxy", "ws://x/", "--ca", "c", "--host", HOST])
    assert args.response_timeout == 300.0
    args = connect_cli._parser().parse_args(
        ["--proxy", "ws://x/", "--ca", "c", "--host", HOST, "--response-timeout", "0"]
    )
    assert args.response_timeout == 0.0  # main() turns 0 into no limit


async def test_head_slower_than_the_client_timeout_still_arrives(tmp: Path, pki: PKI) -> None:
    """The client's own timeout (connects) no longer bounds the head: only --response-timeout does."""
    up = await HangingUpstream(b"").start()
    up.rest = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    client = TunnelClient(proxy.url, client_ssl_context(str(pki.ca_file)), timeout=0.2)
    endpoint = LocalEndpoint(client, HOST, Logger("info", stream=io.StringIO()), response_timeout=None)
    await endpoint.start("127.0.0.1", 0)

    async def release_later() -> None:
        await up.got_request.wait()
        await asyncio.sleep(0.6)  # the head must come later than the client's 0.2 s timeout
        up.release.set()

    releaser = asyncio.create_task(release_later())
    async with httpx2.AsyncClient() as http:
        resp = await http.get(f"http://127.0.0.1:{endpoint.port}/mcp")
    assert (resp.status_code, resp.text) == (200, "slow")
    await releaser
    await endpoint.close()
    await proxy.stop()
    await up.close()


async def test_response_timeout_is_a_504_that_aborts_upstream(tmp: Path, pki: PKI) -> None:
    up = await HangingUpstream(b"").start()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    endpoint = await _endpoint(proxy, response_timeout=0.3)
    started = time.perf_counter()
    async with httpx2.AsyncClient() as http:
        resp = await http.get(f"http://127.0.0.1:{endpoint.port}/mcp")
    assert 0.3 <= time.perf_counter() - started < 2.0
    assert resp.status_code == 504
    assert resp.text == (
        "no response within 0.3s (connect --response-timeout); the tunnel was closed, the request aborted\n"
    )
    await asyncio.wait_for(up.closed.wait(), 2)
    await endpoint.close()
    await proxy.stop()
    await up.close()


async def _status(port: int, headers: dict[str, str], **kwargs: Any) -> tuple[int, str]:
    async with httpx2.AsyncClient() as http:
        resp = await http.post(f"http://127.0.0.1:{port}/mcp", headers=headers, **kwargs)
        return resp.status_code, resp.text


async def test_foreign_host_and_origin_are_403(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    endpoint = await _endpoint(proxy)
    port = endpoint.port
    status, text = await _status(port, {"Host": "evil.example:8000"}, content=b"{}")
    assert status == 403
    assert text == (
        'Forbidden: Host "evil.example:8000" is not a loopback name or the listen address; '
        "allow it with --allow-host evil.example\n"
    )
    status, text = await _status(port, {"Origin": "http://evil.example"}, content=b"{}")
    assert status == 403
    assert text == (
        'Forbidden: Origin "http://evil.example" is not a loopback origin; '
        "allow it with --allow-origin http://evil.example\n"
    )
    assert (await _status(port, {"Origin": "null"}, content=b"{}"))[0] == 403
    assert not upstream.requests  # nothing refused went through the tunnel
    for headers in (
        {},
        {"Host": f"localhost:{port}"},
        {"Host": "[::1]"},
        {"Origin": "http://localhost:6274"},
        {"Origin": f"http://127.0.0.1:{port}"},
    ):
        assert (await _status(port, headers, content=b"{}"))[0] == 200, headers
    await endpoint.close()
    endpoint = await _endpoint(proxy, allow_hosts=["mcp.internal"], allow_origins=["https://app.example/"])
    headers = {"Host": "mcp.internal:8000", "Origin": "https://app.example"}
    assert (await _status(endpoint.port, headers, content=b"{}"))[0] == 200
    assert (await _status(endpoint.port, {"Host": "other.internal"}, content=b"{}"))[0] == 403
    await endpoint.close()
    await proxy.stop()


async def test_bodies_over_the_limit_are_413(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    endpoint = await _endpoint(proxy, max_body=1000)
    assert (await _status(endpoint.port, {}, content=b"x" * 1000)) == (200, "POST /mcp 1000\n")
    status, text = await _status(endpoint.port, {}, content=b"x" * 1001)
    assert (status, text) == (413, "Request body too large: over 1000 bytes (connect --max-body)\n")

    async def chunks() -> Any:
        for _ in range(3):
            yield b"y" * 400

    status, _ = await _status(endpoint.port, {}, content=chunks())  # chunked: counted as it comes
    assert status == 413
    assert len(upstream.requests) == 1
    await endpoint.close()
    await proxy.stop()


async def test_local_connections_in_a_row_share_one_tunnel(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    endpoint = await _endpoint(proxy)
    for i in range(3):
        async with httpx2.AsyncClient() as http:  # a new local connection per call
            resp = await http.post(f"http://127.0.0.1:{endpoint.port}/c{i}", content=b"abc")
            assert resp.text == f"POST /c{i} 3\n"
    assert accepted(proxy) == 1  # WebSocket upgrades the proxy admitted
    assert endpoint.tunnels_opened == 1
    assert endpoint.idle_tunnels == 1
    await endpoint.close()
    await until(lambda: not proxy.server.tunnels)
    await proxy.stop()


async def test_idle_tunnels_are_bounded_and_expire(tmp: Path, pki: PKI) -> None:
    up = await HangingUpstream(b"").start()
    up.rest = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ups = [up]
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    endpoint = await _endpoint(proxy, max_idle=1, idle_timeout=0.3)
    async with httpx2.AsyncClient() as http:
        calls = [asyncio.create_task(http.get(f"http://127.0.0.1:{endpoint.port}/x")) for _ in range(3)]
        await until(lambda: len(proxy.server.tunnels) == 3)  # three at once: three tunnels
        up.release.set()
        for call in calls:
            assert (await call).text == "ok"
    assert endpoint.tunnels_opened == 3
    assert endpoint.idle_tunnels == 1  # the other two were closed on release
    await until(lambda: len(proxy.server.tunnels) == 1)
    await until(lambda: endpoint.idle_tunnels == 0 and not proxy.server.tunnels, 3)  # idle timeout
    await endpoint.close()
    await proxy.stop()
    for u in ups:
        await u.close()


async def test_cli_flags_reach_the_endpoint(tmp: Path, pki: PKI) -> None:
    """`--response-timeout`, `--max-body` and `--allow-host` as a user types them."""
    up = await HangingUpstream(b"").start()
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    local = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mcp-tunnel"), "connect", "--proxy", proxy.url, "--ca", str(pki.ca_file),
         "--host", HOST, "--listen", f"127.0.0.1:{local}", "--response-timeout", "0.3",
         "--max-body", "10", "--allow-host", "mcp.internal"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = await asyncio.to_thread(proc.stderr.readline)
        assert "connect ready" in line, line
        url = f"http://127.0.0.1:{local}/mcp"
        async with httpx2.AsyncClient() as http:
            resp = await http.post(url, content=b"x" * 11)
            assert resp.status_code == 413
            assert (await http.post(url, headers={"Host": "other.internal"})).status_code == 403
            resp = await http.post(url, headers={"Host": "mcp.internal"}, content=b"{}")
            assert resp.status_code == 504
            assert resp.text.startswith("no response within 0.3s (connect --response-timeout)")
        await asyncio.wait_for(up.closed.wait(), 2)
    finally:
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0  # the proxy runs in this loop
    await proxy.stop()
    await up.close()


async def test_pipelined_requests_are_answered_in_order(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """More requests in one write than connect reads ahead: all answered, in order."""
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    endpoint = await _endpoint(proxy)
    n = 40
    requests = b"".join(b"GET /p%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % i for i in range(n))
    reader, writer = await _raw_request(endpoint.port, requests)
    for i in range(n):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        assert await reader.readexactly(length) == b"GET /p%d 0\n" % i
    writer.close()
    await endpoint.close()
    await proxy.stop()


async def test_a_40_second_call_through_connect_succeeds(tmp: Path, pki: PKI) -> None:
    """The issue's own case: a tool call whose answer takes 40 s, through `connect` as a user
    starts it (no flags), is answered; the old client cut the head wait at 30 s with a 502."""
    up = await HangingUpstream(b"").start()
    up.rest = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    local = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mcp-tunnel"), "connect", "--proxy", proxy.url, "--ca", str(pki.ca_file),
         "--host", HOST, "--listen", f"127.0.0.1:{local}"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip

    async def answer_after_40s() -> None:
        await up.got_request.wait()
        await asyncio.sleep(40)  # the duration under test, not a synchronisation
        up.release.set()

    releaser = asyncio.create_task(answer_after_40s())
    try:
        assert proc.stderr is not None
        line = await asyncio.to_thread(proc.stderr.readline)
        assert "connect ready" in line, line
        async with httpx2.AsyncClient(timeout=60) as http:
            resp = await http.post(f"http://127.0.0.1:{local}/mcp", content=b"{}")
        assert (resp.status_code, resp.text) == (200, "{}")
        await releaser
    finally:
        releaser.cancel()
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0
    await proxy.stop()
    await up.close()


async def _status_or_close(port: int, data: bytes) -> bytes:
    """The status line connect answers `data` with, or b"" when it closes without one."""
    reader, writer = await _raw_request(port, data)
    try:
        return await asyncio.wait_for(reader.readline(), 5)  # an answer or a close, never a hang
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_garbage_from_the_local_client_is_answered(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """Malformed requests get 400, an endless head 431 (bounded like the proxy's), and a seeded
    mutation of a valid request an answer or a close; none of it reaches the upstream broken, and
    the endpoint keeps serving."""
    import random

    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    logs = io.StringIO()
    endpoint = await _endpoint(proxy, logs)
    port = endpoint.port
    assert (await _status_or_close(port, b"GARBAGE\r\n\r\n")).startswith(b"HTTP/1.1 400")
    # A head that never ends: answered once past the bound, not buffered while it goes on.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 2_000_000)
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 431")
    writer.close()
    valid = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
    rng = random.Random(5)
    for _ in range(60):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        line = await _status_or_close(port, bytes(data))
        assert line == b"" or line.startswith(b"HTTP/1.1 "), line
    assert all(r.body in (b"", b"{}") for r in upstream.requests)
    async with httpx2.AsyncClient() as http:
        resp = await http.post(f"http://127.0.0.1:{port}/mcp", content=b"{}")
    assert resp.status_code == 200
    assert "Traceback" not in logs.getvalue()
    await endpoint.close()
    await proxy.stop()
