"""Hostile upstreams (issue #17), against the compiled and the pure build.

An upstream that answers one request twice, answers after a 204 or after a HEAD answer, writes
on an idle keep-alive connection, sends garbage, cuts a body short, breaks its chunked framing,
switches protocols unasked, or floods 1xx answers. SPEC §5: one response per request; bytes an
upstream sends outside the response to the request in flight close that upstream connection and
never reach any client. The oracle: the client gets exactly the one answer it is owed (or the
documented truncation: close 1011 after the head); the upstream connection that misbehaved is
closed at once; a follow-up request on the same tunnel and one on a second tunnel (upstream
connections are pooled across tunnels) each get their own correct answer; no traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import pytest

from support.hostile import (
    PROMPT,
    MakeUpstream,
    StartProxy,
    UpstreamConn,
    all_ended,
    follow_up,
    ok_response,
)
from support.rawtunnel import HTTPResponse, after_responses
from support.upstreams import Received

UP = "up.tunnel.test"
STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY"


@dataclass
class Case:
    answer: bytes  # what the upstream writes in answer to the request
    method: str = "GET"
    then: bytes = b""  # written next, once the client has the head of the answer
    stray: bool = False  # bytes outside the response: the connection must be closed at once
    finals: list[tuple[int, bytes]] | None = None  # the final responses the client must get
    accept: Callable[[list[tuple[int, bytes]]], bool] | None = None  # or what they may be
    # Or a truncation: the head arrives, then the tunnel ends with 1011 and no close_notify.
    truncated: bool = False
    may_truncate: bool = False  # either `finals` or a truncation


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
INVALID = [(502, b"Upstream sent an invalid response\n")]

CASES: dict[str, Case] = {
    # Bytes after the response to the request in flight.
    "two-responses-one-write": Case(ok_response(b"first") + STRAY, stray=True, finals=[(200, b"first")]),
    "second-response-next-write": Case(
        ok_response(b"first"), then=STRAY, stray=True, finals=[(200, b"first")]
    ),
    "response-after-204": Case(b"HTTP/1.1 204 No Content\r\n\r\n" + STRAY, stray=True, finals=[(204, b"")]),
    "response-after-304": Case(b"HTTP/1.1 304 Not Modified\r\n\r\n" + STRAY, stray=True, finals=[(304, b"")]),
    "body-after-head-answer": Case(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY", method="HEAD", stray=True, finals=[(200, b"")]
    ),
    "response-after-head-answer": Case(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + STRAY,
        method="HEAD",
        stray=True,
        finals=[(200, b"")],
    ),
    "response-after-chunked-answer": Case(
        CHUNKED_HEAD + b"5\r\nfirst\r\n0\r\n\r\n" + STRAY, stray=True, finals=[(200, b"first")]
    ),
    # Not HTTP, or not an answer to this request: nothing has reached the client, 502 is owed.
    "garbage": Case(b"garbage, not HTTP\r\n\r\n", finals=INVALID),
    "switching-protocols": Case(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: Upgrade\r\n\r\nraw bytes",
        finals=INVALID,
    ),
    "invalid-chunked-body-with-head": Case(CHUNKED_HEAD + b"zz\r\nxx\r\n", finals=INVALID, may_truncate=True),
    "content-length-and-chunked": Case(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        accept=lambda got: got in (INVALID, [(200, b"hello")]),
    ),
    # The head has reached the client: the truncation is passed on.
    "truncated-body": Case(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", then=b"x" * 10, truncated=True),
    "truncated-chunked-body": Case(CHUNKED_HEAD, then=b"a\r\n01234", truncated=True),
    "invalid-chunk-size-mid-body": Case(
        CHUNKED_HEAD + b"5\r\nhello\r\n", then=b"zz\r\nxx\r\n", truncated=True
    ),
    # Interim answers, many: passed through or not, one final answer.
    # More than 16 interim answers is a 502 (proxy/flow.py MAX_INTERIM; Go's Transport, under the
    # official proxy, refuses more than 5): the final answer of such an upstream is never relayed.
    "flood-of-100-continue": Case(
        b"HTTP/1.1 100 Continue\r\n\r\n" * 20_000 + ok_response(b"final"), finals=INVALID
    ),
    "flood-of-103-early-hints": Case(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" * 5_000 + ok_response(b"final"),
        finals=INVALID,
    ),
}

# What `truncated` cases must close with (SPEC: the client sees the truncation).
TRUNCATION_CLOSE = 1011


def _script(
    case: Case, served: list[UpstreamConn], client_has_head: asyncio.Event
) -> Callable[[Received, UpstreamConn], Awaitable[None]]:
    async def answer(req: Received, conn: UpstreamConn) -> None:
        served.append(conn)
        conn.write(case.answer)
        if case.then:
            await conn.writer.drain()
            await client_has_head.wait()
            conn.write(case.then)
        if case.truncated:  # the upstream hangs up in the middle of the body
            await conn.writer.drain()
            conn.writer.close()

    return answer


def _finals(got: list[HTTPResponse]) -> list[tuple[int, bytes]]:
    return [(r.status, r.body) for r in got if not r.interim]


@pytest.mark.parametrize("name", list(CASES))
async def test_hostile_upstream_answer(hostile: StartProxy, upstreams: MakeUpstream, name: str) -> None:
    case = CASES[name]
    served: list[UpstreamConn] = []
    client_has_head = asyncio.Event()
    upstream = await upstreams(_script(case, served, client_has_head))
    proxy = hostile({"up": upstream.url})
    since = proxy.mark()
    first = await proxy.tunnel("up")
    first.send_plain(f"{case.method} /hostile HTTP/1.1\r\nHost: {UP}\r\n\r\n".encode())

    def what() -> str:
        return f"{first.summary()}\nproxy stderr:\n{proxy.log(since)}"

    if case.then:
        assert await first.until(lambda: b"\r\n\r\n" in first.plain, PROMPT), what()
        client_has_head.set()
    if case.may_truncate:
        await first.until(lambda: first.eof or b"\r\n\r\n" in first.plain, PROMPT)
        case = replace(case, truncated=bytes(first.plain).startswith(b"HTTP/1.1 200 "))
    if case.truncated:
        assert await first.ended(PROMPT), f"the truncation was not passed on at once: {what()}"
        assert first.close_code == TRUNCATION_CLOSE and not first.tls_closed, what()
        assert bytes(first.plain).startswith(b"HTTP/1.1 200 "), what()
    else:
        got = _finals(await first.responses([case.method], PROMPT))
        if case.accept is not None:
            assert case.accept(got), f"{got}: {what()}"
        else:
            assert got == case.finals, what()
        extra = after_responses(bytes(first.plain), [case.method], eof=first.eof)
        assert not extra, f"bytes beyond the one answer reached the client: {extra[:200]!r}\n{what()}"
    if case.stray:
        assert served and await all_ended(served), (
            f"the upstream connection that misbehaved stays open: {what()}"
        )
    if not first.eof:
        await follow_up(first, UP, "/after-same-tunnel", [case.method])
    second = await proxy.tunnel("up")
    await follow_up(second, UP, "/after-second-tunnel", [])
    await first.aclose()
    await second.aclose()
    await proxy.finish()


async def test_unsolicited_bytes_on_an_idle_keepalive_connection(
    hostile: StartProxy, upstreams: MakeUpstream
) -> None:
    """A response nobody asked for, written on a pooled idle connection: it closes that
    connection and never reaches a client, now or as the answer to a later request."""
    served: list[UpstreamConn] = []

    async def answer(req: Received, conn: UpstreamConn) -> None:
        served.append(conn)
        conn.write(ok_response(b"first"))

    upstream = await upstreams(answer)
    proxy = hostile({"up": upstream.url})
    first = await proxy.tunnel("up")
    first.send_plain(f"GET /hostile HTTP/1.1\r\nHost: {UP}\r\n\r\n".encode())
    assert _finals(await first.responses(["GET"], PROMPT)) == [(200, b"first")], first.summary()
    served[0].write(STRAY)  # on the connection the proxy now keeps idle in its pool
    assert await all_ended(served), "the proxy kept a connection that wrote outside any response"
    await follow_up(first, UP, "/after-same-tunnel", ["GET"])
    second = await proxy.tunnel("up")
    await follow_up(second, UP, "/after-second-tunnel", [])
    assert bytes(first.plain).count(b"STRAY") == 0 and bytes(second.plain).count(b"STRAY") == 0
    await first.aclose()
    await second.aclose()
    await proxy.finish()


async def test_the_same_hostile_answers_pipelined(hostile: StartProxy, upstreams: MakeUpstream) -> None:
    """Three pipelined requests on one tunnel, the first answered twice: each request gets its
    own answer, in order, and the stray one goes nowhere."""
    served: list[UpstreamConn] = []

    async def answer(req: Received, conn: UpstreamConn) -> None:
        served.append(conn)
        if req.target == "/hostile":
            conn.write(ok_response(b"first") + STRAY)
        else:
            conn.write(ok_response(req.target.encode()))

    upstream = await upstreams(answer)
    proxy = hostile({"up": upstream.url})
    tunnel = await proxy.tunnel("up")
    tunnel.send_plain(
        b"".join(f"GET {p} HTTP/1.1\r\nHost: {UP}\r\n\r\n".encode() for p in ("/hostile", "/b", "/c"))
    )
    got = _finals(await tunnel.responses(["GET"] * 3, PROMPT))
    assert got == [(200, b"first"), (200, b"/b"), (200, b"/c")], tunnel.summary()
    await follow_up(tunnel, UP, "/after-same-tunnel", ["GET"] * 3)
    await tunnel.aclose()
    await proxy.finish()


async def test_an_interim_answer_is_filtered_like_a_final_one(
    hostile: StartProxy, upstreams: MakeUpstream
) -> None:
    """A 1xx goes through the one response writer: hop-by-hop headers, and those its Connection
    header names, never reach the client (issue #22)."""

    async def answer(req: Received, conn: UpstreamConn) -> None:
        conn.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: x-private\r\n"
            b"X-Private: 1\r\nKeep-Alive: timeout=5\r\n\r\n" + ok_response(b"final")
        )

    upstream = await upstreams(answer)
    proxy = hostile({"up": upstream.url})
    tunnel = await proxy.tunnel("up")
    tunnel.send_plain(f"GET /hints HTTP/1.1\r\nHost: {UP}\r\n\r\n".encode())
    got = await tunnel.responses(["GET"], PROMPT)
    assert [r.status for r in got] == [103, 200], tunnel.summary()
    interim = got[0]
    assert interim.reason == "Early Hints" and interim.header("link") == "</a.css>; rel=preload"
    for name in ("connection", "x-private", "keep-alive", "content-length", "transfer-encoding"):
        assert interim.header(name) is None, f"{name} reached the client: {interim}"
    assert got[1].body == b"final"
