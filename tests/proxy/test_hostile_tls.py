"""Hostile peers inside the tunnel's TLS session, after the handshake (issue #17), both builds.

Records that a real TLS stack never sends in an established session: a corrupt application-data
record, a heartbeat, a renegotiation attempt (TLS 1.2) or a KeyUpdate sent in the clear (TLS
1.3), garbage handshake records, random record headers; and a session cut in the middle of a
record or of a request body by a WebSocket close without close_notify. The oracle: the proxy
closes the tunnel at once with 1002 ("tls error"; 1000 when it answers our own close first),
aborts what was in flight, writes no traceback, and `check`/`finish` hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Callable

import pytest

from mcp_tunnel.client import client_ssl_context
from support.hostile import PROMPT, HostileProxy, MakeUpstream, StartProxy, all_ended
from support.rawtunnel import RawTunnel

HOST = "up.tunnel.test"


def _record(content_type: int, body: bytes, version: bytes = b"\x03\x03") -> bytes:
    return bytes((content_type,)) + version + len(body).to_bytes(2, "big") + body


def _client_hello_record() -> bytes:
    """A fresh TLS 1.2 ClientHello, as a client that renegotiates would start (in the clear here:
    Python cannot renegotiate, so the record is not under the session's keys)."""
    ctx = client_ssl_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="ok.tunnel.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _corrupt(records: bytes, index: int, delta: int = 0) -> bytes:
    """`records` with one byte flipped (negative `index`: from the end: the AEAD tag), or with
    `delta` added to it."""
    data = bytearray(records)
    data[index] = (data[index] + delta) % 256 if delta else data[index] ^ 0x01
    return bytes(data)


REQUEST = b"GET /never HTTP/1.1\r\nHost: ok.tunnel.test\r\n\r\n"

# name: (TLS 1.2 session?, what to send given the tunnel)
CASES: dict[str, tuple[bool, Callable[[RawTunnel], bytes]]] = {
    "corrupt-tag-tls13": (False, lambda t: _corrupt(t.encrypt(REQUEST), -1)),
    "corrupt-tag-tls12": (True, lambda t: _corrupt(t.encrypt(REQUEST), -1)),
    "corrupt-first-body-byte": (False, lambda t: _corrupt(t.encrypt(REQUEST), 5)),
    "corrupt-content-type": (False, lambda t: _corrupt(t.encrypt(REQUEST), 0)),
    "record-one-byte-short": (False, lambda t: _corrupt(t.encrypt(REQUEST), 4, -1)),
    "heartbeat-tls13": (False, lambda t: _record(24, b"\x01\x00\x10" + b"x" * 16 + b"\x00" * 16)),
    "heartbeat-tls12": (True, lambda t: _record(24, b"\x01\x00\x10" + b"x" * 16 + b"\x00" * 16)),
    "renegotiation-clienthello-tls12": (True, lambda t: _client_hello_record()),
    "clienthello-tls13": (False, lambda t: _client_hello_record()),
    "keyupdate-in-clear-tls13": (False, lambda t: _record(22, b"\x18\x00\x00\x01\x00")),
    "hello-request-in-clear-tls12": (True, lambda t: _record(22, b"\x00\x00\x00\x00")),
    "garbage-handshake-record": (False, lambda t: _record(22, b"\xff" * 40)),
    "change-cipher-spec-tls13": (False, lambda t: _record(20, b"\x01")),
    "alert-in-clear": (False, lambda t: _record(21, b"\x02\x28")),
    "unknown-content-type": (False, lambda t: _record(99, b"hello")),
    "ssl2-style-bytes": (False, lambda t: b"\x80\x2e\x01\x03\x01" + b"\x00" * 45),
    "oversized-record": (False, lambda t: _record(23, b"\x00" * (16384 + 2048 + 1))),
    "empty-app-data-record": (False, lambda t: _record(23, b"")),
}


async def _assert_tls_error_close(tunnel: RawTunnel, proxy: HostileProxy, since: int) -> None:
    ended = await tunnel.ended(PROMPT)
    seen = f"{tunnel.summary()}\nproxy stderr:\n{proxy.log(since)}"
    assert ended, f"the proxy did not end the tunnel within {PROMPT}s: {seen}"
    assert tunnel.frame_error is None, seen
    assert tunnel.close_code == 1002, seen
    assert not tunnel.plain, f"an answer to a request that never decrypted: {seen}"


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_record_after_the_handshake(shared_proxy: HostileProxy, case: str) -> None:
    tls12, make = CASES[case]
    since = shared_proxy.begin()
    tunnel = await shared_proxy.tunnel(tls12=tls12)
    assert tunnel.tls is not None and tunnel.tls.version() == ("TLSv1.2" if tls12 else "TLSv1.3")
    tunnel.send_message(make(tunnel))
    await _assert_tls_error_close(tunnel, shared_proxy, since)
    await shared_proxy.check(since)


RECORD_SEED = 1717
RECORD_CASES = 40  # per build


def _random_record(rng: random.Random) -> bytes:
    """A record header of any type, version and length, then up to that many random bytes."""
    content_type = rng.choice((rng.randrange(256), 20, 21, 22, 23, 24))
    version = rng.choice((b"\x03\x03", b"\x03\x01", b"\x03\x04", rng.randbytes(2)))
    length = rng.choice((0, 1, rng.randrange(1, 300), 16384, 16384 + 256, 18432, 65535))
    body = rng.randbytes(min(length, rng.choice((length, rng.randrange(0, length + 1)))))
    return bytes((content_type,)) + version + length.to_bytes(2, "big") + body


async def test_random_record_headers(shared_proxy: HostileProxy) -> None:
    """Each on its own tunnel, followed by a WebSocket close: the proxy either finds the record
    broken (1002) or, waiting for the rest of it, answers our close (1000); at once either way."""
    since = shared_proxy.begin()
    rng = random.Random(RECORD_SEED)
    failures = []
    for i in range(RECORD_CASES):
        record = _random_record(rng)
        tunnel = await shared_proxy.tunnel(tls12=rng.random() < 0.3)
        tunnel.send_message(record)
        tunnel.send_close(1000)
        ended = await tunnel.ended(PROMPT)
        if not ended or tunnel.frame_error is not None or tunnel.close_code not in (1000, 1002):
            failures.append(f"case {i} {record[:12].hex()}: {tunnel.summary()}")
        await tunnel.aclose()
    assert not failures, "\n".join(failures)
    await shared_proxy.check(since)


async def test_truncated_record_then_websocket_close(shared_proxy: HostileProxy) -> None:
    """Half a record, then a close without close_notify: our close is answered, nothing is
    forwarded."""
    since = shared_proxy.begin()
    tunnel = await shared_proxy.tunnel()
    records = tunnel.encrypt(
        b"GET /truncated HTTP/1.1\r\nHost: " + shared_proxy.host().encode() + b"\r\n\r\n"
    )
    tunnel.send_message(records[: len(records) // 2])
    tunnel.send_close(1000)
    assert await tunnel.ended(PROMPT), tunnel.summary()
    assert tunnel.close_code == 1000 and not tunnel.plain, tunnel.summary()
    await shared_proxy.check(since)
    assert "path=/truncated" not in shared_proxy.log(since)


@pytest.mark.parametrize("cut", ["between-records", "mid-record"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_websocket_close_in_the_middle_of_a_request_body(
    hostile: StartProxy, upstreams: MakeUpstream, framing: str, cut: str
) -> None:
    """SPEC §2: a WebSocket that closes without close_notify in the middle of a request aborts
    that request's upstream exchange: the upstream connection is closed at once, the request
    never completes there, and nothing is left behind (no "Task exception was never retrieved").
    `mid-record`: the close comes after half of a record that carries more of the body."""
    upstream = await upstreams()
    proxy = hostile({"up": upstream.url})
    tunnel = await proxy.tunnel("up")
    length = b"Content-Length: 1000" if framing == "content-length" else b"Transfer-Encoding: chunked"
    tunnel.send_plain(b"POST /upload HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n" + length + b"\r\n\r\n")
    piece = b"x" * 100 if framing == "content-length" else b"64\r\n" + b"x" * 100 + b"\r\n"
    tunnel.send_plain(piece)
    await asyncio.wait_for(upstream.head_arrived.wait(), PROMPT)  # the exchange is under way
    if cut == "mid-record":
        records = tunnel.encrypt(piece)
        tunnel.send_message(records[: len(records) // 2])
    tunnel.send_close(1000)
    assert await tunnel.ended(PROMPT), tunnel.summary()
    assert tunnel.close_code == 1000, tunnel.summary()
    assert await all_ended(upstream.conns), "the upstream exchange was not aborted"
    assert upstream.requests == []
    await proxy.finish()
