"""HTTP header rules for the forwarding hop (SPEC §5). Pure: no I/O.

What the proxy refuses (request smuggling shapes, HTTP versions other than 1.0 and 1.1, a Host
it could not route exactly), which headers it drops (hop-by-hop, forwarding headers nobody inside
the tunnel may set, proxy credentials, names with `_`) and what it sends on, in both directions.
The I/O layers parse bytes with httptools and hand the parsed head to these functions.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any, Final, NamedTuple
from urllib.parse import urlsplit

from mcp_tunnel.errors import BadRequest, ProxyError, VersionNotSupported
from mcp_tunnel.routing import normalize_host

Headers = list[tuple[bytes, bytes]]

# Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies must not forward.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Nothing inside the tunnel may claim to know the client's address, scheme or the public URL:
# the upstream would trust it as if a proxy in front had set it. Names, not an `x-forwarded-`
# prefix test, so the usual request pays one set lookup per header, as before.
FORWARDING: Final = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-prefix",  # path prefix for built URLs (Spring, Werkzeug ProxyFix, Traefik)
        b"x-forwarded-server",  # the public host name, in Jetty's authority search order
        b"x-forwarded-scheme",  # the scheme, read by Rack alongside X-Forwarded-Proto
        b"x-forwarded-ssl",  # `on` means https to Rack
        b"x-real-ip",  # the client address nginx's realip module reads by default
    }
)
# Credentials for a proxy, hop-by-hop by nature (RFC 9110 §11.7.2): this proxy asks for none,
# and an upstream must never see what the client meant for one.
PROXY_CREDENTIALS: Final = frozenset({b"proxy-authorization"})
_STRIP_REQUEST: Final = HOP_BY_HOP | FORWARDING | PROXY_CREDENTIALS | {b"host", b"content-length"}
_STRIP_RESPONSE: Final = HOP_BY_HOP | {b"content-length"}

# Status codes whose responses never carry a body (RFC 9110 §6.4.1).
NO_BODY_STATUSES: Final = frozenset({204, 304})


class RequestHead(NamedTuple):
    """An inner request as the proxy understood it, after validation.

    A named tuple rather than a frozen dataclass: as immutable, and about 1 us cheaper to build
    on every request.
    """

    method: str
    target: bytes  # origin-form (path and query), forwarded unchanged
    host: str  # normalised routing host
    raw_host: bytes  # the Host value as received, forwarded unchanged by default
    headers: Headers  # end-to-end headers to forward (hop-by-hop, Host, framing removed)
    content_length: int | None  # None with chunked or no body
    chunked: bool
    keep_alive: bool
    path: str  # path without query, for logs

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def _dropped(base: frozenset[bytes], connection: list[bytes]) -> frozenset[bytes]:
    """`base` plus the header names the Connection header values list."""
    tokens = {t.strip().lower() for value in connection for t in value.split(b",") if t.strip()}
    return base if tokens <= base else base | tokens


# The request headers validation looks at; every other header only needs the drop-set check.
_REQUEST_FRAMING: Final = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})
# A host name: no userinfo, path, query, fragment or brackets (checked after any `:port` is cut).
_BAD_HOST_CHAR: Final = re.compile(r"[ /\\@?#\[\]]").search
# An IPv6 literal: it has a `:`, so `[echo]` cannot route as `echo`; then an optional `:port`.
_IPV6_AUTHORITY: Final = re.compile(r"\[[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*\](?::([0-9]{1,5}))?").fullmatch


def _valid_authority(text: str) -> bool:
    """`host[:port]` as routing assumes it, with a port a connection could use (1-65535).

    `normalize_host` strips whatever follows the colon: unchecked, `echo:abc`, `echo:` and
    `echo:0` would route as `echo`. The port is looked at only when there is a colon.
    """
    if ":" not in text:  # the usual Host
        return bool(text) and _BAD_HOST_CHAR(text) is None
    port: str | None
    if text[0] == "[":  # not empty: it has a colon
        shape = _IPV6_AUTHORITY(text)
        if shape is None:
            return False
        port = shape.group(1)
    else:
        name, _, port = text.partition(":")  # a second colon fails the digits test below
        if not name or _BAD_HOST_CHAR(name) is not None:
            return False
    # isdecimal() is ASCII digits here (Host is ASCII; latin-1 has no other decimals) and False
    # for an empty port; 5 at most keeps int() cheap.
    return port is None or (len(port) <= 5 and port.isdecimal() and 0 < int(port) < 65536)


def validate_request(
    method: str,
    target: bytes,
    version: str,
    headers: Headers,
    *,
    keep_alive: bool,
) -> RequestHead:
    """Check one parsed request head and reduce it to what may be forwarded.

    `headers` carry lowercased names. Raises a ProxyError subclass (its status is the answer);
    such a request never reaches an upstream.
    """
    # 1.0 (with a Host) and 1.1 only, re-emitted upstream as 1.1; llhttp also parses `HTTP/2.0`
    # and `HTTP/0.9` request lines, which we cannot forward faithfully.
    if version != "1.1" and version != "1.0":
        raise VersionNotSupported(f"HTTP/{version} request")
    # One pass picks out the headers that decide framing and routing.
    hosts: list[bytes] = []
    lengths: list[bytes] = []
    encodings: list[bytes] = []
    connection: list[bytes] = []
    for name, value in headers:
        if name in _REQUEST_FRAMING:
            if name == b"host":
                hosts.append(value)
            elif name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                encodings.append(value)
            else:
                connection.append(value)

    if len(hosts) > 1:
        raise BadRequest("more than one Host header", body="Bad request: more than one Host header")
    if not hosts:
        raise BadRequest("missing Host header", body="Bad request: missing Host header")
    if lengths and encodings:
        raise BadRequest(
            "both Content-Length and Transfer-Encoding",
            body="Bad request: both Content-Length and Transfer-Encoding",
        )

    content_length: int | None = None
    if lengths:
        if len(lengths) == 1 and b"," not in lengths[0]:
            value = lengths[0].strip()  # the usual single value
        else:  # repeated or listed: allowed only when every value is the same
            values = {v.strip() for v in b",".join(lengths).split(b",")}
            value = next(iter(values)) if len(values) == 1 else b""
        if not value.isdigit():
            raise BadRequest("invalid Content-Length", body="Bad request: invalid Content-Length")
        content_length = int(value)

    chunked = False
    if encodings:
        codings = [c.strip().lower() for c in b",".join(encodings).split(b",") if c.strip()]
        if codings != [b"chunked"]:
            raise BadRequest(
                "unsupported Transfer-Encoding", body="Bad request: unsupported Transfer-Encoding"
            )
        chunked = True

    raw_host = hosts[0].strip()
    try:
        host_text = raw_host.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("non-ASCII Host", body="Bad request: invalid Host header") from None
    if not _valid_authority(host_text):
        raise BadRequest("invalid Host", body="Bad request: invalid Host header")
    host = normalize_host(host_text)

    origin_target = target
    if not target.startswith(b"/"):
        if target == b"*" and method == "OPTIONS":
            pass
        elif target.startswith((b"http://", b"https://")):
            try:
                parts = urlsplit(target.decode("latin-1"))
            except ValueError:  # brackets urlsplit cannot read as an IP address
                raise BadRequest(
                    "invalid request target", body="Bad request: invalid request target"
                ) from None
            authority = parts.netloc
            if "@" in authority or normalize_host(authority) != host:
                raise BadRequest(
                    "absolute-form target does not match Host",
                    body="Bad request: request target does not match Host",
                )
            if not _valid_authority(authority):
                raise BadRequest("invalid request target", body="Bad request: invalid request target")
            rest = parts.path or "/"
            origin_target = (rest + ("?" + parts.query if parts.query else "")).encode("latin-1")
        else:
            raise BadRequest("invalid request target", body="Bad request: invalid request target")

    drop = _dropped(_STRIP_REQUEST, connection) if connection else _STRIP_REQUEST
    # Names with `_` are dropped, as nginx does by default: upstream connections are pooled across
    # tunnels, and a server that maps `_` and `-` to one CGI variable would read `Content_Length`
    # or `X_Forwarded_For` as the real thing.
    # (`95 in name`, not `b"_" in name`: CPython tries an int first and pays for a TypeError.)
    forwarded = [pair for pair in headers if pair[0] not in drop and 95 not in pair[0]]
    path = origin_target.partition(b"?")[0].decode("latin-1")
    return RequestHead(
        method, origin_target, host, raw_host, forwarded, content_length, chunked, keep_alive, path
    )


def upstream_request_head(req: RequestHead, *, host_header: bytes, forwarded_host: bytes) -> bytes:
    """Serialise the request for the upstream, with our framing and forwarding headers."""
    if req.chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    elif req.content_length is not None:
        framing = b"Content-Length: %d\r\n" % req.content_length
    else:
        framing = b""
    return b"%s %s HTTP/1.1\r\nHost: %s\r\n%sX-Forwarded-Proto: https\r\nX-Forwarded-Host: %s\r\n%s\r\n" % (
        req.method.encode(),
        req.target,
        host_header,
        b"".join([b"%s: %s\r\n" % pair for pair in req.headers]),
        forwarded_host,
        framing,
    )


class ResponseFraming(NamedTuple):
    """How the proxy frames a response body towards the tunnel client."""

    head: bytes
    chunked: bool  # re-chunk the body (upstream sent chunked or close-delimited)
    has_body: bool
    close_delimited: bool  # the upstream's body ends when it closes the connection


_RESPONSE_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def downstream_response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    request_method: str,
    keep_alive: bool,
) -> ResponseFraming:
    """Serialise a response head for the tunnel client: the one writer of every status line the
    proxy sends there (an upstream's final and 1xx answers, its own errors, an MCP answer).

    Hop-by-hop headers are removed (with those the Connection header names) and the framing is
    the proxy's own. A 1xx interim answer is filtered the same way and carries no framing and no
    `Connection: close`: the connection's fate is the final answer's to say. `headers` are
    matched with lowercased names; a name the proxy writes itself may keep its capitals.
    """
    length: bytes | None = None  # the first Content-Length
    is_chunked_upstream = False
    connection: list[bytes] = []
    for name, value in headers:
        if name in _RESPONSE_FRAMING:
            if name == b"content-length":
                if length is None:
                    length = value
            elif name == b"transfer-encoding":
                is_chunked_upstream = True
            else:
                connection.append(value)
    drop = _dropped(_STRIP_RESPONSE, connection) if connection else _STRIP_RESPONSE
    interim = status < 200
    has_body = not (interim or request_method == "HEAD" or status in NO_BODY_STATUSES)
    chunked = False
    if interim:
        framing = b""
        keep_alive = True
    elif length is not None and not is_chunked_upstream:
        framing = b"Content-Length: " + length.strip() + b"\r\n"
    elif has_body:
        chunked = True
        framing = b"Transfer-Encoding: chunked\r\n"
    else:
        framing = b""
    head = b"HTTP/1.1 %d %s\r\n%s%s%s\r\n" % (
        status,
        reason or _phrase(status),
        b"".join([b"%s: %s\r\n" % pair for pair in headers if pair[0] not in drop]),
        framing,
        b"" if keep_alive else b"Connection: close\r\n",
    )
    close_delimited = chunked and not is_chunked_upstream
    return ResponseFraming(head, chunked, has_body, close_delimited)


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def error_response(error: ProxyError, *, keep_alive: bool, head_request: bool = False) -> bytes:
    """The proxy's own answer: one short line of plain text, never an internal address.

    To a HEAD request the same head without the body (RFC 9110 §9.3.2): a body there would be
    read as the start of the next response.
    """
    body = error.body.encode() + b"\n"
    head = whole_response_head(error.status, b"text/plain; charset=utf-8", len(body), keep_alive=keep_alive)
    return head if head_request else head + body


def whole_response_head(status: int, content_type: bytes, length: int, *, keep_alive: bool) -> bytes:
    """The head of an answer the proxy makes whole itself (`downstream_response_head`'s)."""
    headers = [(b"Content-Type", content_type), (b"content-length", b"%d" % length)]
    return downstream_response_head(status, b"", headers, request_method="GET", keep_alive=keep_alive).head


# --- what a body is, for the modules that read one (mcp_policy, oauth_rewrite) ------------------


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of a (lowercased) header name, or None."""
    for n, v in headers:
        if n == name:
            return v
    return None


def media_type(headers: Headers) -> bytes:
    """`Content-Type` without its parameters, lowercased (b"" when absent)."""
    value = header_value(headers, b"content-type")
    return b"" if value is None else value.split(b";", 1)[0].strip().lower()


def is_json_media(media: bytes) -> bool:
    return media == b"application/json" or media.endswith(b"+json")


def is_compressed(headers: Headers) -> bool:
    """A `Content-Encoding` other than identity: the bytes cannot be read or rewritten as they are."""
    value = header_value(headers, b"content-encoding")
    return value is not None and value.strip().lower() not in (b"", b"identity")


def json_body(body: bytes) -> Any:
    """`body` parsed as JSON, or None when it is not JSON: bad bytes, bad syntax, or nested deeper
    than the parser goes (`[` ten thousand times is a RecursionError, not a ValueError)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def with_length(headers: Headers, length: int) -> Headers:
    """`headers` for a body rewritten whole: its framing replaced by a fresh Content-Length."""
    kept = [(n, v) for n, v in headers if n not in (b"content-length", b"transfer-encoding")]
    kept.append((b"content-length", b"%d" % length))
    return kept


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


LAST_CHUNK: Final = b"0\r\n\r\n"
