"""The error hierarchy: every error mcp-tunnel raises on purpose, in one place.

Every error carries what its catcher needs: configuration and usage errors carry the exit code
(2) and a one-line message; proxy errors carry the HTTP status and the one-line body to send
(as h11 attaches a status to its protocol errors); the tunnel's protocol errors carry what to
answer the peer with (a refusal, a close code, a TLS alert's text); tunnel-client errors carry
which layer failed; setup errors what an operator needs to act.

    MCPTunnelError
    ├── UsageError                 exit 2: bad flags or flag combinations
    ├── ConfigError                exit 2: file, line, field, found, expected
    ├── CertificateError           a certificate or key that cannot be used
    ├── ProxyError                 status + body for the tunnel peer (500: a bug of ours)
    │   ├── BadRequest             400
    │   ├── Forbidden              403 (`connect`: a local request for a host it does not serve)
    │   ├── RequestTimeout         408 (the body did not arrive within limits.body_timeout)
    │   ├── BodyTooLarge           413
    │   ├── HeadersTooLarge        431
    │   ├── VersionNotSupported    505 (a request line other than HTTP/1.0 or HTTP/1.1)
    │   ├── NoRoute                502
    │   ├── UpstreamRefused        502 (IP policy); carries the refused addresses
    │   ├── UpstreamUnreachable    502; `refusal` is its metrics label
    │   │   ├── UpstreamDNSError       the name did not resolve (in time)
    │   │   ├── UpstreamConnectError   no vetted address took the connection
    │   │   └── UpstreamTLSError       the TLS handshake with an https upstream failed
    │   ├── UpstreamProtocolError  502
    │   └── UpstreamTimeout        504
    ├── BodyAborted                the tunnel went while a request body arrived: nobody to answer
    ├── UpgradeRefused             the WebSocket upgrade refused (400, 426): `response` is the
    │                              whole answer
    ├── FrameError                 the peer broke the WebSocket framing rules: `code` to close with
    ├── TLSHandshakeError          the inner TLS handshake failed: `reason` is the alert's words
    ├── TunnelClientError          the client side; `stage` says which layer failed
    └── SetupError                 runtime failures of `setup` (exit 1)
        ├── NetworkError           no HTTP answer; `sent` says whether a retry is safe
        ├── APIError               an API's error answer: status, type, message, request id, cause
        └── AmbiguousResult        a non-idempotent call whose outcome is unknown

There is no 503 `ProxyError`: the proxy answers 503 only to an upgrade it does not admit
(draining, over `max_connections`), with the upgrade's refusal writer
(`ws_handshake.refusal_response`), before any inner request exists.

Not in the tree, on purpose: `envref.EnvRefError` is a ValueError and `proxy.dns.LookupsBusy` an
OSError, caught as such by code that handles those built-in families; and the private control
flow of one module (`_Truncated`, `_StaleConnection`, `_Unsolicited` in proxy/forward.py,
`_StopParsing` in proxy/http_server.py, `_HeadComplete` in ws_handshake.py, `_TooLarge` in
client/local_endpoint.py, `_Unstable` in certs/reload.py) never leaves it. Modules that raised
one of these before it moved here re-export it (`ws_frames.FrameError`,
`ws_handshake.UpgradeRefused`, `tls_session.TLSHandshakeError`, `proxy.upstream.Upstream*Error`,
`setup.errors.*`).
"""

from __future__ import annotations

from typing import ClassVar


class MCPTunnelError(Exception):
    """Base of every error mcp-tunnel raises on purpose."""

    exit_code = 1


class UsageError(MCPTunnelError):
    """A command line that cannot be acted on."""

    exit_code = 2


class ConfigError(MCPTunnelError):
    """A configuration mistake, rendered as one line that names where and what.

    `detail` holds the official error text where one exists (for example
    ``cannot unmarshal !!seq into map[string]string``) so the official troubleshooting still
    matches the message.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        found: str | None = None,
        expected: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        self.found = found
        self.expected = expected
        self.detail = detail
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        parts = [where + (f"{self.field}: " if self.field else "") + self.message]
        if self.found is not None:
            parts.append(f"found {self.found}")
        if self.expected is not None:
            parts.append(f"expected {self.expected}")
        line = "; ".join(parts)
        if self.detail:
            line += f" — {self.detail}"
        return line.replace("\n", " ")


class CertificateError(MCPTunnelError):
    """A certificate or key that is missing, unreadable, malformed or mismatched."""


class ProxyError(MCPTunnelError):
    """A request the proxy answers itself; `status` and `body` are what the peer gets."""

    status = 500
    body = "Internal proxy error"

    def __init__(self, reason: str = "", *, body: str | None = None) -> None:
        self.reason = reason or self.body
        if body is not None:
            self.body = body
        super().__init__(self.reason)


class BadRequest(ProxyError):
    status = 400
    body = "Bad request"


class Forbidden(ProxyError):
    status = 403
    body = "Forbidden"


class RequestTimeout(ProxyError):
    status = 408
    body = "Request body timeout"


class VersionNotSupported(ProxyError):
    status = 505
    body = "HTTP version not supported"


class HeadersTooLarge(ProxyError):
    status = 431
    body = "Request header fields too large"


class BodyTooLarge(ProxyError):
    status = 413
    body = "Request body too large"


class NoRoute(ProxyError):
    status = 502
    body = "No route configured for host"


class UpstreamRefused(ProxyError):
    """The upstream resolved only to addresses outside `upstream.allowed_ips`."""

    status = 502
    body = "Upstream address not allowed"

    def __init__(self, reason: str = "", *, addresses: tuple[str, ...] = ()) -> None:
        self.addresses = addresses
        super().__init__(reason)


class UpstreamUnreachable(ProxyError):
    status = 502
    body = "Upstream unreachable"


class UpstreamDNSError(UpstreamUnreachable):
    """The upstream's name did not resolve, or not within `dns_timeout` (fail closed)."""

    refusal: ClassVar[str] = "dns"


class UpstreamConnectError(UpstreamUnreachable):
    """No vetted address accepted the connection."""

    refusal: ClassVar[str] = "connect"


class UpstreamTLSError(UpstreamUnreachable):
    """The TLS handshake with an https upstream failed (or it has no trust anchors)."""

    refusal: ClassVar[str] = "tls"


class UpstreamProtocolError(ProxyError):
    status = 502
    body = "Upstream sent an invalid response"


class UpstreamTimeout(ProxyError):
    status = 504
    body = "Upstream did not answer in time"


class TunnelClientError(MCPTunnelError):
    """A failure on Anthropic's side of the wire, as played by the tunnel client.

    `stage` is one of ``websocket``, ``tls``, ``http``, ``timeout``: each has its own
    one-line message in `mcp-tunnel call`.
    """

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        super().__init__(message)


class BodyAborted(MCPTunnelError):
    """The request body will never be whole: the tunnel went away while it was arriving.

    Nobody is left to answer; the exchange is logged as 499.
    """


class UpgradeRefused(MCPTunnelError):
    """Not an acceptable WebSocket upgrade; `response` is the complete answer to send.

    `not_websocket` tells a request that is not a WebSocket upgrade at all (plain HTTP,
    garbage) from a WebSocket upgrade that breaks the handshake rules; `quiet` marks the
    requests websockets could not parse at all, which are answered without a log line.
    `ws_handshake.refused` makes one, with its response.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        response: bytes,
        not_websocket: bool = False,
        quiet: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.response = response
        self.not_websocket = not_websocket
        self.quiet = quiet


class FrameError(MCPTunnelError):
    """The peer broke the framing rules; `code` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class TLSHandshakeError(MCPTunnelError):
    """The inner handshake failed; `reason` is the words operators grep for."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SetupError(MCPTunnelError):
    """A runtime failure of `setup init` / `setup renew-cert` (exit 1)."""


class NetworkError(SetupError):
    """The request got no HTTP answer.

    `sent` is False when the connection failed before the request could be sent: then even a
    non-idempotent call may be retried. When True the server may have acted on it.
    """

    def __init__(self, message: str, *, sent: bool) -> None:
        self.sent = sent
        super().__init__(message)


class APIError(SetupError):
    """An HTTP error answer from Anthropic's API or the Kubernetes API, rendered as one line.

    Carries everything an operator needs to act: which call, the status, the API's error type and
    message, the request id to quote to support, and the documented likely cause.
    """

    def __init__(
        self,
        *,
        method: str,
        path: str,
        status: int,
        error_type: str = "",
        message: str = "",
        request_id: str = "",
        cause: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.error_type = error_type
        self.message = message
        self.request_id = request_id
        self.cause = cause
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.method} {self.path}: HTTP {self.status}"
        if self.error_type:
            text += f" {self.error_type}"
        if self.message:
            text += f": {self.message}"
        if self.request_id:
            text += f" (request-id {self.request_id})"
        if self.cause:
            text += f"; likely cause: {self.cause}"
        return " ".join(text.split())


class AmbiguousResult(SetupError):
    """A non-idempotent call whose outcome is unknown (answer lost, or a 5xx after sending)."""

    def __init__(self, message: str, *, cause: Exception) -> None:
        self.cause = cause
        super().__init__(message)
