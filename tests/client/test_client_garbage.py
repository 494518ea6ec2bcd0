"""A request through the tunnel client leaves no reference cycle: responses are freed by refcount.

The response parser holds the reader's bound callbacks; the reader lets the parser go once the
response is read, so a busy client does not keep the cyclic garbage collector running.
"""

from __future__ import annotations

from pathlib import Path

from mcp_tunnel.client.tunnel_client import Response, _ResponseReader
from support.garbage import cyclic_garbage
from support.pki import PKI
from support.proxy import start_proxy
from support.upstreams import RecordingUpstream

HOST = "echo.tunnel.test"


async def test_responses_leave_no_cyclic_garbage(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"})
    conn = await proxy.client().connect(HOST)
    with cyclic_garbage(_ResponseReader, Response) as left:
        for i in range(20):
            resp = await conn.request("POST", f"/r{i}", host=HOST, body=b'{"id": 1}')
            assert await resp.read() == f"POST /r{i} 9\n".encode()
        del resp
    assert left == []
    await conn.close()
    await proxy.stop()
