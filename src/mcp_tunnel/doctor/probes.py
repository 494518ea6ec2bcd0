"""The doctor's only I/O: resolving, connecting, and talking through the proxy as Anthropic would.

Everything here returns plain facts (addresses, error text, status codes, bodies) and never
judges them; the step modules turn facts into checks. Keeping the network in one small class
lets tests swap the resolver and see every connection the doctor makes, and makes it easy to
verify that an address the IP policy refuses is never connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from dataclasses import dataclass, field

from mcp_tunnel.client import TunnelClient, client_ssl_context
from mcp_tunnel.errors import TunnelClientError
from mcp_tunnel.proxy.upstream import Resolver, SystemResolver

MAX_BODY = 1024 * 1024  # metadata documents and one JSON-RPC answer are far smaller


@dataclass(frozen=True, slots=True)
class ConnectResult:
    """A TCP (and, for https upstreams, TLS) connection attempt to one address."""

    address: str
    port: int
    error: str | None = None  # None: connected


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """A WebSocket + inner TLS handshake through the proxy for one host."""

    host: str
    stage: str | None = None  # None: ok; else websocket | tls | http | timeout
    error: str | None = None
    served_der: bytes | None = None
    alpn: str | None = None


@dataclass(frozen=True, slots=True)
class HttpResult:
    """One request through the tunnel; `error` is set when no response arrived."""

    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    stage: str | None = None
    error: str | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)

    def json(self) -> object:
        """The body as JSON (or the first JSON-RPC message of an SSE body); None if neither."""
        text = self.body.decode("utf-8", "replace")
        if "text/event-stream" in (self.header("content-type") or ""):
            return first_sse_json(text)
        try:
            result: object = json.loads(text)
        except ValueError:
            return None
        return result


def first_sse_json(text: str) -> object:
    """The first event whose data is JSON, from a server-sent event stream."""
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
        if data:
            try:
                result: object = json.loads(data)
            except ValueError:
                continue
            return result
    return None


@dataclass
class Probes:
    """Network access for the doctor; `connects` records every address it connected to."""

    resolver: Resolver = field(default_factory=SystemResolver)  # routing resolves through the seam
    timeout: float = 5.0
    connects: list[tuple[str, int]] = field(default_factory=list)

    async def connect(
        self, address: str, port: int, *, tls: ssl.SSLContext | None = None, server_name: str | None = None
    ) -> ConnectResult:
        """Open and close one connection to an exact address (TLS verified when given)."""
        self.connects.append((address, port))
        try:
            async with asyncio.timeout(self.timeout):
                _, writer = await asyncio.open_connection(
                    address, port, ssl=tls, server_hostname=server_name if tls else None
                )
        except TimeoutError:
            return ConnectResult(address, port, f"no answer within {self.timeout:g}s")
        except ssl.SSLError as exc:
            return ConnectResult(address, port, f"TLS failed: {exc.reason or exc}")
        except OSError as exc:
            return ConnectResult(address, port, _os_error(exc))
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return ConnectResult(address, port)

    async def edge(self, host: str, port: int) -> tuple[list[str], ConnectResult | None, str | None]:
        """Resolve an edge host (IPv4 and IPv6, as cloudflared does) and connect to the first address."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            return [], None, _os_error(exc) if isinstance(exc, OSError) else "DNS timed out"
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            return [], None, "no address in the answer"
        result = ConnectResult(addresses[0], port, "no address")
        for address in addresses:
            result = await self.connect(address, port)
            if result.error is None:
                break
        return addresses, result, None

    # --- through the proxy, as Anthropic's backend ---------------------------------------

    def tunnel(self, proxy_url: str, ca_file: str) -> TunnelClient:
        return TunnelClient(proxy_url, client_ssl_context(ca_file), timeout=self.timeout)

    async def handshake(self, client: TunnelClient, host: str) -> HandshakeResult:
        try:
            conn = await client.connect(host)
        except TunnelClientError as exc:
            return HandshakeResult(host, exc.stage, str(exc))
        der, alpn = conn.peer_certificate_der(), conn.alpn
        await conn.close()
        return HandshakeResult(host, served_der=der, alpn=alpn)

    async def request(
        self,
        client: TunnelClient,
        host: str,
        method: str,
        target: str,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes | None = None,
    ) -> HttpResult:
        """One request on a fresh tunnel connection; an SSE body is read up to its first message."""
        try:
            conn = await client.connect(host)
        except TunnelClientError as exc:
            return HttpResult(stage=exc.stage, error=str(exc))
        try:
            async with asyncio.timeout(self.timeout):
                resp = await conn.request(method, target, host=host, headers=headers, body=body)
                sse = "text/event-stream" in (resp.header("content-type") or "")
                data = bytearray()
                async for piece in resp.iter_body():
                    data += piece
                    if len(data) > MAX_BODY or (sse and first_sse_json(data.decode("utf-8", "replace"))):
                        break
        except TunnelClientError as exc:
            return HttpResult(stage=exc.stage, error=str(exc))
        except TimeoutError:
            return HttpResult(stage="timeout", error=f"no complete answer within {self.timeout:g}s")
        finally:
            await conn.close()
        return HttpResult(resp.status, tuple(resp.headers), bytes(data))


def _os_error(exc: OSError) -> str:
    """Go's dial wording for the common cases, so the text matches the official troubleshooting."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve: {exc.strerror or exc}"
    return (exc.strerror or str(exc)).lower()
