"""An upstream that answers (part of) a response and then holds the exchange open until its peer
drops it: what shows whether a client's going away reaches the server, and how fast."""

from __future__ import annotations

import asyncio
import time


class HangingUpstream:
    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix = prefix  # written once the request head is in: a head, a first chunk, or nothing
        self.got_request = asyncio.Event()
        self.closed = asyncio.Event()
        self.closed_at = 0.0  # time.perf_counter() when the proxy dropped the upstream connection
        self.release = asyncio.Event()  # set by a test: finish the response
        self.rest = b""  # written after `release`
        self.server: asyncio.Server | None = None

    async def start(self) -> HangingUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # requests one after another: the proxy reuses upstream connections
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(head))
                writer.write(self.prefix)
                await writer.drain()
                self.got_request.set()
                if not self.release.is_set():
                    data = asyncio.ensure_future(reader.read(65536))
                    release = asyncio.ensure_future(self.release.wait())
                    await asyncio.wait({data, release}, return_when=asyncio.FIRST_COMPLETED)
                    if data.done():
                        release.cancel()
                        break  # the proxy dropped the exchange (or broke the protocol)
                    data.cancel()
                writer.write(self.rest)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            if not self.closed.is_set():
                self.closed_at = time.perf_counter()
                self.closed.set()
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0
