"""The one seam where the proxy connects to the network (SPEC §5).

Every new upstream connection goes through `Connector.connect`: resolve (IPv4 only), keep the
addresses the IP policy allows (`vetted_addresses`, which the doctor uses too), and dial one of
those exact addresses, so a name that re-resolves elsewhere between check and connect (DNS
rebinding) cannot slip past. Nothing else in the proxy opens a socket to an upstream. The
resolver and the dial are injectable, so tests can script DNS and see which address is dialled.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, cast

from mypy_extensions import trait

from mcp_tunnel.config import UpstreamSettings
from mcp_tunnel.errors import UpstreamConnectError as UpstreamConnectError
from mcp_tunnel.errors import UpstreamDNSError as UpstreamDNSError
from mcp_tunnel.errors import UpstreamRefused, UpstreamTimeout
from mcp_tunnel.errors import UpstreamTLSError as UpstreamTLSError
from mcp_tunnel.ippolicy import IPPolicy
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.dns import ThreadedResolver
from mcp_tunnel.routing import Route

POOL_IDLE_SECONDS = 4.0  # below the 5 s keep-alive of common upstream servers (uvicorn)
POOL_MAX_IDLE_PER_UPSTREAM = 64


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[str]:
        """IPv4 addresses for host, in preference order; raise OSError on failure."""
        ...


# getaddrinfo, IPv4 only (AAAA answers are ignored, SPEC §5), on daemon threads of its own with
# one lookup in flight per name, so a name that never answers delays no other (proxy/dns.py).
SystemResolver = ThreadedResolver


@dataclass(frozen=True, slots=True)
class Vetted:
    """One resolution of an upstream name, judged by the IP policy (both keep resolver order)."""

    answer: list[str]  # every IPv4 address the resolver gave
    allowed: list[str]  # the only addresses that may be dialled
    refused: list[str]


async def vetted_addresses(
    resolver: Resolver, policy: IPPolicy, host: str, port: int, dns_timeout: float
) -> Vetted:
    """Resolve `host` (within `dns_timeout`) and split the answer by the policy: the one copy of it.

    Raises TimeoutError when the name does not answer in time, OSError when it does not resolve.
    Called afresh for every new connection: an answer is never reused, so each is judged on its own.
    """
    answer = await asyncio.wait_for(resolver.resolve(host, port), dns_timeout)
    allowed, refused = policy.partition(answer)
    return Vetted(answer, allowed, refused)


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


@trait
class ResponseSink:
    """Receives one response's bytes; the forwarder attaches one per exchange (a mypyc trait:
    compiled, each read's `feed` is a native call)."""

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def upstream_lost(self, exc: Exception | None) -> None:
        raise NotImplementedError


class UpstreamProtocol:
    """Moves bytes for one upstream connection, straight into the attached sink.

    No stream reader in between: each chunk the upstream sends is parsed and relayed to the
    tunnel inside this callback, with no task wake-up per chunk. An asyncio protocol by its
    methods rather than by `asyncio.Protocol` as a base: a class with a base that is not
    compiled is not a native class, and every call into it would be a generic one.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        # Told when the upstream sends while no response is owed (idle in the pool, or between
        # two exchanges): such bytes would otherwise be taken as the next request's answer.
        self.on_unsolicited: Callable[[], object] | None = None
        self.lost = False
        self._paused = False
        self._drain: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # bytes on an idle keep-alive connection: it cannot be reused
            if not self.lost:
                self.lost = True
                if self.transport is not None:
                    self.transport.close()
                if self.on_unsolicited is not None:
                    self.on_unsolicited()
            return
        sink.feed(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake(exc or ConnectionResetError("upstream connection closed"))
        if self.sink is not None:
            self.sink.upstream_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(None)

    async def drain(self) -> None:
        """Wait while the upstream is not taking the request body fast enough."""
        if self.lost:
            raise ConnectionResetError("upstream connection closed")
        if not self._paused:
            return
        self._drain = asyncio.get_running_loop().create_future()
        await self._drain

    def _wake(self, exc: Exception | None) -> None:
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)


class Dial(Protocol):
    """Opens the TCP (and TLS) connection to one vetted address: the only place the proxy dials."""

    def __call__(
        self, address: str, port: int, ssl_context: ssl.SSLContext | None, server_hostname: str | None
    ) -> Awaitable[tuple[asyncio.Transport, UpstreamProtocol]]: ...


def loop_dial(
    address: str, port: int, ssl_context: ssl.SSLContext | None, server_hostname: str | None
) -> Awaitable[tuple[asyncio.Transport, UpstreamProtocol]]:
    """The default `Dial`: the loop's create_connection itself (no coroutine of our own around it)."""
    return asyncio.get_running_loop().create_connection(  # type: ignore[return-value]
        _upstream_protocol, address, port, ssl=ssl_context, server_hostname=server_hostname
    )


def _upstream_protocol() -> asyncio.BaseProtocol:
    """A new `UpstreamProtocol`, as asyncio's type for a protocol factory reads it."""
    return cast(asyncio.BaseProtocol, UpstreamProtocol())


@dataclass(eq=False, slots=True)
class UpstreamConnection:
    route: Route
    address: str
    transport: asyncio.Transport
    protocol: UpstreamProtocol
    idle_since: float = field(default=0.0)
    reused: bool = False

    def usable(self) -> bool:
        return not self.protocol.lost and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_reading(self) -> None:
        """Read nothing more from the upstream until `resume_reading` (the tunnel's peer is slow)."""
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def close(self) -> None:
        self.protocol.sink = None
        self.transport.close()


class Connector:
    """Opens vetted upstream connections and keeps idle keep-alive ones for reuse."""

    def __init__(
        self,
        settings: UpstreamSettings,
        log: Logger,
        *,
        resolver: Resolver | None = None,
        dial: Dial = loop_dial,
        connect_timeout: float = 10.0,
        dns_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_unsolicited: Callable[[str, str], object] | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        self.resolver: Resolver = resolver or SystemResolver()
        self.dial: Dial = dial
        self.connect_timeout = connect_timeout  # the TCP (and TLS) connect, per address
        self.dns_timeout = dns_timeout  # the name's resolution: a 502, as a name that fails
        self.ssl_context = upstream_ssl_context(settings)
        self._clock = clock
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self.closed = False
        self._on_unsolicited = on_unsolicited  # (route key, upstream): log and count

    def pooled(self, route: Route) -> UpstreamConnection | None:
        """A pooled keep-alive connection that is still good, without a coroutine (the common case)."""
        idle = self._idle.get(route.upstream)
        if not idle:
            return None
        now = self._clock()
        while idle:
            conn = idle.pop()
            if conn.usable() and now - conn.idle_since < POOL_IDLE_SECONDS:
                conn.reused = True
                return conn
            conn.close()
        return None

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
            vetted = await vetted_addresses(
                self.resolver, self.settings.policy, route.host, route.port, self.dns_timeout
            )
        except TimeoutError:
            self.log.warn(
                "upstream resolution timed out",
                route=route.key,
                upstream=route.upstream,
                timeout=f"{self.dns_timeout:g}s",
            )
            raise UpstreamDNSError(f"resolving {route.host} timed out") from None
        except OSError as exc:
            self.log.warn(
                "upstream resolution failed", route=route.key, upstream=route.upstream, error=str(exc)
            )
            raise UpstreamDNSError(f"cannot resolve {route.host}: {exc}") from None
        allowed, refused = vetted.allowed, vetted.refused
        if not allowed:
            shown = refused[0] if refused else "none"
            self.log.warn(
                f"IP validation failed: {shown} is not a private address",
                route=route.key,
                upstream=route.upstream,
                resolved=",".join(vetted.answer) or "none",
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
        dial = self.dial
        for address in allowed:  # only vetted addresses, in resolver order
            try:
                transport, protocol = await asyncio.wait_for(
                    dial(
                        address,
                        route.port,
                        self.ssl_context if tls else None,
                        route.host if tls else None,
                    ),
                    self.connect_timeout,
                )
            except TimeoutError:
                last_error = UpstreamTimeout(f"connect to {route.upstream} timed out")
                continue
            except ssl.SSLError as tls_failed:  # its own name: see TunnelSession.receive
                self.log.warn(
                    "upstream tls failed", route=route.key, upstream=route.upstream, error=str(tls_failed)
                )
                raise UpstreamTLSError(f"upstream TLS failed: {tls_failed}") from None
            except OSError as exc:
                last_error = exc
                self.log.warn(
                    f"dial tcp {address}:{route.port}: connect: {_errno_text(exc)}",
                    route=route.key,
                    upstream=route.upstream,
                )
                continue
            if self._on_unsolicited is not None:
                protocol.on_unsolicited = partial(self._on_unsolicited, route.key, route.upstream)
            return UpstreamConnection(route, address, transport, protocol)
        if isinstance(last_error, UpstreamTimeout):
            raise last_error
        raise UpstreamConnectError(f"cannot connect to {route.upstream}: {last_error}")


def _errno_text(exc: OSError) -> str:
    """Go's wording for the common dial errors, so the official troubleshooting matches."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return (exc.strerror or str(exc)).lower()
