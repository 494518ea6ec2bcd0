"""Hostile inner HTTP (issue #17), against the compiled and the pure build.

Request heads: garbage and smuggling shapes, each refused with a 4xx/5xx (or the tunnel closed)
and never forwarded, then a seeded mutation fuzz of valid requests. Chunked request bodies that
are malformed or over `limits.max_body_bytes`: answered 400/413 at once (well before any
timeout), one log line, the upstream exchange ended at once without a complete request. A
client that leaves in the middle of an upload. Each case ends with the proxy's oracle
(`HostileProxy.check`/`finish`: a normal answer afterwards, nothing but log lines on stderr).
"""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from support.hostile import PROMPT, HostileProxy, MakeUpstream, StartProxy, all_ended
from support.rawtunnel import HTTPResponse, NotHTTP, RawTunnel, split_responses

OK = b"ok.tunnel.test"
UP = b"up.tunnel.test"


def _req(*lines: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# name: (request bytes; every one is refused)
REFUSED: dict[str, bytes] = {
    "random-bytes": random.Random(5).randbytes(300),
    "nul-bytes": b"\x00" * 64,
    "tls-clienthello-inside": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,
    "control-char-in-method": _req(b"G\x01T /r HTTP/1.1", b"Host: " + OK),
    "space-in-target": _req(b"GET /a b HTTP/1.1", b"Host: " + OK),
    "version-9.9": _req(b"GET /r HTTP/9.9", b"Host: " + OK),
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "two-hosts": _req(b"GET /r HTTP/1.1", b"Host: " + OK, b"Host: evil.example"),
    "no-host": _req(b"GET /r HTTP/1.1"),
    "http10-no-host": _req(b"GET /r HTTP/1.0"),
    "empty-host": _req(b"GET /r HTTP/1.1", b"Host: "),
    "host-with-userinfo": _req(b"GET /r HTTP/1.1", b"Host: a@" + OK),
    "cl-and-te": _req(
        b"POST /r HTTP/1.1", b"Host: " + OK, b"Content-Length: 3", b"Transfer-Encoding: chunked", body=b"abc"
    ),
    "two-content-lengths": _req(
        b"POST /r HTTP/1.1", b"Host: " + OK, b"Content-Length: 3", b"Content-Length: 4", body=b"abcd"
    ),
    "content-length-word": _req(b"POST /r HTTP/1.1", b"Host: " + OK, b"Content-Length: three"),
    "content-length-negative": _req(b"POST /r HTTP/1.1", b"Host: " + OK, b"Content-Length: -1"),
    "content-length-huge": _req(
        b"POST /r HTTP/1.1", b"Host: " + OK, b"Content-Length: 99999999999999999999999"
    ),
    "te-gzip": _req(b"POST /r HTTP/1.1", b"Host: " + OK, b"Transfer-Encoding: gzip", body=b"abc"),
    "te-chunked-then-gzip": _req(b"POST /r HTTP/1.1", b"Host: " + OK, b"Transfer-Encoding: chunked, gzip"),
    "absolute-form-other-host": _req(b"GET http://evil.example/r HTTP/1.1", b"Host: " + OK),
    "space-before-colon": _req(b"GET /r HTTP/1.1", b"Host : " + OK),
    "obs-fold": _req(b"GET /r HTTP/1.1", b"Host: " + OK, b"X-A: a", b" b"),
    "header-without-colon": _req(b"GET /r HTTP/1.1", b"Host: " + OK, b"Bogus"),
    "nul-in-header-value": _req(b"GET /r HTTP/1.1", b"Host: " + OK, b"X-A: a\x00b"),
    "headers-over-limit": _req(b"GET /r HTTP/1.1", b"Host: " + OK, b"X-Big: " + b"a" * 40_000),
    "target-over-limit": _req(b"GET /" + b"a" * 40_000 + b" HTTP/1.1", b"Host: " + OK),
    "many-headers-over-limit": _req(
        b"GET /r HTTP/1.1", b"Host: " + OK, *[b"X-%d: v" % i for i in range(8000)]
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_bad_request_head_is_refused_and_never_forwarded(shared_proxy: HostileProxy, case: str) -> None:
    since = shared_proxy.begin()
    assert shared_proxy.healthy is not None
    seen = shared_proxy.healthy.mark()
    tunnel = await shared_proxy.tunnel()
    tunnel.send_plain(REFUSED[case])
    ended = await tunnel.ended(PROMPT)
    what = f"{tunnel.summary()}\nproxy stderr:\n{shared_proxy.log(since)}"
    assert ended, f"the tunnel was neither answered and closed nor closed within {PROMPT}s: {what}"
    answers = [r.status for r in _responses(tunnel, [])]
    assert answers and all(400 <= s < 600 for s in answers), f"not refused: {what}"
    assert tunnel.close_code in (1000, 1002), what
    await shared_proxy.check(since)
    forwarded = [h for h in shared_proxy.healthy.seen_since(seen) if not h.startswith(b"GET /healthy-")]
    assert forwarded == [], f"a refused request reached the upstream: {forwarded}"


def _responses(tunnel: RawTunnel, methods: list[str]) -> list[HTTPResponse]:
    return split_responses(bytes(tunnel.plain), methods, eof=tunnel.eof)


# --- the request head fuzz ----------------------------------------------------------------------

HEAD_SEED = 4242
HEAD_CASES = 150  # per build
HEAD_PARALLEL = 16
HEAD_BUDGET = 40.0  # seconds per build at most: past it, no new case starts


def _valid_request(rng: random.Random, token: bytes) -> bytes:
    """A valid request carrying `token` three times (target, a header, a body), so the upstream's
    copy can be told apart even when a mutation destroys one or two of them."""
    method = rng.choice((b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS"))
    lines = [method + b" /" + token + b"?q=1 HTTP/1.1", b"Host: " + OK, b"X-Case: " + token]
    lines += rng.sample(
        [
            b"Accept: application/json, text/event-stream",
            b"Mcp-Session-Id: 0123456789abcdef",
            b"Authorization: Bearer abc.def.ghi",
            b"User-Agent: fuzz/1.0",
            b"Connection: keep-alive",
            b"X-Forwarded-For: 10.0.0.1",
            b"Cookie: a=b",
        ],
        k=rng.randint(0, 4),
    )
    body = b""
    if method in (b"POST", b"PUT"):
        body = b'{"jsonrpc":"2.0","id":1,"method":"' + token + b'"}'
        if rng.random() < 0.5:
            lines.append(b"Content-Length: %d" % len(body))
        else:
            lines.append(b"Transfer-Encoding: chunked")
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three edits: a byte flipped or replaced, bytes inserted (random, or HTTP's own
    delimiters), a range deleted or repeated, the end cut off."""
    buf = bytearray(data)
    specials = (b"\r\n", b"\n", b"\r", b" ", b":", b"\x00", b"\r\n\r\n", b"\t", b"0\r\n\r\n", b"Host: x\r\n")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(buf)) if buf else 0
        op = rng.randrange(6)
        if op == 0 and buf:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[i] = rng.randrange(256)
        elif op == 2:
            buf[i:i] = rng.choice((rng.randbytes(rng.randint(1, 8)), rng.choice(specials)))
        elif op == 3 and buf:
            del buf[i : i + rng.randint(1, 16)]
        elif op == 4 and buf:
            buf[i:i] = buf[i : i + rng.randint(1, 32)] * rng.randint(1, 3)
        elif op == 5 and buf:
            del buf[rng.randint(len(buf) // 2, len(buf)) :]
    return bytes(buf)


async def _head_case(proxy: HostileProxy, data: bytes) -> tuple[RawTunnel, str | None]:
    """Send `data`, then close_notify: complete requests are answered, then the proxy closes. One
    it is still waiting for after PROMPT (a head or body that can never end) is cut by our
    WebSocket close, which must end the tunnel at once too."""
    tunnel = await proxy.tunnel()
    tunnel.send_plain(data)
    tunnel.send_message(tunnel.close_notify())
    if not await tunnel.ended(PROMPT):
        tunnel.send_close(1000)
        if not await tunnel.ended(PROMPT):
            return tunnel, f"not closed within {PROMPT}s of our WebSocket close"
    if tunnel.close_code not in (1000, 1002):
        return tunnel, f"close code {tunnel.close_code}"
    try:
        _responses(tunnel, [])
    except NotHTTP as exc:
        try:  # read as the answer to a HEAD (no body), unless the proxy's refusal carries one
            _responses(tunnel, ["HEAD"])
        except NotHTTP:
            return tunnel, f"the answers are not HTTP: {exc}"
    return tunnel, None


async def test_fuzzed_request_heads(shared_proxy: HostileProxy) -> None:
    """Every case is answered (by the upstream, or refused 4xx/5xx by the proxy) or closed at once
    (at once after our WebSocket close, for one that can never end); a request the proxy refused
    never reaches the upstream: for each case, the answers that came from the upstream
    (`X-Upstream`) are as many as its whole requests there."""
    since = shared_proxy.begin()
    assert shared_proxy.healthy is not None
    seen = shared_proxy.healthy.mark()
    rng = random.Random(HEAD_SEED)
    tokens = [b"fz%04dq" % i for i in range(HEAD_CASES)]
    cases = [_mutate(rng, _valid_request(rng, token)) for token in tokens]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEAD_BUDGET
    gate = asyncio.Semaphore(HEAD_PARALLEL)
    outcomes: dict[int, RawTunnel] = {}
    failures: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            if loop.time() > deadline:
                return
            tunnel, problem = await _head_case(shared_proxy, cases[i])
            outcomes[i] = tunnel
            if problem is not None:
                failures.append(f"case {i} {cases[i][:60]!r}: {problem}: {tunnel.summary()}")
            await tunnel.aclose()

    await asyncio.gather(*(one(i) for i in range(HEAD_CASES)))
    assert len(outcomes) >= HEAD_CASES // 2, (
        f"only {len(outcomes)} of {HEAD_CASES} cases within {HEAD_BUDGET}s"
    )
    try:
        await shared_proxy.check(since)
    except AssertionError as exc:
        failures.append(str(exc))
    # Whole requests only: a head forwarded before its body broke off (we cut it) got no answer.
    upstream_requests = shared_proxy.healthy.completed_since(seen)
    for i, tunnel in outcomes.items():
        from_upstream = bytes(tunnel.plain).lower().count(b"x-upstream: healthy")
        proxy_made = [int(m) for m in re.findall(rb"HTTP/1\.1 ([0-9]{3}) ", bytes(tunnel.plain))]
        arrived = sum(tokens[i] in head for head in upstream_requests)
        if any(s < 400 for s in proxy_made) and from_upstream == 0:
            failures.append(f"case {i}: a proxy-made answer that is not an error: {tunnel.summary()}")
        if arrived != from_upstream:
            failures.append(
                f"case {i} {cases[i][:60]!r}: {arrived} requests reached the upstream, {from_upstream} "
                f"upstream answers came back: {tunnel.summary()}"
            )
    assert not failures, f"{len(failures)} problems in {len(outcomes)} cases:\n" + "\n".join(failures[:10])


# --- chunked request bodies ---------------------------------------------------------------------

MAX_BODY = 64

CHUNKED_HEAD = b"POST /chunked HTTP/1.1\r\nHost: " + UP + b"\r\nTransfer-Encoding: chunked\r\n\r\n"

# name: (body bytes, the status the proxy must answer with)
BAD_CHUNKED: dict[str, tuple[bytes, int]] = {
    "size-zz": (b"zz\r\nhello\r\n0\r\n\r\n", 400),
    "size-overflow": (b"1ffffffffffffffff\r\n" + b"x" * 16, 400),
    "data-not-followed-by-crlf": (b"5\r\nhelloXX0\r\n\r\n", 400),
    "trailer-without-colon": (b"5\r\nhello\r\n0\r\nbadtrailer\r\n\r\n", 400),
    "leading-space-in-size": (b" 5\r\nhello\r\n0\r\n\r\n", 400),
    "bare-lf": (b"5\nhello\n0\n\n", 400),
    "negative-size": (b"-5\r\nhello\r\n0\r\n\r\n", 400),
    "over-max-body-bytes": (b"".join(b"20\r\n" + b"x" * 32 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n", 413),
}


@pytest.mark.parametrize("together", [True, False], ids=["with-head", "after-head"])
@pytest.mark.parametrize("case", list(BAD_CHUNKED))
async def test_bad_chunked_body_is_answered_at_once(
    hostile: StartProxy, upstreams: MakeUpstream, case: str, together: bool
) -> None:
    """400 (413 over the limit) well before any timeout, one completion line for it and no
    warning, the tunnel closed after the answer; the upstream never gets a complete request, and
    the connection that got its head is closed at once. `after-head`: the body comes once the
    head has reached the upstream (the exchange is under way); `with-head`: in the same record."""
    body, status = BAD_CHUNKED[case]
    upstream = await upstreams()
    proxy = hostile({"up": upstream.url}, limits={"max_body_bytes": MAX_BODY})
    since = proxy.mark()
    tunnel = await proxy.tunnel("up")
    loop = asyncio.get_running_loop()
    if together:
        tunnel.send_plain(CHUNKED_HEAD + body)
    else:
        tunnel.send_plain(CHUNKED_HEAD)
        await asyncio.wait_for(upstream.head_arrived.wait(), PROMPT)
    start = loop.time()
    if not together:
        tunnel.send_plain(body)
    got = await tunnel.responses(["POST"], PROMPT)
    took = loop.time() - start
    what = f"{tunnel.summary()}\nproxy stderr:\n{proxy.log(since)}"
    assert [r.status for r in got] == [status], f"no {status} within {PROMPT}s: {what}"
    assert await tunnel.ended(PROMPT), f"the tunnel stayed open after the refusal: {what}"
    assert upstream.requests == [], "the upstream got a complete request"
    assert await all_ended(upstream.conns), "the upstream exchange was not ended at once"
    completed = await proxy.wait_log("/chunked status=", since=since)
    assert len(completed) == 1 and f"status={status} " in completed[0], completed
    noisy = [line for line in proxy.lines(since) if " level=warn " in line or " level=error " in line]
    assert noisy == [], noisy
    assert took < PROMPT
    await proxy.finish()
    completed = [line for line in proxy.lines(since) if "path=/chunked status=" in line]
    assert len(completed) == 1, completed  # still one, now that the proxy has stopped


# --- a client that leaves in the middle of an upload ----------------------------------------------


@pytest.mark.parametrize("how", ["tcp-reset", "tcp-close", "close-notify-then-ws-close"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_client_leaves_mid_upload(
    hostile: StartProxy, upstreams: MakeUpstream, how: str, framing: str
) -> None:
    """The upstream exchange is aborted at once (its connection closed, no complete request) and
    nothing is left behind: no "Task exception was never retrieved ... request body aborted"."""
    upstream = await upstreams()
    proxy = hostile({"up": upstream.url})
    tunnel = await proxy.tunnel("up")
    length = b"Content-Length: 1000" if framing == "content-length" else b"Transfer-Encoding: chunked"
    tunnel.send_plain(b"POST /upload HTTP/1.1\r\nHost: " + UP + b"\r\n" + length + b"\r\n\r\n")
    tunnel.send_plain(b"x" * 100 if framing == "content-length" else b"64\r\n" + b"x" * 100 + b"\r\n")
    await asyncio.wait_for(upstream.head_arrived.wait(), PROMPT)
    if how == "tcp-reset":
        tunnel.abort()
    elif how == "tcp-close":
        await tunnel.aclose()
    else:
        tunnel.send_message(tunnel.close_notify())
        tunnel.send_close(1000)
    assert await all_ended(upstream.conns), "the upstream exchange was not aborted at once"
    assert upstream.requests == []
    await tunnel.aclose()
    await proxy.finish()
