"""`mcp-tunnel connect`: point any MCP client at a private server through the real proxy path."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from mcp_tunnel.cli_common import add_debug_flag
from mcp_tunnel.client.local_endpoint import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_IDLE,
    DEFAULT_RESPONSE_TIMEOUT,
    LocalEndpoint,
)
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
    p.add_argument(
        "--response-timeout",
        type=_seconds,
        default=DEFAULT_RESPONSE_TIMEOUT,
        help="seconds to wait for a response head, as the proxy's upstream_response_timeout "
        f"(default {DEFAULT_RESPONSE_TIMEOUT:g}); 0 = no limit. At the limit: 504, tunnel aborted",
    )
    p.add_argument(
        "--max-body",
        type=int,
        default=DEFAULT_MAX_BODY,
        help=f"largest request body in bytes (default {DEFAULT_MAX_BODY}); larger: 413",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept this Host (repeatable; '*' for any). Default: loopback names and --listen's host",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept this Origin, e.g. https://app.example (repeatable; '*' for any). "
        "Default: loopback origins",
    )
    p.add_argument(
        "--max-idle-tunnels",
        type=int,
        default=DEFAULT_MAX_IDLE,
        help=f"idle tunnels kept warm for the next request (default {DEFAULT_MAX_IDLE})",
    )
    p.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=DEFAULT_IDLE_TIMEOUT,
        help=f"seconds an idle tunnel is kept (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"])
    add_debug_flag(p)
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    host, sep, port_text = args.listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise UsageError(f"--listen {args.listen!r}: expected HOST:PORT")
    try:
        ctx = client_ssl_context(args.ca)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--ca {args.ca}: cannot load CA certificate: {exc}") from None
    if args.max_body < 0 or args.max_idle_tunnels < 0:
        raise UsageError("--max-body and --max-idle-tunnels must be >= 0")
    log = Logger(args.log_level)
    endpoint = LocalEndpoint(
        TunnelClient(args.proxy, ctx),
        args.host,
        log,
        response_timeout=args.response_timeout or None,
        max_body=args.max_body,
        allow_hosts=args.allow_host,
        allow_origins=args.allow_origin,
        max_idle=args.max_idle_tunnels,
        idle_timeout=args.idle_timeout,
    )
    return asyncio.run(_serve(endpoint, host or "127.0.0.1", int(port_text), log))


async def _serve(endpoint: LocalEndpoint, host: str, port: int, log: Logger) -> int:
    client, route_host = endpoint.client, endpoint.route_host
    try:
        await endpoint.start(host, port)
    except OSError as exc:
        raise UsageError(f"--listen {host}:{port}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Ready only once a signal would stop it cleanly: a supervisor may send one at once.
    log.info(
        "connect ready", url=f"http://{host}:{endpoint.port}/", route_host=route_host, proxy=client.proxy_url
    )
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    await endpoint.close()
    return 0
