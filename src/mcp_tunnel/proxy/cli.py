"""`mcp-tunnel proxy` / `mcp-proxy`: Go-style single-dash flags, as the official image takes them."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

from mcp_tunnel.config import DEFAULT_CONFIG_PATH, Config, load_config
from mcp_tunnel.errors import ConfigError
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.server import ProxyServer
from mcp_tunnel.tls_session import make_server_context


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcp-proxy", description="MCP tunnel proxy")
    p.add_argument("-config", "--config", default=DEFAULT_CONFIG_PATH, help="config file (YAML)")
    p.add_argument("-tunnel-domain", "--tunnel-domain", default=None, help="override tunnel_domain")
    p.add_argument(
        "-check", "--check", action="store_true", help="validate config and certificate, then exit"
    )
    return p


def load_tls(config: Config) -> ssl.SSLContext:
    """The inner-TLS context, or a one-line ConfigError naming the pair."""
    try:
        return make_server_context(config.cert_file, config.key_file)
    except ssl.SSLError as exc:
        raise ConfigError(
            "cannot load the certificate pair",
            file=config.path,
            field="tls",
            found=f"{config.cert_file} + {config.key_file}: {exc.reason or exc}",
            expected="a PEM certificate and the PEM private key that matches it",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"open {exc.filename}: {(exc.strerror or str(exc)).lower()}", file=config.path, field="tls"
        ) from None


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    config = load_config(args.config, tunnel_domain=args.tunnel_domain)
    ctx = load_tls(config)
    if args.check:
        print(f"{config.path}: configuration ok")
        router = config.router
        for route in config.routes.values():
            print(f"  route {route.key}: {router.public_host(route)} -> {route.upstream}")
        for warning in config.warnings:
            print(f"  warning: {warning}")
        return 0
    log = Logger(config.log_level, config.log_format)
    return asyncio.run(serve(config, log, ctx))


async def serve(config: Config, log: Logger, ctx: ssl.SSLContext) -> int:
    """Run until SIGTERM/SIGINT, then drain within shutdown_timeout; a second signal exits at once."""
    server = ProxyServer(config, log, ssl_context=ctx)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warn("second signal, exiting now", signal=signame)
            sys.stderr.flush()
            raise SystemExit(1)
        log.info("shutting down", signal=signame, timeout=f"{config.shutdown_timeout:g}s")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    await server.start()  # after the handlers: a signal right after "listening" must drain
    await stop.wait()
    await server.stop(config.shutdown_timeout)
    log.info("stopped")
    return 0
