"""The proxy process: holds the live configuration and the listener, and runs the lifecycle."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING

from mcp_tunnel.certs.reload import CertificateWatcher
from mcp_tunnel.config import Config
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.forward import Forwarder
from mcp_tunnel.proxy.tunnel import TunnelProtocol
from mcp_tunnel.proxy.upstream import Connector, Resolver
from mcp_tunnel.tls_session import make_server_context

if TYPE_CHECKING:
    from mcp_tunnel.proxy.http_server import Exchange


class ProxyServer:
    """State shared by every tunnel connection; swapped as a whole on reload."""

    def __init__(
        self,
        config: Config,
        log: Logger,
        *,
        resolver: Resolver | None = None,
        watcher: CertificateWatcher | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.log = log
        self.resolver = resolver
        self.forwarder = Forwarder(self)
        self.tunnels: set[TunnelProtocol] = set()
        self.draining = False
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.watcher = watcher or load_certificates(config, log)
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Use a validated configuration for everything that starts from now on."""
        self.config = config
        self.limits = config.limits
        self.router = config.router
        self.upstream_settings = config.upstream
        old = getattr(self, "connector", None)
        self.connector = Connector(
            config.upstream,
            self.log,
            resolver=self.resolver,
            connect_timeout=config.limits.upstream_connect_timeout,
        )
        if old is not None:
            old.close_idle()

    def tls_context(self) -> ssl.SSLContext:
        """The pair for new handshakes; a reload swaps it, live sessions keep theirs."""
        return self.watcher.context

    async def _poll_certificates(self) -> None:
        while True:
            await asyncio.sleep(self.config.cert_reload_interval)
            self.watcher.poll()

    async def _keepalive(self) -> None:
        """Ping tunnels that have been quiet; close those whose peer stopped answering."""
        while True:
            interval = self.limits.ws_ping_interval
            await asyncio.sleep(interval)
            now = self.loop.time()
            for tunnel in list(self.tunnels):
                tunnel.keepalive(now, interval, self.limits.ws_ping_timeout)

    # --- listener -----------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> None:
        cfg = self.config
        if sock is not None:
            self._server = await self.loop.create_server(lambda: TunnelProtocol(self), sock=sock)
        else:
            self._server = await self.loop.create_server(
                lambda: TunnelProtocol(self),
                host=cfg.listen_host or None,
                port=cfg.listen_port,
                reuse_address=True,
                backlog=1024,
            )
        self.log.info("listening", addr=self.address)
        self._tasks = [
            self.loop.create_task(self._poll_certificates()),
            self.loop.create_task(self._keepalive()),
        ]
        for route in cfg.routes.values():
            self.log.info(
                "route configured",
                route=route.key,
                host=self.router.public_host(route),
                upstream=route.upstream,
            )
        for warning in cfg.warnings:
            self.log.warn(warning)

    @property
    def address(self) -> str:
        if self._server is None or not self._server.sockets:
            return "-"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        """Drain: refuse new tunnels, let requests in flight finish, close idle connections."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + grace
        for tunnel in list(self.tunnels):
            if tunnel.http is None or not tunnel.http.exchanges:
                tunnel.close_gracefully()
        while any(t.http is not None and t.http.exchanges for t in self.tunnels):
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                break
            self._idle_event = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle_event.wait(), remaining)
            except TimeoutError:
                break
        for tunnel in list(self.tunnels):
            if tunnel.http is not None:
                tunnel.http.abort("shutdown")
            tunnel.close_gracefully()
        self.connector.close_idle()
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()

    # --- events from tunnels (metrics hook points) --------------------------------------

    def admission(self) -> str | None:
        """Why a new tunnel must be refused, or None."""
        if self.draining:
            return "proxy is shutting down"
        if len(self.tunnels) > self.limits.max_connections:
            return "too many tunnel connections"
        return None

    def tunnel_opened(self, tunnel: TunnelProtocol) -> None:
        self.tunnels.add(tunnel)

    def tunnel_closed(self, tunnel: TunnelProtocol) -> None:
        self.tunnels.discard(tunnel)
        self._wake_drain()

    def handshake_failed(self, tunnel: TunnelProtocol, reason: str) -> None:
        self.log.warn(f"tls handshake failed: {reason}", peer=tunnel.peer, reason=reason)

    def handshake_succeeded(self, tunnel: TunnelProtocol) -> None:
        if self.log.debug_enabled:
            self.log.debug("tls handshake completed", peer=tunnel.peer, sni=tunnel.sni or "-")

    def request_finished(self, ex: Exchange) -> None:
        pass

    def exchange_idle(self, tunnel: TunnelProtocol) -> None:
        if self.draining:
            tunnel.close_gracefully()
        self._wake_drain()

    def _wake_drain(self) -> None:
        event = getattr(self, "_idle_event", None)
        if event is not None:
            event.set()


def load_certificates(config: Config, log: Logger) -> CertificateWatcher:
    """Load the inner-TLS pair once; raises CertificateError with a one-line reason."""

    def on_event(event: str, /, **fields: object) -> None:
        if event == "certificate reload failed":
            log.warn(event, **fields)
        else:
            log.info(event, **fields)

    watcher = CertificateWatcher(config.cert_file, config.key_file, build=make_server_context, log=on_event)
    watcher.load()
    return watcher
