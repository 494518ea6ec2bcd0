"""`mcp-tunnel proxy` / `mcp-proxy`: Go-style single-dash flags, as the official image takes them."""

from __future__ import annotations

import argparse
import asyncio

from mcp_tunnel import redact
from mcp_tunnel.cli_common import add_debug_flag
from mcp_tunnel.config import DEFAULT_CONFIG_PATH, load_config
from mcp_tunnel.logs import Logger, buffered_stderr
from mcp_tunnel.proxy.run import load_tls, loop_factory, serve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcp-proxy", description="MCP tunnel proxy")
    p.add_argument("-config", "--config", default=DEFAULT_CONFIG_PATH, help="config file (YAML)")
    p.add_argument("-tunnel-domain", "--tunnel-domain", default=None, help="override tunnel_domain")
    p.add_argument(
        "-check", "--check", action="store_true", help="validate config and certificate, then exit"
    )
    add_debug_flag(p, go_style=True)
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    config = load_config(args.config, tunnel_domain=args.tunnel_domain)
    log = Logger(config.log_level, config.log_format, stream=buffered_stderr())
    if args.check or config.workers > 1:  # a supervisor checks the pair; its workers log loading it
        quiet = Logger("error", config.log_format)
        watcher = load_tls(config, quiet)
    else:
        watcher = load_tls(config, log)
    if args.check:
        # Values from ${VAR} that are not an address or path stay masked here too.
        print(redact.scrub(f"{config.path}: configuration ok"))
        router = config.router
        for route in config.routes.values():
            print(redact.scrub(f"  route {route.key}: {router.public_host(route)} -> {route.upstream}"))
        for warning in config.warnings:
            print(redact.scrub(f"  warning: {warning}"))
        return 0
    if config.workers > 1:
        from mcp_tunnel.proxy.workers import supervise

        return supervise(config, log, tunnel_domain=args.tunnel_domain)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(serve(config, log, watcher, tunnel_domain=args.tunnel_domain))
    finally:
        log.flush()
