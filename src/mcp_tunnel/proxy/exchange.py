"""One request and its response, and what the layers below the tunnel ask of the ones above.

The request path's layers point one way: server -> tunnel -> http_server -> forward -> upstream.
A lower layer never imports a higher one; where it must call up (write to the tunnel's peer, ask
it to stop reading, tell the HTTP connection an exchange is over) it calls one of the two
interfaces here, which the higher layer implements:

- `Tunnel`: what the inner HTTP connection and the forwarder need of the tunnel (I/O) layer.
  The I/O layer owns flow control; the HTTP layer asks for it with a reason.
- `Connection`: what the forwarder needs of the inner HTTP connection an exchange came on.

They are mypyc traits, not `typing.Protocol`s: compiled, a call through a trait is a vtable
lookup, through a Protocol a generic Python call. A class that provides one names it as a base.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter
from typing import Any

from mypy_extensions import trait

from mcp_tunnel.errors import BodyAborted, ProxyError
from mcp_tunnel.http_rules import RequestHead
from mcp_tunnel.mcp_policy import McpExchange


@trait
class Tunnel:
    """The tunnel (I/O) layer, as the HTTP and forwarding layers see it."""

    peer: str  # "address:port" of the tunnel's peer, for log lines
    sni_host: str | None  # the inner TLS SNI, normalised like Host; None when none was sent

    @property
    def writable(self) -> bool:
        """False while the peer is behind on what we sent (see `when_writable`)."""
        raise NotImplementedError

    def send_plain(self, data: bytes) -> None:
        """Encrypt, frame and write inner HTTP bytes to the peer, at once."""
        raise NotImplementedError

    def when_writable(self, callback: Callable[[], object]) -> None:
        """Run `callback` once the peer has caught up (now, if it has)."""
        raise NotImplementedError

    def pause_reading(self, reason: int) -> None:
        """Read nothing more from the peer for `reason` (a `flow.READ_*` bit)."""
        raise NotImplementedError

    def resume_reading(self, reason: int) -> None:
        """`reason` no longer holds reading back; it resumes once no reason is left."""
        raise NotImplementedError

    def set_timer(self, delay: float, kind: int) -> None:
        """Replace the connection's one deadline: `kind` is a `flow.DEADLINE_*` (header read,
        body, idle); when it passes, the inner HTTP connection is told which."""
        raise NotImplementedError

    def cancel_timer(self) -> None:
        raise NotImplementedError

    def close_gracefully(self) -> None:
        """TLS close_notify, then the WebSocket close: the peer sees a clean end."""
        raise NotImplementedError

    def close_abruptly(self) -> None:
        """End without close_notify, so the peer sees a truncated response as truncated."""
        raise NotImplementedError


@trait
class Connection:
    """The inner HTTP connection one exchange came on, as the forwarder sees it."""

    aborted: str  # why the tunnel was cut ("" while it is not): an exchange not begun ends so

    def body_consumed(self) -> None:
        """The upstream took some request body: reading may resume."""
        raise NotImplementedError

    def exchange_done(self, ex: Exchange) -> None:
        """`ex` has been answered (or cut) and logged: the next one may begin."""
        raise NotImplementedError


class BodyStream:
    """Request body chunks on their way from the tunnel to the upstream."""

    __slots__ = ("_chunks", "_waiter", "buffered", "done", "error", "failed")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self.buffered = 0
        self.done = False
        self.failed = False
        self.error: ProxyError | None = None  # the answer a failed body gets (None: the tunnel went)

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.buffered += len(chunk)
        if self._waiter is not None:
            self._wake()

    def end(self) -> None:
        self.done = True
        if self._waiter is not None:
            self._wake()

    def fail(self, error: ProxyError | None = None) -> None:
        """The body will not be whole: `error` is what the client is answered (400, 408, 413)."""
        if not self.failed:
            self.error = error
        self.failed = True
        self.done = True
        self._chunks.clear()
        self.buffered = 0
        self._wake()

    def check(self) -> None:
        """Raise what a failed body is answered with: nothing goes upstream after it."""
        if self.failed:
            raise self.error if self.error is not None else BodyAborted("request body aborted")

    def complete_now(self) -> bytes | None:
        """The whole body, if it has already arrived (the common small-request case)."""
        if not self.done or self.failed:
            return None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.buffered = 0
        return data

    async def read(self) -> bytes | None:
        """Next chunk, or None at the end of the body."""
        while not self._chunks:
            if self.done:
                self.check()
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        chunk = self._chunks.pop(0)
        self.buffered -= len(chunk)
        return chunk

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._waiter = None


class Exchange:
    """One request and its response."""

    __slots__ = (
        "body",
        "body_bytes",
        "close_after",
        "error",
        "finished",
        "handed",
        "head",
        "logged_start",
        "mcp",
        "reason",
        "response_bytes",
        "response_started",
        "route_key",
        "running",
        "started",
        "status",
    )

    def __init__(self) -> None:
        self.head: RequestHead | None = None
        self.error: ProxyError | None = None
        self.body = BodyStream()
        self.body_bytes = 0
        self.finished = False
        self.handed = False  # given to the forwarder (only once the one before it has finished)
        self.logged_start = False  # the "request started" line is out
        self.close_after = False
        self.response_started = False
        self.response_bytes = 0
        self.status = 0
        self.reason = ""  # why the proxy answered or cut it itself, for the completion line
        self.route_key = "-"
        self.mcp: McpExchange | None = None  # the MCP audit/policy work, only with the mcp: section
        self.started = perf_counter()
        # Its task, or for one begun without a task its response's future: what `abort` cancels.
        self.running: asyncio.Future[Any] | None = None

    def begun(self) -> bool:
        """Its head has been read (and judged): it is answered in turn, whatever follows."""
        return self.head is not None or self.error is not None
