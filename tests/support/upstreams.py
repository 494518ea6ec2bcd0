"""Real upstream HTTP servers on loopback that record what reaches them.

`RecordingUpstream` is a raw asyncio server parsed with httptools, so tests can see the exact
head the proxy sent (or that nothing arrived) and script the answer, including SSE streams
that wait for the test's signal.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

from mcp_tunnel.proxy.upstream import UpstreamProtocol, loop_dial


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Handler = Callable[[Received, asyncio.StreamWriter], Awaitable[None]]


async def default_handler(req: Received, writer: asyncio.StreamWriter) -> None:
    body = f"{req.method} {req.target} {len(req.body)}\n".encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )


class _Parser:
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[Received] = []
        self._cur: Received | None = None
        self._url = b""

    def on_message_begin(self) -> None:
        self._cur = Received("", "", [])
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._cur is not None
        self._cur.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self._cur is not None
        self._cur.method = self.parser.get_method().decode()
        self._cur.target = self._url.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        assert self._cur is not None
        self._cur.body += body

    def on_message_complete(self) -> None:
        assert self._cur is not None
        self.done.append(self._cur)
        self._cur = None


@dataclass
class RecordingUpstream:
    handler: Handler = default_handler
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, host: str = "127.0.0.1", ssl: Any = None) -> RecordingUpstream:
        self.server = await asyncio.start_server(self._serve, host, 0, ssl=ssl)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        parser = _Parser()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                parser.parser.feed_data(data)
                while parser.done:
                    req = parser.done.pop(0)
                    self.requests.append(req)
                    self.arrived.set()
                    await self.handler(req, writer)
                    await writer.drain()
        except (ConnectionError, httptools.HttpParserError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


class ScriptedResolver:
    """A resolver whose answers the test decides, one list per call (the last one repeats).

    DNS is the one part the tests script: it lets a test change the answer between the check
    and the connect (rebinding) without a DNS server.
    """

    def __init__(self, answers: dict[str, list[list[str]] | Exception]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answer = self.answers.get(host)
        if answer is None:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        if isinstance(answer, Exception):
            raise answer
        n = sum(1 for h in self.calls if h == host) - 1
        return list(answer[min(n, len(answer) - 1)])


class LoopbackRecordingDial:
    """A `Dial` that records every address asked for and really connects only to 127.0.0.1.

    Anything else fails at once without a packet, so a broken seam that dials a refused (even a
    public) address shows up in `dialled` and never leaves this machine.
    """

    def __init__(self) -> None:
        self.dialled: list[str] = []

    async def __call__(
        self, address: str, port: int, ssl_context: ssl.SSLContext | None, server_hostname: str | None
    ) -> tuple[asyncio.Transport, UpstreamProtocol]:
        self.dialled.append(address)
        if address != "127.0.0.1":
            raise ConnectionRefusedError(111, f"test dial refuses {address}")
        return await loop_dial(address, port, ssl_context, server_hostname)
