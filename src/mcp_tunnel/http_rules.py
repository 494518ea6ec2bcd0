"""HTTP header rules for the forwarding hop (SPEC §5). Pure: no I/O.

What the proxy refuses (request smuggling shapes), which headers it drops (hop-by-hop and
forwarding headers nobody inside the tunnel may set) and what it sends on, in both directions.
The I/O layers parse bytes with httptools and hand the parsed head to these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

from mcp_tunnel.errors import BadRequest, ProxyError
from mcp_tunnel.routing import normalize_host

Headers = list[tuple[bytes, bytes]]

# Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies must not forward.
HOP_BY_HOP = frozenset(
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
# Nothing inside the tunnel may claim to know the client's address or scheme.
FORWARDING = frozenset(
    {b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port"}
)
_STRIP_REQUEST = HOP_BY_HOP | FORWARDING | {b"host", b"content-length"}
_STRIP_RESPONSE = HOP_BY_HOP | {b"content-length"}

# Status codes whose responses never carry a body (RFC 9110 §6.4.1).
NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class RequestHead:
    """An inner request as the proxy understood it, after validation."""

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


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


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
    hosts = [v for n, v in headers if n == b"host"]
    lengths = [v for n, v in headers if n == b"content-length"]
    encodings = [v for n, v in headers if n == b"transfer-encoding"]

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
        values = {v.strip() for v in b",".join(lengths).split(b",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise BadRequest("invalid Content-Length", body="Bad request: invalid Content-Length")
        content_length = int(next(iter(values)))

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
    if not host_text or any(c in host_text for c in " /\\@?#"):
        raise BadRequest("invalid Host", body="Bad request: invalid Host header")
    host = normalize_host(host_text)

    origin_target = target
    if not target.startswith(b"/"):
        if target == b"*" and method == "OPTIONS":
            pass
        elif target.startswith((b"http://", b"https://")):
            parts = urlsplit(target.decode("latin-1"))
            if normalize_host(parts.netloc.rpartition("@")[2]) != host or "@" in parts.netloc:
                raise BadRequest(
                    "absolute-form target does not match Host",
                    body="Bad request: request target does not match Host",
                )
            rest = parts.path or "/"
            origin_target = (rest + ("?" + parts.query if parts.query else "")).encode("latin-1")
        else:
            raise BadRequest("invalid request target", body="Bad request: invalid request target")

    drop = _STRIP_REQUEST | _connection_tokens(headers)
    forwarded = [(n, v) for n, v in headers if n not in drop]
    path = origin_target.split(b"?", 1)[0].decode("latin-1")
    del version  # HTTP/1.0 is accepted with a Host; the head is re-emitted as HTTP/1.1
    return RequestHead(
        method=method,
        target=origin_target,
        host=host,
        raw_host=raw_host,
        headers=forwarded,
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
        path=path,
    )


def upstream_request_head(req: RequestHead, *, host_header: bytes, forwarded_host: bytes) -> bytes:
    """Serialise the request for the upstream, with our framing and forwarding headers."""
    lines = [f"{req.method} ".encode() + req.target + b" HTTP/1.1", b"Host: " + host_header]
    lines += [n + b": " + v for n, v in req.headers]
    lines.append(b"X-Forwarded-Proto: https")
    lines.append(b"X-Forwarded-Host: " + forwarded_host)
    if req.chunked:
        lines.append(b"Transfer-Encoding: chunked")
    elif req.content_length is not None:
        lines.append(b"Content-Length: %d" % req.content_length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class ResponseFraming:
    """How the proxy frames a response body towards the tunnel client."""

    head: bytes
    chunked: bool  # re-chunk the body (upstream sent chunked or close-delimited)
    has_body: bool
    close_delimited: bool  # the upstream's body ends when it closes the connection


def downstream_response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    request_method: str,
    keep_alive: bool,
) -> ResponseFraming:
    """Serialise the upstream's response for the tunnel client, hop-by-hop headers removed."""
    drop = _STRIP_RESPONSE | _connection_tokens(headers)
    lengths = [v for n, v in headers if n == b"content-length"]
    has_body = not (request_method == "HEAD" or status in NO_BODY_STATUSES or 100 <= status < 200)
    lines = [b"HTTP/1.1 %d " % status + (reason or _phrase(status))]
    lines += [n + b": " + v for n, v in headers if n not in drop]
    chunked = False
    is_chunked_upstream = any(n == b"transfer-encoding" for n, _ in headers)
    if lengths and not is_chunked_upstream:
        lines.append(b"Content-Length: " + lengths[0].strip())
    elif has_body:
        chunked = True
        lines.append(b"Transfer-Encoding: chunked")
    if not keep_alive:
        lines.append(b"Connection: close")
    close_delimited = chunked and not is_chunked_upstream
    return ResponseFraming(b"\r\n".join(lines) + b"\r\n\r\n", chunked, has_body, close_delimited)


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def error_response(error: ProxyError, *, keep_alive: bool) -> bytes:
    """The proxy's own answer: one short line of plain text, never an internal address."""
    body = error.body.encode() + b"\n"
    head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % (
        error.status,
        _phrase(error.status),
        len(body),
    )
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"
