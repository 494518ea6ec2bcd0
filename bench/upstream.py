"""The benchmark's upstream, run as its own process: `python -m bench.upstream PORT`.

Raw asyncio protocol + httptools and canned answers, so the upstream costs as little as Python
allows and the numbers are about the proxies in front of it, not about the server behind them.

- `POST /small`: a 1 KiB JSON reply (the request body is parsed and dropped).
- `GET /download`: a 4 MiB body with Content-Length.
- `GET /sse?n=N&ms=M`: N chunked SSE events, one every M ms, each carrying the
  time.perf_counter() taken just before it is written (CLOCK_MONOTONIC: the same clock in every
  process on Linux), so the client can compute each event's delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from urllib.parse import parse_qs

import httptools

KIB = 1024
DOWNLOAD_SIZE = 4 * 1024 * KIB


def json_of_size(size: int) -> bytes:
    """A JSON-RPC-shaped document of exactly `size` bytes (padding in one string field)."""
    frame = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"%s"}]}}'
    pad = size - (len(frame) - 2)
    return frame % (b"x" * pad)


SMALL_BODY = json_of_size(KIB)
SMALL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(SMALL_BODY)
    + SMALL_BODY
)
DOWNLOAD_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % DOWNLOAD_SIZE
)
DOWNLOAD_BODY = b"\xa5" * DOWNLOAD_SIZE
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"X-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n"


class UpstreamProtocol(asyncio.Protocol):
    """One upstream connection; keep-alive, answers in order (no pipelining is sent to it)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.streams: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.streams:
            task.cancel()

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        transport = self.transport
        assert transport is not None
        path, _, query = self.url.partition(b"?")
        if path == b"/small":
            transport.write(SMALL_RESPONSE)
        elif path == b"/download":
            transport.write(DOWNLOAD_HEAD)
            transport.write(DOWNLOAD_BODY)
        elif path == b"/sse":
            args = parse_qs(query.decode())
            count = int(args.get("n", ["10"])[0])
            interval = float(args.get("ms", ["10"])[0]) / 1000
            task = asyncio.get_running_loop().create_task(self._sse(transport, count, interval))
            self.streams.add(task)
            task.add_done_callback(self.streams.discard)
            return
        else:
            transport.write(NOT_FOUND)
        if not self.parser.should_keep_alive():
            transport.close()

    async def _sse(self, transport: asyncio.Transport, count: int, interval: float) -> None:
        loop = asyncio.get_running_loop()
        transport.write(SSE_HEAD)
        start = loop.time()
        for i in range(count):
            if transport.is_closing():
                return
            event = b"data: %.9f\n\n" % time.perf_counter()
            transport.write(b"%x\r\n%s\r\n" % (len(event), event))
            await asyncio.sleep(max(0.0, start + (i + 1) * interval - loop.time()))
        transport.write(b"0\r\n\r\n")


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, "127.0.0.1", port, backlog=4096)
    print(f"upstream listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
