"""The proxy process: holds the live configuration and the listener, and runs the lifecycle."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

from mcp_tunnel.certs.reload import CertificateWatcher
from mcp_tunnel.config import Config
from mcp_tunnel.logs import Logger
from mcp_tunnel.mcp_policy import McpPolicy
from mcp_tunnel.metrics import Metrics, handshake_reason_label
from mcp_tunnel.oauth_rewrite import OAuthRewriter
from mcp_tunnel.proxy.forward import ForwardConfig, ForwardContext, Forwarder
from mcp_tunnel.proxy.http_server import HTTPContext
from mcp_tunnel.proxy.listeners import bound_address, bound_port
from mcp_tunnel.proxy.policy import check_interval, readiness_problem
from mcp_tunnel.proxy.tunnel import TunnelContext, TunnelProtocol, remember_sni
from mcp_tunnel.proxy.upstream import Connector, Dial, Resolver, SystemResolver, loop_dial
from mcp_tunnel.tls_session import make_server_context

if TYPE_CHECKING:
    from mcp_tunnel.proxy.admin import AdminServer

# After the drain deadline, how long closing tunnels get to flush their close_notify and
# WebSocket close before their sockets are aborted.
CLOSE_FLUSH_SECONDS = 1.0


class ProxyServer:
    """State shared by every tunnel connection; a reload swaps its configuration in one
    synchronous `apply`.

    The layers below get narrow contexts built here, not this object: each tunnel a
    `TunnelContext`, the inner HTTP layer an `HTTPContext`, the forwarder a `ForwardContext`,
    the admin listener two callbacks. `apply` and `draining` keep them current.
    """

    def __init__(
        self,
        config: Config,
        log: Logger,
        *,
        resolver: Resolver | None = None,
        dial: Dial = loop_dial,
        watcher: CertificateWatcher | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.log = log
        # One resolver for the process, kept across reloads: a name that never answers holds
        # one lookup thread however many connectors (reloads) ask for it.
        self.resolver: Resolver = resolver or SystemResolver()
        self.dial: Dial = dial  # how every connector dials a vetted address (tests record it)
        self.metrics = metrics or Metrics()
        self.tunnels: set[TunnelProtocol] = set()
        self.admitted = 0  # tunnels past the WebSocket upgrade: what max_connections counts
        self._draining = False
        self.admin: AdminServer | None = None
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._idle_event: asyncio.Event | None = None
        self.watcher = watcher or load_certificates(config, log)
        self.apply(config)
        # What every tunnel sees of the process (no tunnel holds the server itself).
        self.tunnel_context = TunnelContext(
            loop=self.loop,
            log=log,
            limits=config.limits,
            tls_context=self.tls_context,
            admission=self.admission,
            opened=self.tunnel_opened,
            admitted=self.tunnel_admitted,
            closed=self.tunnel_closed,
            handshake_failed=self.handshake_failed,
            handshake_refused=self.handshake_refused,
            handshake_succeeded=self.handshake_succeeded,
            http=self.http_context,
        )
        self.metrics.config_loaded(True, time.time(), reload=False)

    def apply(self, config: Config, *, watcher: CertificateWatcher | None = None) -> None:
        """Use a validated configuration for everything that starts from now on.

        One synchronous swap, so a request sees either the old or the new config, never a mix.
        Connections keep the limits they started with; exchanges in flight keep the connector
        (and so the IP policy) they started with: the old connector is retired, not dropped.
        """
        old = getattr(self, "connector", None)
        self.config = config
        self.limits = config.limits
        self.router = config.router
        self.upstream_settings = config.upstream
        self.mcp = None if config.mcp is None else McpPolicy(config.mcp)  # None: no JSON work at all
        self.oauth = (
            None if config.oauth is None else OAuthRewriter(config.oauth, config.tunnel_domain, self.log.warn)
        )
        self.connector = Connector(
            config.upstream,
            self.log,
            resolver=self.resolver,
            dial=self.dial,
            connect_timeout=config.limits.upstream_connect_timeout,
            dns_timeout=config.limits.dns_timeout,
            on_unsolicited=self._upstream_unsolicited,
        )
        forwarding = ForwardConfig(
            limits=config.limits,
            router=self.router,
            connector=self.connector,
            upstream_settings=config.upstream,
            mcp=self.mcp,
            oauth=self.oauth,
        )
        if old is None:
            self.forward_context = ForwardContext(self.loop, self.log, self.metrics, forwarding)
            self.forwarder = Forwarder(self.forward_context)
            self.http_context = HTTPContext(self.log, config.limits, self.forwarder, self._wake_drain)
        else:
            self.forward_context.configure(forwarding)
            self.http_context.limits = config.limits
            self.tunnel_context.limits = config.limits
        if watcher is not None:
            self.watcher = watcher
        self.metrics.certificate_loaded(self.watcher.not_after)
        self.metrics.routes_configured(config.routes)
        if old is not None:
            old.close()

    @property
    def draining(self) -> bool:
        """Shutting down: readiness is off, no new tunnel is admitted, nothing is kept alive."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        self.forward_context.draining = value
        self.http_context.draining = value

    def _upstream_unsolicited(self, route: str, upstream: str) -> None:
        self.forward_context.upstream_unsolicited(route, upstream)

    def _new_tunnel(self) -> asyncio.BaseProtocol:
        """The listener's protocol factory: a `TunnelProtocol`, as asyncio's types read it (it is
        a protocol by its methods, not by base class: see proxy/tunnel.py)."""
        return cast(asyncio.BaseProtocol, TunnelProtocol(self.tunnel_context))

    async def _readiness_page(self) -> str | None:
        return self.readiness()

    async def _scrape(self) -> bytes:
        """/metrics: the counts still waiting for the log's flush (`Logger.later`) go in first."""
        self.log.flush()
        return self.metrics.render()

    def tls_context(self) -> ssl.SSLContext:
        """The pair for new handshakes; a reload swaps it, live sessions keep theirs."""
        return self.watcher.context

    def readiness(self) -> str | None:
        """Why /readyz must answer 503, or None."""
        return readiness_problem(
            listening=self._server is not None and self._server.is_serving(),
            draining=self.draining,
            cert_not_after=self.watcher.not_after,
            now=datetime.now(UTC),
        )

    async def _poll_certificates(self) -> None:
        while True:
            await asyncio.sleep(self.config.cert_reload_interval)
            if self.watcher.poll():
                self.metrics.certificate_loaded(self.watcher.not_after)

    def sweep_interval(self) -> float:
        """How often connection deadlines are checked: for the shortest connection timeout."""
        lim = self.limits
        shortest = min(
            lim.handshake_timeout,
            lim.header_timeout,
            lim.idle_timeout,
            lim.ws_ping_interval,
            lim.ws_ping_timeout,
            lim.body_timeout,
            lim.write_timeout,
        )
        return check_interval(shortest)

    async def _sweep(self) -> None:
        """Fire expired connection deadlines; ping quiet tunnels, drop those that stopped answering.

        One periodic pass instead of a timer per connection: per-request deadline changes are
        then a float store, and a timeout fires at most one sweep interval late.
        """
        while True:
            await asyncio.sleep(self.sweep_interval())
            now = self.loop.time()
            limits = self.limits
            write_timeout = limits.write_timeout
            # Pings too, every pass: a tunnel is pinged once it has been quiet for the interval,
            # and dropped once its ping has gone unanswered for the timeout, each at most one
            # pass late (a ping timeout shorter than the interval included).
            ping_interval, ping_timeout = limits.ws_ping_interval, limits.ws_ping_timeout
            for tunnel in list(self.tunnels):
                deadline = tunnel.deadline
                if deadline and deadline <= now:
                    tunnel.fire_deadline()
                if tunnel.stalled_since:
                    tunnel.check_stalled(now, write_timeout)
                tunnel.keepalive(now, ping_interval, ping_timeout)

    # --- listener -----------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None, *, admin: bool = True) -> None:
        """Listen (and serve admin_addr when set and `admin`: a worker of several leaves it to its
        supervisor). Raises OSError when a socket cannot be bound."""
        cfg = self.config
        if admin and cfg.admin_port is not None:
            from mcp_tunnel.proxy.admin import AdminServer

            self.admin = AdminServer(readiness=self._readiness_page, metrics=self._scrape)
            await self.admin.start(cfg.admin_host or None, cfg.admin_port)
            self.log.info("admin listening", addr=self.admin.address)
        if sock is not None:
            # backlog: serving a socket calls listen() again, which would shrink a worker's
            # shared one (bound with 1024 by the supervisor) to the default of 100
            self._server = await self.loop.create_server(self._new_tunnel, sock=sock, backlog=1024)
        else:
            self._server = await self.loop.create_server(
                self._new_tunnel,
                host=cfg.listen_host or None,
                port=cfg.listen_port,
                reuse_address=True,
                backlog=1024,
            )
        self.log.info("listening", addr=self.address)
        self._tasks = [
            self.loop.create_task(self._poll_certificates()),
            self.loop.create_task(self._sweep()),
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
        return bound_address(self._server)

    @property
    def port(self) -> int:
        return bound_port(self._server)

    def _busy(self) -> list[TunnelProtocol]:
        return [t for t in self.tunnels if t.http is not None and t.http.exchanges]

    async def stop(self, grace: float) -> None:
        """Drain (SPEC §6): readiness off, no new tunnels, requests in flight finish, idle closed.

        Readiness turns off first (`draining`), then the listener closes. Idle tunnels are
        closed gracefully at once; a busy one is closed as soon as its last exchange ends (see
        `HTTPContext.exchange_idle`), and its responses meanwhile say `Connection: close`. At the deadline,
        what is still running (an SSE stream) is cut.
        """
        self.draining = True
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + grace
        for tunnel in list(self.tunnels):
            if tunnel.http is None or not tunnel.http.exchanges:
                tunnel.close_gracefully()
        busy = self._busy()
        if busy:
            self.log.info("waiting for requests in flight", tunnels=len(busy), timeout=f"{grace:g}s")
        while busy and await self._wait_change(deadline):
            busy = self._busy()
        if busy:
            self.log.warn(
                "shutdown timeout reached, cutting requests in flight",
                requests=sum(len(t.http.exchanges) for t in busy if t.http is not None),
            )
        for tunnel in list(self.tunnels):
            if tunnel.http is not None:
                tunnel.http.abort("shutdown")
            tunnel.close_gracefully()
        flush_until = self.loop.time() + CLOSE_FLUSH_SECONDS
        while self.tunnels and await self._wait_change(flush_until):
            pass
        for tunnel in list(self.tunnels):
            tunnel.abort()
        self.connector.close()
        for task in self._tasks:
            task.cancel()
        if self.admin is not None:
            await self.admin.stop()
        self.log.flush()  # the lines and metrics still waiting for the flush (`Logger.later`)

    async def _wait_change(self, deadline: float) -> bool:
        """Wait for a tunnel to close or go idle; False once the loop time `deadline` has passed."""
        if deadline <= self.loop.time():
            return False
        self._idle_event = event = asyncio.Event()
        try:
            async with asyncio.timeout_at(deadline):
                await event.wait()
        except TimeoutError:
            return False
        return True

    # --- events from tunnels (metrics hook points) --------------------------------------

    def admission(self) -> str | None:
        """Why a new tunnel must be refused (the 503 body), or None.

        Only admitted tunnels count: one still in its upgrade is not yet a tunnel, and is
        bounded by the handshake timeout instead.
        """
        if self.draining:
            self.metrics.tunnel_refused("draining")
            return "proxy is shutting down"
        if self.admitted >= self.limits.max_connections:
            self.metrics.tunnel_refused("capacity")
            return "too many tunnel connections"
        return None

    def tunnel_opened(self, tunnel: TunnelProtocol) -> None:
        self.tunnels.add(tunnel)

    def tunnel_admitted(self, tunnel: TunnelProtocol) -> None:
        tunnel.admitted = True
        self.admitted += 1
        self.metrics.tunnel_opened()

    def tunnel_closed(self, tunnel: TunnelProtocol) -> None:
        self.tunnels.discard(tunnel)
        if tunnel.admitted:
            tunnel.admitted = False
            self.admitted -= 1
            self.metrics.tunnel_closed()
        self._wake_drain()

    def handshake_failed(self, tunnel: TunnelProtocol, reason: str) -> None:
        """The inner TLS handshake failed; `reason` is the TLS alert text."""
        self.metrics.handshake_failed(handshake_reason_label(reason))
        self.log.warn(f"tls handshake failed: {reason}", peer=tunnel.peer, reason=reason)

    def handshake_refused(self, tunnel: TunnelProtocol, label: str) -> None:
        """A tunnel that never got to TLS, or never finished it (timeout, not a WebSocket)."""
        self.metrics.handshake_failed(label)

    def handshake_succeeded(self, tunnel: TunnelProtocol) -> None:
        if self.log.debug_enabled:
            self.log.debug("tls handshake completed", peer=tunnel.peer, sni=tunnel.sni or "-")

    def _wake_drain(self) -> None:
        event = self._idle_event
        if event is not None:
            event.set()


def load_certificates(config: Config, log: Logger) -> CertificateWatcher:
    """Load the inner-TLS pair once; raises CertificateError with a one-line reason."""
    return load_certificates_from(config.cert_file, config.key_file, log)


def load_certificates_from(cert_file: str, key_file: str, log: Logger) -> CertificateWatcher:
    """A watcher for one pair, loaded; raises CertificateError with a one-line reason."""

    def on_event(event: str, /, **fields: object) -> None:
        if event == "certificate reload failed":
            log.warn(event, **fields)
        else:
            log.info(event, **fields)

    watcher = CertificateWatcher(cert_file, key_file, build=server_context_with_sni, log=on_event)
    watcher.load()
    return watcher


def server_context_with_sni(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The inner-TLS server context, noting the client's SNI on each session.

    A server-side `SSLObject` does not expose the name the client sent (its `server_hostname`
    is what *we* passed, None); the SNI callback is the only place it is seen. It is kept for
    the SNI/Host mismatch metric and the debug log.
    """
    ctx = make_server_context(cert_file, key_file)
    ctx.sni_callback = remember_sni
    return ctx
