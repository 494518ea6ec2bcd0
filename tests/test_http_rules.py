"""http_rules, pure: every refusal, what is dropped, and the exact bytes sent each way."""

from __future__ import annotations

import pytest

from mcp_tunnel.errors import BadRequest, NoRoute, VersionNotSupported
from mcp_tunnel.http_rules import (
    Headers,
    RequestHead,
    downstream_response_head,
    error_response,
    upstream_request_head,
    validate_request,
)
from mcp_tunnel.mcp_policy import json_answer

HOST = (b"host", b"Echo.Tunnel.Test:443")
CL, TE = b"content-length", b"transfer-encoding"
BOTH_FRAMINGS = "Bad request: both Content-Length and Transfer-Encoding"
BAD_HOST = "Bad request: invalid Host header"
BAD_TARGET = "Bad request: invalid request target"


def _ok(headers: Headers, *, method: str = "POST", target: bytes = b"/mcp?x=1") -> RequestHead:
    return validate_request(method, target, "1.1", headers, keep_alive=True)


@pytest.mark.parametrize(
    ("headers", "target", "body"),
    [
        ([HOST, (b"host", b"x")], b"/", "Bad request: more than one Host header"),
        ([], b"/", "Bad request: missing Host header"),
        ([HOST, (CL, b"1"), (TE, b"chunked")], b"/", BOTH_FRAMINGS),
        ([HOST, (CL, b"1"), (CL, b"2")], b"/", "Bad request: invalid Content-Length"),
        ([HOST, (CL, b"1, 2")], b"/", "Bad request: invalid Content-Length"),
        ([HOST, (CL, b"-1")], b"/", "Bad request: invalid Content-Length"),
        ([HOST, (CL, b"")], b"/", "Bad request: invalid Content-Length"),
        ([HOST, (TE, b"gzip, chunked")], b"/", "Bad request: unsupported Transfer-Encoding"),
        ([(b"host", b"\xc3\xa9")], b"/", "Bad request: invalid Host header"),
        ([(b"host", b"  ")], b"/", "Bad request: invalid Host header"),
        ([(b"host", b"a b")], b"/", "Bad request: invalid Host header"),
        ([(b"host", b"u@echo")], b"/", "Bad request: invalid Host header"),
        ([(b"host", b"a\\b")], b"/", "Bad request: invalid Host header"),
        ([(b"host", b"a?b")], b"/", "Bad request: invalid Host header"),
        ([HOST], b"http://other.test/", "Bad request: request target does not match Host"),
        ([HOST], b"http://u@echo.tunnel.test/", "Bad request: request target does not match Host"),
        ([HOST], b"mcp", "Bad request: invalid request target"),
        ([HOST], b"*", "Bad request: invalid request target"),  # only OPTIONS may say *
        # A port routing would strip unread: every one of these would have routed as `echo`.
        ([(b"host", b"echo:abc")], b"/", BAD_HOST),
        ([(b"host", b"echo:")], b"/", BAD_HOST),
        ([(b"host", b"echo:0")], b"/", BAD_HOST),
        ([(b"host", b"echo:65536")], b"/", BAD_HOST),
        ([(b"host", b"echo:123456")], b"/", BAD_HOST),
        ([(b"host", b"echo:+80")], b"/", BAD_HOST),
        ([(b"host", b"echo:8_0")], b"/", BAD_HOST),
        ([(b"host", b"echo:80:80")], b"/", BAD_HOST),
        ([(b"host", b":443")], b"/", BAD_HOST),
        ([(b"host", b"::1")], b"/", BAD_HOST),  # IPv6 only in brackets
        ([(b"host", b"[echo]")], b"/", BAD_HOST),  # brackets hold an IPv6 literal, not a name
        ([(b"host", b"[::1]x")], b"/", BAD_HOST),
        ([(b"host", b"[::1]:")], b"/", BAD_HOST),
        ([(b"host", b"[::1]:0")], b"/", BAD_HOST),
        ([(b"host", b"[::1")], b"/", BAD_HOST),
        ([(b"host", b"echo]")], b"/", BAD_HOST),
        # The absolute-form authority passes the same check as Host.
        ([HOST], b"http://echo.tunnel.test:abc/", BAD_TARGET),
        ([HOST], b"http://echo.tunnel.test:/", BAD_TARGET),
        ([HOST], b"http://echo.tunnel.test:0/", BAD_TARGET),
        ([HOST], b"http://echo.tunnel.test:70000/", BAD_TARGET),
        ([HOST], b"http://echo.tunnel.test:443:443/", "Bad request: request target does not match Host"),
        ([HOST], b"http://[echo.tunnel.test]/", BAD_TARGET),  # urlsplit's own ValueError
        ([HOST], b"http://[::1/", BAD_TARGET),
    ],
)  # fmt: skip
def test_refusals(headers: Headers, target: bytes, body: str) -> None:
    with pytest.raises(BadRequest) as refused:
        _ok(headers, target=target)
    assert (refused.value.status, refused.value.body) == (400, body)


@pytest.mark.parametrize("version", ["2.0", "0.9", "1.2", "3.0", ""])
def test_versions_other_than_1_0_and_1_1_get_505(version: str) -> None:
    """llhttp itself parses `HTTP/2.0` and `HTTP/0.9` request lines (and refuses 1.2 and 3.0)."""
    with pytest.raises(VersionNotSupported) as refused:
        validate_request("GET", b"/", version, [HOST], keep_alive=False)
    assert (refused.value.status, refused.value.body) == (505, "HTTP version not supported")
    assert validate_request("GET", b"/", "1.0", [HOST], keep_alive=False).host == "echo.tunnel.test"


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        (b"echo:1", "echo"),
        (b"echo:65535", "echo"),
        (b"echo:0443", "echo"),
        (b"Echo.Tunnel.Test.:443", "echo.tunnel.test"),
        (b"[::1]", "::1"),
        (b"[::1]:8080", "::1"),  # routes nowhere (route keys are names), but is a valid Host
        (b"[::FFFF:10.0.0.1]:80", "::ffff:10.0.0.1"),
    ],
)
def test_hosts_with_ports_and_ipv6_literals_accepted(raw: bytes, host: str) -> None:
    assert _ok([(b"host", raw)]).host == host
    assert _ok([(b"host", raw)], target=b"http://" + raw + b"/p").target == b"/p"


@pytest.mark.parametrize(
    "name",
    [
        b"transfer_encoding",  # read as Transfer-Encoding by servers that fold `_` into `-`
        b"content_length",
        b"x_forwarded_for",
        b"x-custom_name",
        b"_",
        b"proxy-authorization",
        b"x-real-ip",
        b"x-forwarded-server",
        b"x-forwarded-prefix",
        b"x-forwarded-scheme",
        b"x-forwarded-ssl",
    ],
)
def test_dropped_request_headers(name: bytes) -> None:
    """Dropped, not refused: the request is still served, without the header."""
    head = _ok([HOST, (b"accept", b"*/*"), (name, b"1"), (b"x-custom-name", b"2")], method="GET")
    assert head.headers == [(b"accept", b"*/*"), (b"x-custom-name", b"2")]
    assert (head.content_length, head.chunked) == (None, False)  # no framing read from `_` names


def test_accepted_head_and_what_is_dropped() -> None:
    headers = [
        HOST,
        (b"content-length", b" 5 "),
        (b"connection", b"keep-alive, X-Secret-Hop"),
        (b"x-secret-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"forwarded", b"for=6.6.6.6"),
        (b"accept", b"application/json"),
        (b"mcp-session-id", b"abc"),
    ]
    head = _ok(headers)
    assert head.host == "echo.tunnel.test" and head.raw_host == b"Echo.Tunnel.Test:443"
    assert (head.method, head.target, head.path) == ("POST", b"/mcp?x=1", "/mcp")
    assert (head.content_length, head.chunked, head.has_body, head.keep_alive) == (5, False, True, True)
    assert head.headers == [(b"accept", b"application/json"), (b"mcp-session-id", b"abc")]
    assert _ok([HOST, (b"content-length", b"5, 5"), (b"content-length", b"5")]).content_length == 5
    assert _ok([HOST, (b"transfer-encoding", b"Chunked")]).chunked
    assert not _ok([HOST], method="GET").has_body
    assert _ok([HOST], method="OPTIONS", target=b"*").path == "*"
    absolute = _ok([HOST], target=b"http://echo.tunnel.test:443/a/b?q=1")
    assert (absolute.target, absolute.path) == (b"/a/b?q=1", "/a/b")
    assert _ok([HOST], target=b"https://echo.tunnel.test").target == b"/"


def test_upstream_request_bytes() -> None:
    head = _ok([HOST, (b"content-length", b"5"), (b"accept", b"*/*")])
    assert upstream_request_head(head, host_header=b"up:9000", forwarded_host=head.raw_host) == (
        b"POST /mcp?x=1 HTTP/1.1\r\nHost: up:9000\r\naccept: */*\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: Echo.Tunnel.Test:443\r\nContent-Length: 5\r\n\r\n"
    )
    chunked = _ok([HOST, (b"transfer-encoding", b"chunked")])
    assert upstream_request_head(chunked, host_header=b"h", forwarded_host=b"h").endswith(
        b"X-Forwarded-Host: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    bodiless = _ok([HOST], method="GET")
    assert upstream_request_head(bodiless, host_header=b"h", forwarded_host=b"h") == (
        b"GET /mcp?x=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\n\r\n"
    )


def test_downstream_response_framing() -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b" 2 "),
        (b"connection", b"close, x-hop"),
        (b"x-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
    ]
    framing = downstream_response_head(200, b"OK", headers, request_method="GET", keep_alive=True)
    assert framing.head == b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 2\r\n\r\n"
    assert (framing.chunked, framing.has_body, framing.close_delimited) == (False, True, False)

    chunked = [(b"transfer-encoding", b"chunked"), (b"content-length", b"9")]
    framing = downstream_response_head(201, b"", chunked, request_method="POST", keep_alive=False)
    assert framing.head == b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    assert (framing.chunked, framing.has_body, framing.close_delimited) == (True, True, False)

    framing = downstream_response_head(200, b"OK", [], request_method="GET", keep_alive=True)
    assert framing.head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert (framing.chunked, framing.has_body, framing.close_delimited) == (True, True, True)

    for status, method in ((204, "GET"), (304, "GET"), (200, "HEAD"), (103, "GET")):
        framing = downstream_response_head(status, b"X", [], request_method=method, keep_alive=True)
        assert framing.head == b"HTTP/1.1 %d X\r\n\r\n" % status
        assert (framing.chunked, framing.has_body) == (False, False)
    assert downstream_response_head(599, b"", [], request_method="HEAD", keep_alive=True).head == (
        b"HTTP/1.1 599 Unknown\r\n\r\n"
    )


def test_interim_answers_are_filtered_like_final_ones() -> None:
    """One writer for every status line: a 1xx loses its hop-by-hop headers (and those its
    Connection header names) like a final answer, and carries no framing or Connection: close."""
    headers = [
        (b"link", b"</a.css>; rel=preload"),
        (b"connection", b"x-private"),
        (b"x-private", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"content-length", b"0"),
        (b"transfer-encoding", b"chunked"),
    ]
    framing = downstream_response_head(103, b"", headers, request_method="GET", keep_alive=False)
    assert framing.head == b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
    assert (framing.chunked, framing.has_body) == (False, False)
    assert downstream_response_head(100, b"Continue", [], request_method="POST", keep_alive=True).head == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )


def test_the_proxys_own_answers_come_from_the_same_writer() -> None:
    """Error and MCP answers: byte for byte what clients and tests have always seen."""
    assert error_response(NoRoute(), keep_alive=True) == (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 29\r\n"
        b"\r\nNo route configured for host\n"
    )
    assert error_response(NoRoute(), keep_alive=False, head_request=True) == (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 29\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert json_answer(b"{}", keep_alive=False) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n{}"
    )
