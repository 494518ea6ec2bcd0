"""The connect seam: IP validation on the resolved addresses, pinned to the vetted address."""

from __future__ import annotations

import ssl
from datetime import timedelta
from pathlib import Path

from mcp_tunnel.certs.files import write_atomic
from mcp_tunnel.certs.generate import generate_ca, issue_server_cert, pem_cert, pem_key
from support.pki import PKI
from support.proxy import RunningProxy, start_proxy
from support.upstreams import LoopbackRecordingDial, RecordingUpstream, ScriptedResolver

HOST = "echo.tunnel.test"


async def _get(proxy: RunningProxy, path: str = "/") -> tuple[int, bytes]:
    conn = await proxy.client().connect(HOST)
    resp = await conn.request("GET", path, host=HOST)
    body = await resp.read()
    await conn.close()
    return resp.status, body


async def test_loopback_refused_by_default(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    resolver = ScriptedResolver({"svc.internal": [["127.0.0.1"]]})
    dial = LoopbackRecordingDial()  # records; never leaves loopback
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": f"http://svc.internal:{upstream.port}"},
        resolver=resolver,
        dial=dial,
        upstream=None,
    )
    status, body = await _get(proxy)
    assert status == 502
    assert b"127.0.0.1" not in body and b"svc.internal" not in body
    assert proxy.log_has("IP validation failed: 127.0.0.1 is not a private address")
    assert upstream.connections == 0
    assert dial.dialled == []
    await proxy.stop()


async def test_public_address_refused_by_default(tmp: Path, pki: PKI) -> None:
    resolver = ScriptedResolver({"svc.internal": [["8.8.8.8"]]})
    dial = LoopbackRecordingDial()  # records; never leaves loopback
    proxy = await start_proxy(
        tmp, pki, {"echo": "http://svc.internal:80"}, resolver=resolver, dial=dial, upstream=None
    )
    status, _ = await _get(proxy)
    assert status == 502
    assert proxy.log_has("IP validation failed: 8.8.8.8 is not a private address")
    assert dial.dialled == []
    await proxy.stop()


async def test_allowed_when_listed_and_cidr_edges(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    resolver = ScriptedResolver({"in.internal": [["127.0.0.1"]], "out.internal": [["127.0.0.2"]]})
    dial = LoopbackRecordingDial()  # records; never leaves loopback
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": f"http://in.internal:{upstream.port}", "other": f"http://out.internal:{upstream.port}"},
        resolver=resolver,
        dial=dial,
        upstream={"allowed_ips": ["127.0.0.1/32"]},
    )
    assert (await _get(proxy))[0] == 200
    conn = await proxy.client().connect("other.tunnel.test")
    resp = await conn.request("GET", "/", host="other.tunnel.test")
    assert resp.status == 502
    await resp.read()
    assert proxy.log_has("IP validation failed: 127.0.0.2 is not a private address")
    assert len(upstream.requests) == 1
    await proxy.stop()


async def test_mixed_answer_connects_only_to_allowed(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    resolver = ScriptedResolver({"mix.internal": [["8.8.8.8", "127.0.0.1", "1.1.1.1"]]})
    dial = LoopbackRecordingDial()  # records; never leaves loopback
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": f"http://mix.internal:{upstream.port}"},
        resolver=resolver,
        dial=dial,
        upstream={"allowed_ips": ["127.0.0.0/8"]},
    )
    assert (await _get(proxy))[0] == 200
    assert upstream.connections == 1
    assert dial.dialled == ["127.0.0.1"]
    await proxy.stop()


async def test_answer_changing_after_check_cannot_redirect(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """Rebinding: the first answer is vetted and used; a second lookup never happens."""
    resolver = ScriptedResolver({"rebind.internal": [["127.0.0.1"], ["8.8.8.8"]]})
    dial = LoopbackRecordingDial()  # records; never leaves loopback
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": f"http://rebind.internal:{upstream.port}"},
        resolver=resolver,
        dial=dial,
        upstream={"allowed_ips": ["127.0.0.0/8"]},
    )
    assert (await _get(proxy))[0] == 200
    assert resolver.calls == ["rebind.internal"]
    # A new upstream connection resolves again and is judged again: now refused.
    proxy.server.connector.close_idle()
    assert (await _get(proxy))[0] == 502
    assert resolver.calls == ["rebind.internal", "rebind.internal"]
    assert dial.dialled == ["127.0.0.1"]
    assert proxy.log_has("IP validation failed: 8.8.8.8 is not a private address")
    await proxy.stop()


async def test_dns_failure_fails_closed(tmp: Path, pki: PKI) -> None:
    resolver = ScriptedResolver({})
    dial = LoopbackRecordingDial()  # records; never leaves loopback
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": "http://gone.internal:80"},
        resolver=resolver,
        dial=dial,
        upstream={"allowed_ips": ["0.0.0.0/0"]},
    )
    status, body = await _get(proxy)
    assert status == 502
    assert b"gone.internal" not in body
    await proxy.stop()


async def test_odd_ipv4_spellings_judged_by_their_address(
    tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    """The system resolver turns 127.1, 0x7f.1 and 2130706433 into 127.0.0.1; that is what is judged."""
    for spelling in ("127.1", "0x7f.1", "2130706433"):
        proxy = await start_proxy(
            tmp,
            pki,
            {"echo": f"http://{spelling}:{upstream.port}"},
            upstream={"allowed_ips": ["127.0.0.1/32"]},
        )
        assert (await _get(proxy))[0] == 200, spelling
        await proxy.stop()
    assert len(upstream.requests) == 3


async def test_disable_ip_validation(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    resolver = ScriptedResolver({"any.internal": [["127.0.0.1"]]})
    dial = LoopbackRecordingDial()  # records; never leaves loopback
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": f"http://any.internal:{upstream.port}"},
        resolver=resolver,
        dial=dial,
        upstream={"allowed_ips": None, "disable_ip_validation": True},
    )
    assert (await _get(proxy))[0] == 200
    await proxy.stop()


async def test_https_upstream_verified_with_configured_ca(tmp: Path, pki: PKI) -> None:
    ca, ca_key = generate_ca()
    cert, key = issue_server_cert(
        ca, ca_key, "svc.internal", duration=timedelta(days=1), key_type="ecdsa-p256"
    )
    write_atomic(tmp / "up-ca.crt", pem_cert(ca), 0o644)
    write_atomic(tmp / "up.crt", pem_cert(cert), 0o644)
    write_atomic(tmp / "up.key", pem_key(key), 0o600)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp / "up.crt", tmp / "up.key")
    up = await RecordingUpstream().start(ssl=server_ctx)
    resolver = ScriptedResolver({"secure.svc.internal": [["127.0.0.1"]], "wrong.example": [["127.0.0.1"]]})
    dial = LoopbackRecordingDial()  # records; never leaves loopback
    proxy = await start_proxy(
        tmp,
        pki,
        {"echo": f"https://secure.svc.internal:{up.port}", "bad": f"https://wrong.example:{up.port}"},
        resolver=resolver,
        dial=dial,
        upstream={"allowed_ips": ["127.0.0.0/8"], "tls": {"ca_file": str(tmp / "up-ca.crt")}},
    )
    assert (await _get(proxy))[0] == 200, proxy.logs.getvalue()
    # The certificate does not cover the route's host: refused, not forwarded.
    conn = await proxy.client().connect("bad.tunnel.test")
    resp = await conn.request("GET", "/", host="bad.tunnel.test")
    assert resp.status == 502
    await resp.read()
    assert len(up.requests) == 1
    assert proxy.log_has("upstream tls failed")
    await proxy.stop()
    await up.close()
