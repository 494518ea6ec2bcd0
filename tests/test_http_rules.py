"""http_rules, pure: every refusal, what is dropped, and the exact bytes sent each way."""

from __future__ import annotations

import pytest

from mcp_tunnel.errors import BadRequest, HeadersTooLarge, NoRoute, ProxyError, VersionNotSupported
from mcp_tunnel.http_rules import (
    LAST_CHUNK,
    Headers,
    RequestHead,
    chunk,
    downstream_response_head,
    error_response,
    header_value,
    is_compressed,
    is_json_media,
    json_body,
    media_type,
    upstream_request_head,
    validate_request,
    with_length,
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
        ([(b"host", b"echo:000080")], b"/", BAD_HOST),  # five digits at most, even for a small port
        # The absolute-form authority passes the same check as Host.
        ([HOST], b"http://echo.tunnel.test:abc/", BAD_TARGET),
        ([HOST], b"http://echo.tunnel.test:/", BAD_TARGET),
        ([HOST], b"http://echo.tunnel.test:0/", BAD_TARGET),
        ([HOST], b"http://echo.tunnel.test:70000/", BAD_TARGET),
        ([HOST], b"http://echo.tunnel.test:443:443/", "Bad request: request target does not match Host"),
        ([HOST], b"http://[echo.tunnel.test]/", BAD_TARGET),  # urlsplit's own ValueError
        ([HOST], b"http://[::1/", BAD_TARGET),
        # Userinfo in the authority, even where routing would cut it off with the "port".
        ([HOST], b"http://echo.tunnel.test:4@3/", "Bad request: request target does not match Host"),
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


@pytest.mark.parametrize(
    ("headers", "target", "reason"),
    [
        ([HOST, (b"host", b"x")], b"/", "more than one Host header"),
        ([], b"/", "missing Host header"),
        ([HOST, (CL, b"1"), (TE, b"chunked")], b"/", "both Content-Length and Transfer-Encoding"),
        ([HOST, (CL, b"x")], b"/", "invalid Content-Length"),
        ([HOST, (TE, b"gzip")], b"/", "unsupported Transfer-Encoding"),
        ([(b"host", b"\xc3\xa9")], b"/", "non-ASCII Host"),
        ([(b"host", b"a b")], b"/", "invalid Host"),
        ([HOST], b"http://other.test/", "absolute-form target does not match Host"),
        ([HOST], b"http://[::1/", "invalid request target"),
        ([HOST], b"http://echo.tunnel.test:abc/", "invalid request target"),
        ([HOST], b"mcp", "invalid request target"),
    ],
)  # fmt: skip
def test_refusal_reasons(headers: Headers, target: bytes, reason: str) -> None:
    """The reason is what the proxy logs; the body (test_refusals) is what the client reads."""
    with pytest.raises(BadRequest) as refused:
        _ok(headers, target=target)
    assert refused.value.reason == str(refused.value) == reason


def test_version_refusal_reason_names_the_version() -> None:
    with pytest.raises(VersionNotSupported) as refused:
        validate_request("GET", b"/", "2.0", [HOST], keep_alive=True)
    assert refused.value.reason == "HTTP/2.0 request"


def test_list_forms_of_the_framing_headers() -> None:
    """RFC 9110 §5.6.1: empty list elements are ignored; a list of one repeated length is that length."""
    assert _ok([HOST, (CL, b"5, 5")]).content_length == 5
    assert _ok([HOST, (CL, b"7")]).content_length == 7
    assert _ok([HOST, (TE, b",chunked")]).chunked
    assert _ok([HOST, (TE, b""), (TE, b"chunked")]).chunked
    for codings in (b"chunked,chunked", b"gzip,chunked"):
        with pytest.raises(BadRequest):
            _ok([HOST, (TE, codings)])


def test_connection_tokens_without_spaces_are_dropped_both_ways() -> None:
    request = _ok([HOST, (b"connection", b"close,x-hop"), (b"x-hop", b"1"), (b"a", b"1"), (b"b", b"2")])
    assert request.headers == [(b"a", b"1"), (b"b", b"2")]
    assert upstream_request_head(request, host_header=b"h", forwarded_host=b"h") == (
        b"POST /mcp?x=1 HTTP/1.1\r\nHost: h\r\na: 1\r\nb: 2\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: h\r\n\r\n"
    )
    headers = [(b"connection", b"keep-alive,x-hop"), (b"x-hop", b"1"), (b"a", b"1"), (b"b", b"2")]
    framing = downstream_response_head(200, b"OK", headers, request_method="GET", keep_alive=True)
    assert framing.head == b"HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("status", [100, 101, 102, 103, 199])
def test_informational_responses_have_no_body(status: int) -> None:
    framing = downstream_response_head(status, b"X", [], request_method="GET", keep_alive=True)
    assert (framing.head, framing.chunked, framing.has_body) == (
        b"HTTP/1.1 %d X\r\n\r\n" % status,
        False,
        False,
    )
    framing = downstream_response_head(200, b"OK", [], request_method="GET", keep_alive=True)
    assert framing.has_body


@pytest.mark.parametrize(
    ("error", "keep_alive", "head_request", "expected"),
    [
        (
            BadRequest("x", body="Bad request: missing Host header"),
            True,
            False,
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 33\r\n"
            b"\r\nBad request: missing Host header\n",
        ),
        (
            NoRoute("x"),
            False,
            False,
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 29\r\n"
            b"Connection: close\r\n\r\nNo route configured for host\n",
        ),
        (
            HeadersTooLarge("x"),
            False,
            True,  # the same head, no body: the Content-Length is the one a GET would get
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (len(HeadersTooLarge.body) + 1),
        ),
    ],
)  # fmt: skip
def test_error_response_bytes(
    error: ProxyError, keep_alive: bool, head_request: bool, expected: bytes
) -> None:
    assert error_response(error, keep_alive=keep_alive, head_request=head_request) == expected
    if not head_request:  # a GET by default
        assert error_response(error, keep_alive=keep_alive) == expected


# --- the body helpers of mcp_policy and oauth_rewrite -------------------------------------------


def test_header_value_is_the_first_of_that_name() -> None:
    headers = [(b"a", b"1"), (b"content-type", b"x/y"), (b"content-type", b"z/w")]
    assert header_value(headers, b"content-type") == b"x/y"
    assert header_value(headers, b"b") is None


@pytest.mark.parametrize(
    ("value", "media"),
    [
        (None, b""),
        (b"application/json", b"application/json"),
        (b" Application/JSON ; charset=utf-8; q=1", b"application/json"),
        (b"text/event-stream;charset=utf-8", b"text/event-stream"),
        (b"", b""),
    ],
)
def test_media_type(value: bytes | None, media: bytes) -> None:
    headers: Headers = [(b"x", b"1")] + ([] if value is None else [(b"content-type", value)])
    assert media_type(headers) == media


@pytest.mark.parametrize(
    ("media", "json"),
    [
        (b"application/json", True),
        (b"application/problem+json", True),
        (b"application/jsonx", False),
        (b"text/json-ish", False),
        (b"text/plain", False),
        (b"", False),
    ],
)
def test_is_json_media(media: bytes, json: bool) -> None:
    assert is_json_media(media) is json


@pytest.mark.parametrize(
    ("value", "compressed"),
    [(None, False), (b"", False), (b" Identity ", False), (b"gzip", True), (b"BR", True)],
)
def test_is_compressed(value: bytes | None, compressed: bool) -> None:
    headers: Headers = [(b"x", b"1")] + ([] if value is None else [(b"content-encoding", value)])
    assert is_compressed(headers) is compressed


def test_json_body() -> None:
    assert json_body(b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert json_body(b"not json") is None
    assert json_body(b"\xff") is None
    assert json_body(b"[" * 100_000) is None


def test_with_length_replaces_the_framing() -> None:
    headers = [(b"content-length", b"3"), (b"a", b"1"), (b"transfer-encoding", b"chunked"), (b"b", b"2")]
    assert with_length(headers, 1234) == [(b"a", b"1"), (b"b", b"2"), (b"content-length", b"1234")]
    assert headers[0] == (b"content-length", b"3")  # a new list: the caller's is not changed


def test_chunk_framing() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
