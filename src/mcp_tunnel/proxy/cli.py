"""`mcp-tunnel proxy` / `mcp-proxy`: Go-style single-dash flags, as the official image takes them."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from mcp_tunnel.certs.reload import CertificateWatcher
from mcp_tunnel.config import DEFAULT_CONFIG_PATH, Config, load_config
from mcp_tunnel.errors import CertificateError, ConfigError
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.server import ProxyServer, load_certificates


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcp-proxy", description="MCP tunnel proxy")
    p.add_argument("-config", "--config", default=DEFAULT_CONFIG_PATH, help="config file (YAML)")
    p.add_argument("-tunnel-domain", "--tunnel-domain", default=None, help="override tunnel_domain")
    p.add_argument(
        "-check", "--check", action="store_true", help="validate config and certificate, then exit"
    )
    return p


def load_tls(config: Config, log: Logger) -> CertificateWatcher:
    """The inner-TLS pair; a pair that cannot serve is a configuration error (exit 2)."""
    try:
        return load_certificates(config, log)
    except CertificateError as exc:
        raise ConfigError(str(exc), file=config.path, field="tls") from None


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    config = load_config(args.config, tunnel_domain=args.tunnel_domain)
    log = Logger(config.log_level, config.log_format)
    if args.check:
        log = Logger("error", config.log_format)
    watcher = load_tls(config, log)
    if args.check:
        print(f"{config.path}: configuration ok")
        router = config.router
        for route in config.routes.values():
            print(f"  route {route.key}: {router.public_host(route)} -> {route.upstream}")
        for warning in config.warnings:
            print(f"  warning: {warning}")
        return 0
    return asyncio.run(serve(config, log, watcher))


async def serve(config: Config, log: Logger, watcher: CertificateWatcher) -> int:
    """Run until SIGTERM/SIGINT, then drain within shutdown_timeout; a second signal exits at once."""
    server = ProxyServer(config, log, watcher=watcher)
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
