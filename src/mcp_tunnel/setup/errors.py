"""Errors of the setup component; all exit 1 (runtime) through the CLI dispatcher."""

from __future__ import annotations

from mcp_tunnel.errors import MCPTunnelError


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
