"""`mcp-tunnel proxy` / `mcp-proxy`: Go-style single-dash flags, as the official image takes them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from mcp_tunnel import redact
from mcp_tunnel.certs.reload import CertificateWatcher
from mcp_tunnel.cli import add_debug_flag
from mcp_tunnel.config import DEFAULT_CONFIG_PATH, Config, load_config
from mcp_tunnel.errors import CertificateError, ConfigError
from mcp_tunnel.logs import Logger, buffered_stderr
from mcp_tunnel.proxy.reload import ConfigReloader, ReloadTarget
from mcp_tunnel.proxy.server import ProxyServer, load_certificates, load_certificates_from


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcp-proxy", description="MCP tunnel proxy")
    p.add_argument("-config", "--config", default=DEFAULT_CONFIG_PATH, help="config file (YAML)")
    p.add_argument("-tunnel-domain", "--tunnel-domain", default=None, help="override tunnel_domain")
    p.add_argument(
        "-check", "--check", action="store_true", help="validate config and certificate, then exit"
    )
    add_debug_flag(p, go_style=True)
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
    log = Logger(config.log_level, config.log_format, stream=buffered_stderr())
    if args.check:
        log = Logger("error", config.log_format)
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
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(serve(config, log, watcher, tunnel_domain=args.tunnel_domain))
    finally:
        log.flush()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (it cuts the event loop's own cost per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def serve(
    config: Config, log: Logger, watcher: CertificateWatcher, *, tunnel_domain: str | None = None
) -> int:
    """Run until SIGTERM/SIGINT, then drain within shutdown_timeout; a second signal exits at once.

    SIGHUP reloads the config (so does a change of the file, polled by `ConfigReloader`).
    """
    server = ProxyServer(config, log, watcher=watcher)
    target = ReloadTarget(
        log=log,
        metrics=server.metrics,
        current=lambda: server.config,
        apply=lambda new, pair: server.apply(new, watcher=pair),
        load_pair=lambda cert, key: load_certificates_from(cert, key, log),
    )
    reloader = ConfigReloader(target, config.path, tunnel_domain=tunnel_domain)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warn("second signal, exiting now", signal=signame)
            log.flush()
            exit_now(1)
        server.draining = True  # readiness off at once, before anything else happens
        log.info("shutting down", signal=signame, timeout=f"{server.config.shutdown_timeout:g}s")
        stop.set()

    def on_hangup() -> None:
        if server.draining:
            log.info("SIGHUP ignored: shutting down")
            return
        reloader.reload("SIGHUP")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await server.start()  # after the handlers: a signal right after "listening" must drain
    except OSError as exc:
        log.error("cannot listen", error=str(exc))
        await server.stop(0)
        return 1
    reloader.start()
    await stop.wait()
    reloader.stop()
    await server.stop(server.config.shutdown_timeout)
    log.info("stopped")
    return 0


def exit_now(code: int) -> NoReturn:
    """Leave the process at once: no task cancellation, no waiting for executor threads.

    `SystemExit` raised from a signal handler unwinds through `asyncio.run`, which then cancels
    every task and joins the default executor; a resolver thread stuck in `getaddrinfo` would
    hold the exit for as long as it takes. An operator's second Ctrl-C means now.
    """
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        sys.stdout.flush()
    os._exit(code)
