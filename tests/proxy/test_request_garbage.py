"""A proxied request leaves no reference cycle behind: its objects are freed by reference counting.

Before the relay dropped its parser (which holds the relay's bound methods), every request left
~20 objects (relay, exchange, task, head, buffers) for the cyclic garbage collector, which then
ran every few dozen requests and cost about as much as the two log lines.
"""

from __future__ import annotations

from pathlib import Path

from mcp_tunnel.http_rules import RequestHead
from mcp_tunnel.proxy.exchange import BodyStream, Exchange
from mcp_tunnel.proxy.forward import ResponseRelay
from support.garbage import cyclic_garbage
from support.pki import PKI
from support.proxy import start_proxy
from support.upstreams import RecordingUpstream

HOST = "echo.tunnel.test"


async def test_requests_leave_no_cyclic_garbage(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, log_level="info")
    conn = await proxy.client().connect(HOST)
    with cyclic_garbage(ResponseRelay, Exchange, BodyStream, RequestHead) as left:
        for i in range(20):
            resp = await conn.request("POST", f"/r{i}", host=HOST, body=b'{"id": 1}')
            assert resp.status == 200
            await resp.read()
    assert left == []
    await conn.close()
    await proxy.stop()
