"""The sample MCP server of the demo and the Compose quickstart, built with the official SDK.

One tool, `hello`, served over streamable HTTP. Bound to loopback the SDK refuses any Host but
its own (DNS-rebinding protection); `allowed_hosts` adds the tunnel hostnames it answers to.
The SDK comes with the `demo` extra (`pip install 'mcp-tunnel[demo]'`); it is imported where it
is used, so without it `python -m mcp_tunnel.sample_server` says so in one line.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import TYPE_CHECKING

from mcp_tunnel.errors import UsageError

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer
    from starlette.applications import Starlette


def build_server(name: str = "mcp-tunnel-sample") -> MCPServer:
    from mcp.server.mcpserver import MCPServer

    server: MCPServer = MCPServer(name)

    @server.tool()
    def hello(name: str) -> str:
        """Greet someone: proof that a tool call crossed the tunnel."""
        return f"Hello, {name}!"

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return server


def build_app(*, json_response: bool = False, allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app; with `allowed_hosts` those Host values pass the rebinding check too."""
    from mcp.server.transport_security import TransportSecuritySettings

    security = None
    if allowed_hosts is not None:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=allowed_hosts
        )
    return build_server().streamable_http_app(json_response=json_response, transport_security=security)


# The demo and the sample server need the `demo` extra (pyproject.toml): the official MCP Python
# SDK and what they import from its dependencies. The proxy and every other command do without.
DEMO_EXTRA = "mcp-tunnel[demo]"
DEMO_MODULES = ("mcp", "httpx2", "uvicorn", "starlette")


def require_demo_extra(what: str = "the demo") -> None:
    """One line and exit 2 (UsageError) when the `demo` extra is not installed."""
    missing = [name for name in DEMO_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        absent = ", ".join(missing)
        install = f"pip install '{DEMO_EXTRA}'"
        raise UsageError(f"{what} needs the MCP Python SDK ({absent} not installed): {install}")


def main(argv: list[str] | None = None) -> int:
    """`python -m mcp_tunnel.sample_server --port 9000`: for Compose and manual trials."""
    p = argparse.ArgumentParser(prog="python -m mcp_tunnel.sample_server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--allowed-host", action="append", default=None, help="extra Host value to accept")
    p.add_argument("--json", action="store_true", help="JSON responses instead of SSE")
    args = p.parse_args(argv)
    try:
        require_demo_extra("the sample server")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    import uvicorn

    uvicorn.run(
        build_app(json_response=args.json, allowed_hosts=args.allowed_host), host=args.host, port=args.port
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
