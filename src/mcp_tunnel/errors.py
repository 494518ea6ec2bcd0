"""The error hierarchy.

Every error carries what its catcher needs: configuration and usage errors carry the exit code
(2) and a one-line message; proxy errors carry the HTTP status and the one-line body to send
(as h11 attaches a status to its protocol errors); tunnel-client errors carry which layer failed.

    MCPTunnelError
    ├── UsageError                 exit 2: bad flags or flag combinations
    ├── ConfigError                exit 2: file, line, field, found, expected
    ├── CertificateError           a certificate or key that cannot be used
    ├── ProxyError                 status + body for the tunnel peer
    │   ├── BadRequest             400
    │   ├── RequestTimeout         408 (the body did not arrive within limits.body_timeout)
    │   ├── VersionNotSupported    505 (a request line other than HTTP/1.0 or HTTP/1.1)
    │   ├── HeadersTooLarge        431
    │   ├── BodyTooLarge           413
    │   ├── NoRoute                502
    │   ├── UpstreamRefused        502 (IP policy); carries the refused addresses
    │   ├── UpstreamUnreachable    502 (DNS failure, connect failure, upstream TLS failure)
    │   ├── UpstreamProtocolError  502
    │   ├── Unavailable            503 (draining, over capacity)
    │   └── UpstreamTimeout        504
    ├── TunnelClientError          the client side; `stage` says which layer failed
    └── SetupError                 (mcp_tunnel.setup.errors) runtime failures of `setup`:
        ├── NetworkError           no HTTP answer; `sent` says whether a retry is safe
        └── APIError               an API's error answer: status, type, message, request id, cause
"""

from __future__ import annotations


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


class UpstreamProtocolError(ProxyError):
    status = 502
    body = "Upstream sent an invalid response"


class Unavailable(ProxyError):
    status = 503
    body = "Service unavailable"


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
