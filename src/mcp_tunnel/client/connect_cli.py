"""`mcp-tunnel connect`: point any MCP client at a private server through the real proxy path."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from mcp_tunnel.cli import add_debug_flag
from mcp_tunnel.client.local_endpoint import LocalEndpoint
from mcp_tunnel.client.tunnel_client import TunnelClient, client_ssl_context
from mcp_tunnel.errors import UsageError
from mcp_tunnel.logs import Logger


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcp-tunnel connect",
        description="Serve a local plain-HTTP endpoint that forwards every request through the tunnel "
        "proxy (WebSocket + inner TLS) with Host set to the route's host.",
    )
    p.add_argument("--proxy", required=True, help="the proxy's WebSocket URL, e.g. ws://127.0.0.1:8080/")
    p.add_argument("--ca", required=True, help="the tunnel's CA certificate (PEM)")
    p.add_argument("--host", required=True, help="the route's public host, e.g. echo.<tunnel-domain>")
    p.add_argument(
        "--listen", default="127.0.0.1:8000", help="local HOST:PORT to serve (default 127.0.0.1:8000)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    add_debug_flag(p)
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    host, sep, port_text = args.listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise UsageError(f"--listen {args.listen!r}: expected HOST:PORT")
    try:
        ctx = client_ssl_context(args.ca)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--ca {args.ca}: cannot load CA certificate: {exc}") from None
    log = Logger(args.log_level)
    return asyncio.run(
        _serve(TunnelClient(args.proxy, ctx), args.host, host or "127.0.0.1", int(port_text), log)
    )


async def _serve(client: TunnelClient, route_host: str, host: str, port: int, log: Logger) -> int:
    endpoint = LocalEndpoint(client, route_host, log)
    try:
        await endpoint.start(host, port)
    except OSError as exc:
        raise UsageError(f"--listen {host}:{port}: {exc.strerror or exc}") from None
    log.info(
        "connect ready", url=f"http://{host}:{endpoint.port}/", route_host=route_host, proxy=client.proxy_url
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    await endpoint.close()
    return 0
