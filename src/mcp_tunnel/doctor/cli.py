"""`mcp-tunnel doctor`: the command line around `runner.diagnose`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import NoReturn

from mcp_tunnel.cli_common import add_debug_flag
from mcp_tunnel.doctor.context import DEFAULT_PROXY_UID, Options
from mcp_tunnel.doctor.outbound import split_host_port
from mcp_tunnel.doctor.runner import diagnose
from mcp_tunnel.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mcp-tunnel doctor",
        description="Walk the official troubleshooting in order (outbound, config, inner TLS, routing, "
        "OAuth) and print one line per check: ok, warn, fail or skip, the reason and the fix.",
    )
    p.add_argument("--config", required=True, help="the proxy's config file (YAML)")
    p.add_argument("--compose", help="the docker-compose.yaml running cloudflared and the proxy")
    p.add_argument("--ca", help="the CA registered on the tunnel (default: ca.crt beside tls.cert_file)")
    p.add_argument("--proxy", help="the running proxy's WebSocket URL, e.g. ws://127.0.0.1:8080/")
    p.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="[ROUTE=]PATH",
        help=(
            "MCP endpoint path for an initialize through the tunnel (e.g. /mcp); ROUTE=PATH for one "
            "route; repeatable"
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    add_debug_flag(p)
    p.add_argument("--token-file", help="file holding the tunnel token (default: $TUNNEL_TOKEN)")
    p.add_argument("--proxy-uid", type=int, default=DEFAULT_PROXY_UID, help="the proxy's uid (default 65532)")
    p.add_argument("--edge", action="store_true", help="also test DNS and TCP 7844 to the tunnel edge")
    p.add_argument("--edge-host", metavar="HOST:PORT", help="test this address instead of the real edge")
    p.add_argument("--tunnel-domain", help="override tunnel_domain, as the proxy's -tunnel-domain does")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds for each network operation (default 5)"
    )
    return p


def parse_paths(values: list[str]) -> dict[str, str]:
    paths: dict[str, str] = {}
    for value in values:
        key, sep, path = value.partition("=")
        if not sep:
            key, path = "", value
        if not path.startswith("/"):
            raise UsageError(f"--path {value!r}: the path must start with /")
        paths[key.lower()] = path
    return paths


def options_from(argv: list[str]) -> tuple[Options, bool]:
    args = _parser().parse_args(argv)
    if args.proxy is not None and not args.proxy.startswith(("ws://", "wss://")):
        raise UsageError(f"--proxy {args.proxy!r}: expected ws://HOST:PORT/")
    if args.edge_host is not None:
        try:
            split_host_port(args.edge_host)
        except ValueError as exc:
            raise UsageError(f"--edge-host: {exc}") from None
    if args.proxy_uid < 0:
        raise UsageError("--proxy-uid must be >= 0")
    options = Options(
        config=args.config,
        compose=args.compose,
        ca=args.ca,
        proxy=args.proxy,
        paths=parse_paths(args.path),
        token_file=args.token_file,
        proxy_uid=args.proxy_uid,
        edge=args.edge,
        edge_host=args.edge_host,
        tunnel_domain=args.tunnel_domain or None,
        timeout=args.timeout,
    )
    return options, bool(args.json)


def main(argv: list[str]) -> int:
    """Exit 0 when nothing failed (warnings allowed), 1 on any fail, 2 on a usage error."""
    options, as_json = options_from(argv)
    report = asyncio.run(diagnose(options))
    print(report.to_json() if as_json else report.to_text())
    sys.stdout.flush()
    return 0 if report.ok else 1
