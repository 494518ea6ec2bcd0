"""The one seam where the proxy connects to the network (SPEC §5).

Every new upstream connection goes through `Connector.connect`: resolve (IPv4 only), keep the
addresses the IP policy allows, and connect to one of those exact addresses, so a name that
re-resolves elsewhere between check and connect (DNS rebinding) cannot slip past. Nothing else
in the proxy opens a socket to an upstream.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from mcp_tunnel.config import UpstreamSettings
from mcp_tunnel.errors import UpstreamRefused, UpstreamTimeout, UpstreamUnreachable
from mcp_tunnel.logs import Logger
from mcp_tunnel.routing import Route

POOL_IDLE_SECONDS = 4.0  # below the 5 s keep-alive of common upstream servers (uvicorn)
POOL_MAX_IDLE_PER_UPSTREAM = 64


class UpstreamDNSError(UpstreamUnreachable):
    """The upstream's name did not resolve (fail closed)."""

    refusal = "dns"


class UpstreamConnectError(UpstreamUnreachable):
    """No vetted address accepted the connection."""

    refusal = "connect"


class UpstreamTLSError(UpstreamUnreachable):
    """The TLS handshake with an https upstream failed (or it has no trust anchors)."""

    refusal = "tls"


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[str]:
        """IPv4 addresses for host, in preference order; raise OSError on failure."""
        ...


class SystemResolver:
    """getaddrinfo, IPv4 only: AAAA answers are ignored (SPEC §5)."""

    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        seen: dict[str, None] = {}
        for info in infos:
            seen.setdefault(str(info[4][0]), None)
        return list(seen)


def upstream_ssl_context(settings: UpstreamSettings) -> ssl.SSLContext | None:
    """Trust only what `upstream.tls` names; None when nothing is configured."""
    tls = settings.tls
    if not tls.ca_file and not tls.include_system_cas:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if tls.include_system_cas:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.ca_file:
        ctx.load_verify_locations(cafile=tls.ca_file)
    return ctx


@dataclass(eq=False, slots=True)
class UpstreamConnection:
    route: Route
    address: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default=0.0)
    reused: bool = False

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Connector:
    """Opens vetted upstream connections and keeps idle keep-alive ones for reuse."""

    def __init__(
        self,
        settings: UpstreamSettings,
        log: Logger,
        *,
        resolver: Resolver | None = None,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.log = log
        self.resolver: Resolver = resolver or SystemResolver()
        self.connect_timeout = connect_timeout
        self.ssl_context = upstream_ssl_context(settings)
        self._clock = clock
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self.closed = False

    async def acquire(self, route: Route) -> UpstreamConnection:
        """A pooled keep-alive connection if one is still good, else a new vetted one."""
        idle = self._idle.get(route.upstream)
        now = self._clock()
        while idle:
            conn = idle.pop()
            if conn.usable() and now - conn.idle_since < POOL_IDLE_SECONDS:
                conn.reused = True
                return conn
            conn.close()
        return await self.connect(route)

    def release(self, conn: UpstreamConnection) -> None:
        """Pool a connection for reuse; after `close` (a reload replaced us) just close it."""
        if self.closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.route.upstream, [])
        if not conn.usable() or len(idle) >= POOL_MAX_IDLE_PER_UPSTREAM:
            conn.close()
            return
        conn.idle_since = self._clock()
        idle.append(conn)

    def close(self) -> None:
        """Retire this connector (a reload made a new one).

        Exchanges in flight still hold it: they may connect through it (with the policy their
        request started under) and release to it, but nothing is pooled any more, so no
        connection outlives the policy that vetted it.
        """
        self.closed = True
        self.close_idle()

    def close_idle(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def connect(self, route: Route) -> UpstreamConnection:
        """Resolve, vet every address against the policy, connect to a vetted address."""
        try:
            addresses = await asyncio.wait_for(
                self.resolver.resolve(route.host, route.port), self.connect_timeout
            )
        except TimeoutError:
            raise UpstreamTimeout(f"resolving {route.host} timed out") from None
        except OSError as exc:
            self.log.warn(
                "upstream resolution failed", route=route.key, upstream=route.upstream, error=str(exc)
            )
            raise UpstreamDNSError(f"cannot resolve {route.host}: {exc}") from None
        allowed, refused = self.settings.policy.partition(addresses)
        if not allowed:
            shown = refused[0] if refused else "none"
            self.log.warn(
                f"IP validation failed: {shown} is not a private address",
                route=route.key,
                upstream=route.upstream,
                resolved=",".join(addresses) or "none",
            )
            raise UpstreamRefused(
                f"{route.host} resolved only to refused addresses", addresses=tuple(refused)
            )
        if refused:
            self.log.debug(
                "some upstream addresses refused by IP policy",
                route=route.key,
                refused=",".join(refused),
            )
        tls = route.scheme == "https"
        if tls and self.ssl_context is None:
            raise UpstreamTLSError("https upstream without upstream.tls trust anchors")
        last_error: Exception | None = None
        for address in allowed:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        address,
                        route.port,
                        ssl=self.ssl_context if tls else None,
                        server_hostname=route.host if tls else None,
                    ),
                    self.connect_timeout,
                )
            except TimeoutError:
                last_error = UpstreamTimeout(f"connect to {route.upstream} timed out")
                continue
            except ssl.SSLError as exc:
                self.log.warn("upstream tls failed", route=route.key, upstream=route.upstream, error=str(exc))
                raise UpstreamTLSError(f"upstream TLS failed: {exc}") from None
            except OSError as exc:
                last_error = exc
                self.log.warn(
                    f"dial tcp {address}:{route.port}: connect: {_errno_text(exc)}",
                    route=route.key,
                    upstream=route.upstream,
                )
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return UpstreamConnection(route, address, reader, writer)
        if isinstance(last_error, UpstreamTimeout):
            raise last_error
        raise UpstreamConnectError(f"cannot connect to {route.upstream}: {last_error}")


def _errno_text(exc: OSError) -> str:
    """Go's wording for the common dial errors, so the official troubleshooting matches."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return (exc.strerror or str(exc)).lower()
