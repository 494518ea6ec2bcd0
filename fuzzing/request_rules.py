"""http_rules: the rules for an inner request, on heads parsed by httptools as the proxy does.

Inputs are request heads built line by line: methods, targets (origin, absolute with matching
and mismatching authorities, userinfo, IPv6, `*`, garbage), versions, and headers from the ones
the rules look at (Host with ports and bad characters, Content-Length lists, Transfer-Encoding,
Connection naming other headers, forwarding headers, proxy credentials, names with `_`), with
repeats, odd case and spacing; sometimes a byte changed or random bytes. httptools parses them
with the callbacks `proxy/http_server.InnerHTTP` uses (that class needs a server and a tunnel,
so the few lines that feed `validate_request` are mirrored here, not imported).

Oracle: llhttp refuses the bytes (the proxy answers 400), or `validate_request` returns a head
or raises BadRequest (400) or VersionNotSupported (505) with a one-line body; nothing else.
An accepted head forwards no hop-by-hop, forwarding, proxy-credential, framing or `_` header
nor any header its Connection names, has an origin-form target (or `*` for OPTIONS), a host
that `normalize_host` gives for its Host, not both a length and chunked; and the head sent
upstream (`upstream_request_head`) parses back with httptools as one request with that method,
target and framing: nothing the client wrote can make the upstream see another request.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
from hypothesis import strategies as st

from fuzzing.common import chance, mostly, permutation, pick
from fuzzing.driver import Harness
from mcp_tunnel.errors import BadRequest, ProxyError, VersionNotSupported
from mcp_tunnel.http_rules import (
    FORWARDING,
    HOP_BY_HOP,
    PROXY_CREDENTIALS,
    RequestHead,
    error_response,
    upstream_request_head,
    validate_request,
)
from mcp_tunnel.routing import normalize_host


@dataclass(frozen=True)
class Case:
    data: bytes


_HOSTS = [
    b"echo.example.com",
    b"Echo.Example.COM.",
    b"echo:8080",
    b"echo:0",
    b"echo:65536",
    b"echo:",
    b"echo:abc",
    b"[::1]",
    b"[::1]:80",
    b"[echo]",
    b"a b",
    b"a/b",
    b"u@echo",
    b"",
    b" echo ",
    b"\xc3\xa9cho",
    b"echo:80:80",
]
_VALUES: dict[bytes, list[bytes]] = {
    b"Host": _HOSTS,
    b"Content-Length": [
        b"0",
        b"5",
        b"5, 5",
        b"5,6",
        b" 7 ",
        b"-1",
        b"+5",
        b"0x5",
        b"99999999999999999999",
        b"",
    ],
    b"Transfer-Encoding": [b"chunked", b"Chunked", b"gzip, chunked", b"chunked, chunked", b"identity", b""],
    b"Connection": [b"close", b"keep-alive", b"X-Secret, close", b"upgrade", b"te", b"Host", b""],
    b"Upgrade": [b"websocket", b"h2c"],
    b"X-Forwarded-For": [b"10.0.0.1"],
    b"X-Real-IP": [b"10.0.0.1"],
    b"Forwarded": [b"for=10.0.0.1"],
    b"Proxy-Authorization": [b"Basic Zm9vOmJhcg=="],
    b"Content_Length": [b"5"],
    b"X-Secret": [b"s3cret"],
    b"Keep-Alive": [b"timeout=5"],
    b"TE": [b"trailers"],
    b"Accept": [b"*/*", b"text/event-stream"],
    b"Expect": [b"100-continue"],
}
_TARGETS = [
    b"/",
    b"/mcp?session=1",
    b"*",
    b"http://echo.example.com/x?y",
    b"https://echo.example.com:443",
    b"http://other.example.com/",
    b"http://u@echo.example.com/",
    b"http://[::1/",
    b"http://[::1]/",
    b"mcp",
    b"//echo/x",
    b"/%00",
]


_NAMES = sorted(_VALUES)
_METHODS = [b"POST", b"GET", b"POST", b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"CONNECT", b"PRI"]
_VERSIONS = [b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.2"]
_SHORT_BYTES = st.binary(max_size=12)
_RANDOM = st.binary(max_size=200)


@st.composite
def _header(draw: st.DrawFn) -> bytes:
    name = pick(draw, _NAMES)
    value = draw(_SHORT_BYTES) if chance(draw, 5) else pick(draw, _VALUES[name])
    name = pick(draw, [name, name.lower(), name.upper()])
    return name + pick(draw, [b": ", b":", b":\t"]) + value + mostly(draw, b"", [b" ", b"\t"])


_HEADERS = st.lists(_header(), max_size=6)


@st.composite
def _head(draw: st.DrawFn) -> bytes:
    method = pick(draw, _METHODS)
    target = pick(draw, _TARGETS)
    version = mostly(draw, b"HTTP/1.1", _VERSIONS)
    lines = [method + b" " + target + b" " + version]
    if not chance(draw, 6):
        lines.append(b"Host: " + mostly(draw, b"echo.example.com", _HOSTS))
    if chance(draw, 3):  # a header, and perhaps a Connection header that names it
        lines.append(b"X-Secret: s3cret")
        if chance(draw, 2):
            lines.append(b"Connection: " + pick(draw, [b"x-secret", b"keep-alive, X-Secret", b"X-SECRET ,"]))
    lines += draw(_HEADERS)
    order = draw(permutation(len(lines) - 1))
    return b"\r\n".join([lines[0], *(lines[i] for i in order)]) + b"\r\n\r\n"


_HEADS = _head()


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = pick(draw, ["head", "head", "head", "mutated", "random"])
    if kind == "random":
        return Case(draw(_RANDOM))
    data = draw(_HEADS)
    if kind == "mutated":
        at = pick(draw, range(len(data)))
        data = data[:at] + bytes([pick(draw, range(256))]) + data[at + 1 :]
    return Case(data)


class _Stop(Exception):
    """Raised from on_headers_complete: the first head is all this harness looks at."""


class _Head:
    """The callbacks InnerHTTP gives httptools, up to validate_request."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.result: RequestHead | ProxyError | None = None
        self.unexpected: BaseException | None = None
        self.version = ""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.version = parser.get_http_version()
        try:
            self.result = validate_request(
                parser.get_method().decode("latin-1"),
                self.url,
                parser.get_http_version(),
                self.headers,
                keep_alive=parser.should_keep_alive(),
            )
        except ProxyError as err:
            self.result = err
        except BaseException as exc:  # the finding: kept, so it is not mistaken for a parse error
            self.unexpected = exc
        raise _Stop


def judge(data: bytes) -> tuple[RequestHead | ProxyError | None, _Head]:
    """The head's verdict (None when llhttp refuses the bytes or the head is not whole), and the
    head as parsed."""
    head = _Head()
    try:
        head.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass  # the head was judged before llhttp saw the upgrade
    except httptools.HttpParserError as exc:
        if not isinstance(exc.__context__, _Stop):
            assert head.result is None, (head.result, exc)
    if head.unexpected is not None:
        raise head.unexpected
    return head.result, head


class _Reparsed:
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.heads = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.heads += 1


# RFC 3986's authority as routing may use it: a name or a bracketed IPv6 literal, a port 1-65535.
_AUTHORITY = re.compile(rb"(?:[^\s/\\@?#\[\]:]+|\[[0-9A-Fa-f.:]*:[0-9A-Fa-f.:]*\])(?::0*([1-9][0-9]{0,4}))?")


def _valid_authority(raw: bytes) -> bool:
    shape = _AUTHORITY.fullmatch(raw)
    return shape is not None and (shape.group(1) is None or int(shape.group(1)) <= 65535)


def _check_accepted(head: RequestHead, request: _Head) -> None:
    """SPEC §5's rules, restated here independently of http_rules, on a head it accepted."""
    parsed, url = request.headers, request.url
    assert request.version in ("1.0", "1.1"), (request.version, head)
    named = {t.strip().lower() for n, v in parsed if n == b"connection" for t in v.split(b",")}
    banned = HOP_BY_HOP | FORWARDING | PROXY_CREDENTIALS | {b"host", b"content-length"} | named
    for name, _ in head.headers:
        assert name not in banned and b"_" not in name, (name, head)
    assert head.target.startswith(b"/") or (head.target == b"*" and head.method == "OPTIONS"), head
    hosts = [v for n, v in parsed if n == b"host"]
    assert len(hosts) == 1 and hosts[0].strip() == head.raw_host, (hosts, head)
    assert _valid_authority(head.raw_host), head
    assert head.host == normalize_host(head.raw_host.decode("ascii")), head
    if not url.startswith(b"/") and url != b"*":  # absolute-form: the authority is the Host's
        authority = urlsplit(url.decode("latin-1")).netloc
        assert _valid_authority(authority.encode("latin-1")), (url, head)
        assert normalize_host(authority) == head.host, (url, head)
    codings = [c.strip().lower() for n, v in parsed if n == b"transfer-encoding" for c in v.split(b",")]
    assert head.chunked == (codings == [b"chunked"]) and (head.chunked or not codings), (codings, head)
    lengths = {v.strip() for n, v in parsed if n == b"content-length" for v in v.split(b",")}
    assert head.content_length == (int(lengths.pop()) if lengths else None), (lengths, head)
    assert not (head.chunked and head.content_length is not None), head

    sent = upstream_request_head(head, host_header=head.raw_host, forwarded_host=b"echo.example.com")
    again = _Reparsed()
    with contextlib.suppress(httptools.HttpParserUpgrade):  # a forwarded Upgrade stays the client's
        again.parser.feed_data(sent)
    assert again.heads == 1, sent
    assert again.parser.get_method().decode("latin-1") == head.method and again.url == head.target, sent
    sent_lengths = [v for n, v in again.headers if n == b"content-length"]
    sent_codings = [v for n, v in again.headers if n == b"transfer-encoding"]
    if head.chunked:
        assert sent_codings == [b"chunked"] and not sent_lengths, sent
    elif head.content_length is not None:
        assert sent_lengths == [b"%d" % head.content_length] and not sent_codings, sent
    else:
        assert not sent_lengths and not sent_codings, sent
    assert [v for n, v in again.headers if n == b"host"] == [head.raw_host], sent


def check(case: Case) -> None:
    result, parsed = judge(case.data)
    if result is None:
        return
    if isinstance(result, ProxyError):
        assert type(result) in (BadRequest, VersionNotSupported), result
        assert result.status == (400 if type(result) is BadRequest else 505), result
        assert result.body and "\n" not in result.body and "\r" not in result.body, result.body
        response = error_response(result, keep_alive=False)
        assert response.startswith(b"HTTP/1.1 %d " % result.status), response
        return
    _check_accepted(result, parsed)


HARNESS = Harness("request_rules", cases(), check)
