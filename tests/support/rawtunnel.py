"""A tunnel client that does every layer by hand, so a test can break any one of them.

`RawTunnel` is one TCP connection to the proxy: the WebSocket upgrade written as bytes, frames
built here (any opcode, reserved bits, masking, a declared length that lies), the inner TLS
session an `ssl.SSLObject` over two MemoryBIOs (records can be sent as they are, cut, corrupted,
or invented), and HTTP as plaintext bytes. What the proxy sends is recorded layer by layer: its
frames, its close code and reason, whether the TCP side ended, every plaintext byte, and the
TLS error if its stream broke. Waiting is always bounded: `until` reads until a condition holds,
the connection ends, or the deadline passes.

`split_responses` reads HTTP/1.1 responses out of that plaintext with no leniency, so a stray
byte between two answers shows up as garbage or as one response too many.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import ssl
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mcp_tunnel.ws_frames import BINARY, CLOSE, CONT, PING, PONG, TEXT, FrameError, FrameParser, parse_close

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

UPGRADE = (
    "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

# The close codes the proxy documents for what a peer sends it (SPEC §2, docs/architecture.md):
# 1000 normal (also after a failed TLS handshake), 1002 broken framing or TLS stream, 1003 a
# text message, 1007 a close reason that is not UTF-8, 1009 a message over 1 MiB.
PEER_FAULT_CODES = frozenset({1000, 1002, 1003, 1007, 1009})


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame as a client would write it, or would not: `rsv` sets the reserved bits (0-7),
    `length` declares a length other than the payload's."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + apply_mask(payload, key)


def close_frame(code: int = 1000, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason)


@dataclass
class HTTPResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def interim(self) -> bool:
        return 100 <= self.status < 200

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class NotHTTP(AssertionError):
    """The plaintext is not a well-formed sequence of HTTP/1.1 responses (a test failure)."""


_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: ([^\r\n]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def split_responses(data: bytes, methods: Sequence[str], *, eof: bool = False) -> list[HTTPResponse]:
    """The complete responses at the start of `data`, interim ones included, for requests with
    `methods` in order (a HEAD answer has no body); a close-delimited body counts only at `eof`.
    Raises NotHTTP at the first byte that cannot be part of a response."""
    return _split(data, methods, eof)[0]


def after_responses(data: bytes, methods: Sequence[str], *, eof: bool = False) -> bytes:
    """What follows the complete responses at the start of `data` (see `split_responses`)."""
    return data[_split(data, methods, eof)[1] :]


def _split(data: bytes, methods: Sequence[str], eof: bool) -> tuple[list[HTTPResponse], int]:
    out: list[HTTPResponse] = []
    pos, answered = 0, 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            if not _could_start_response(data[pos:]):
                raise NotHTTP(f"not a status line at byte {pos}: {bytes(data[pos : pos + 80])!r}")
            break
        lines = data[pos:end].split(b"\r\n")
        status_line = _STATUS.fullmatch(lines[0])
        if status_line is None:
            raise NotHTTP(f"not a status line at byte {pos}: {lines[0][:80]!r}")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise NotHTTP(f"not a header line: {line[:80]!r}")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        status = int(status_line.group(1))
        resp = HTTPResponse(status, (status_line.group(2) or b"").decode("latin-1"), headers, b"")
        start = end + 4
        if resp.interim:
            out.append(resp)
            pos = start
            continue
        method = methods[answered] if answered < len(methods) else "GET"
        te = (resp.header("transfer-encoding") or "").lower()
        cl = resp.header("content-length")
        if method == "HEAD" or status in (204, 304):
            pos = start
        elif te:
            if te != "chunked":
                raise NotHTTP(f"transfer-encoding {te!r}")
            body, end = _dechunk(data, start)
            if end < 0:
                break
            resp.body, pos = body, end
        elif cl is not None:
            if not cl.isdigit():
                raise NotHTTP(f"content-length {cl!r}")
            if len(data) < start + int(cl):
                break
            resp.body, pos = data[start : start + int(cl)], start + int(cl)
        else:
            if not eof:
                break
            resp.body, pos = data[start:], len(data)
        out.append(resp)
        answered += 1
    return out, pos


def _could_start_response(partial: bytes) -> bool:
    """Whether `partial` (no complete head yet) can still become a response."""
    first, crlf, _ = partial.partition(b"\r\n")
    if crlf:
        return _STATUS.fullmatch(first) is not None
    if len(first) < 13:
        return any(v.startswith(first) or first.startswith(v) for v in (b"HTTP/1.1 ", b"HTTP/1.0 "))
    return _STATUS.match(first) is not None


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int]:
    """(body, end) of a chunked body starting at `pos`; end -1 while incomplete."""
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return b"", -1
        size_text = data[pos:eol].split(b";", 1)[0]
        if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
            raise NotHTTP(f"bad chunk size line {data[pos:eol][:40]!r}")
        size = int(size_text, 16)
        pos = eol + 2
        if size == 0:
            while True:  # trailers up to the empty line
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    return b"", -1
                if eol == pos:
                    return bytes(body), pos + 2
                pos = eol + 2
        if len(data) < pos + size + 2:
            return b"", -1
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise NotHTTP("chunk data not followed by CRLF")
        body += data[pos : pos + size]
        pos += size + 2


class RawTunnel:
    """One hand-driven tunnel connection (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = FrameParser(masked=False, max_message=None)
        self.received: list[tuple[int, bytes]] = []  # (opcode, payload) of every frame from the proxy
        self.close_code: int | None = None
        self.close_reason = ""
        self.close_sent = False
        self.write_ended = False  # `shutdown_write` was called
        self.eof = False  # the proxy's TCP side ended
        self.frame_error: str | None = None  # the proxy broke the framing (never expected)
        self.auto_pong = True
        self.plain = bytearray()  # every plaintext byte the proxy sent
        self.tls_error: str | None = None
        self.tls_closed = False  # the proxy's close_notify arrived
        self.tls: ssl.SSLObject | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()

    # --- opening -----------------------------------------------------------------------

    @classmethod
    async def open(cls, port: int, *, after_request: bytes = b"", timeout: float = 5.0) -> RawTunnel:
        """Upgrade to a WebSocket (bytes written right behind the request go with it)."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(UPGRADE.format(host=f"127.0.0.1:{port}", key=key).encode() + after_request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if not head.startswith(b"HTTP/1.1 101 "):
            writer.close()
            raise AssertionError(f"the upgrade was refused: {head[:200]!r}")
        return cls(reader, writer)

    @classmethod
    async def connect(
        cls, port: int, ctx: ssl.SSLContext, server_hostname: str, *, timeout: float = 5.0
    ) -> RawTunnel:
        """A WebSocket with its inner TLS session established."""
        tunnel = await cls.open(port, timeout=timeout)
        await tunnel.start_tls(ctx, server_hostname, timeout=timeout)
        return tunnel

    async def start_tls(self, ctx: ssl.SSLContext, server_hostname: str, *, timeout: float = 5.0) -> None:
        self.tls = obj = ctx.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                out = self._out.read()
                if out:
                    self.send_message(out)
            if not await self._read(deadline - loop.time()):
                raise AssertionError(f"the proxy ended the tunnel during the TLS handshake: {self.summary()}")
        out = self._out.read()  # the client's Finished
        if out:
            self.send_message(out)

    # --- sending -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Bytes on the TCP connection as they are (dropped once our side has ended)."""
        if not self.writer.is_closing() and not self.write_ended:
            self.writer.write(data)

    def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv: int = 0,
        mask: bool = True,
        length: int | None = None,
    ) -> None:
        self.write(frame(opcode, payload, fin=fin, rsv=rsv, mask=mask, length=length))

    def send_message(self, data: bytes) -> None:
        """Ciphertext (or anything) as one binary message."""
        self.write(frame(BINARY, data))

    def encrypt(self, plain: bytes) -> bytes:
        """The TLS records carrying `plain`, not sent."""
        assert self.tls is not None
        self.tls.write(plain)
        return self._out.read()

    def send_plain(self, plain: bytes) -> None:
        self.send_message(self.encrypt(plain))

    def close_notify(self) -> bytes:
        """Our TLS close_notify record, not sent."""
        assert self.tls is not None
        with contextlib.suppress(ssl.SSLError):
            self.tls.unwrap()
        return self._out.read()

    def send_close(self, code: int = 1000, reason: bytes = b"") -> None:
        self.close_sent = True
        self.write(close_frame(code, reason))

    def shutdown_write(self) -> None:
        """Half-close TCP: the proxy reads EOF after what was sent."""
        with contextlib.suppress(OSError):
            if self.writer.can_write_eof() and not self.writer.is_closing() and not self.write_ended:
                self.writer.write_eof()
        self.write_ended = True

    def abort(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()

    async def aclose(self) -> None:
        """Close TCP without ceremony (the test is over with this tunnel)."""
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)

    # --- receiving ---------------------------------------------------------------------

    async def _read(self, timeout: float) -> bool:
        """One read from the socket, handled; False once the proxy's side has ended."""
        if self.eof:
            return False
        try:
            data = await asyncio.wait_for(self.reader.read(65536), max(timeout, 0.0))
        except TimeoutError:
            raise
        except OSError:  # a reset is an end too (TimeoutError is an OSError: not that one)
            data = b""
        if not data:
            self.eof = True
            return False
        self._handle(data)
        return True

    def _handle(self, data: bytes) -> None:
        if self.frame_error is not None:
            return
        try:
            frames = self.frames.feed(data)
        except FrameError as exc:
            self.frame_error = exc.reason
            return
        for opcode, _fin, payload in frames:
            self.received.append((opcode, payload))
            if opcode in (BINARY, CONT):
                self._ciphertext(payload)
            elif opcode == PING and self.auto_pong and not self.close_sent:
                self.write(frame(PONG, payload))
            elif opcode == CLOSE:
                try:
                    self.close_code, self.close_reason = parse_close(payload)
                except FrameError as exc:
                    self.frame_error = f"invalid close frame: {exc.reason}"
                    self.close_code = -1
                if not self.close_sent:  # the usual echo, so the proxy may close TCP at once
                    self.close_sent = True
                    self.write(frame(CLOSE, payload))
            elif opcode == TEXT:
                self.frame_error = "the proxy sent a text message"

    def _ciphertext(self, payload: bytes) -> None:
        self._in.write(payload)
        obj = self.tls
        if obj is None or self.tls_error is not None:
            return
        if obj.version() is None:
            return  # still handshaking: start_tls drives it
        while True:
            try:
                piece = obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.tls_closed = True
                break
            except ssl.SSLError as exc:
                self.tls_error = str(exc)
                break
            if not piece:
                self.tls_closed = True
                break
            self.plain += piece

    async def until(self, condition: Callable[[], object], timeout: float) -> bool:
        """Read until `condition()` holds (True), the proxy's side ends or `timeout` passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                if not await self._read(remaining):
                    return bool(condition())
            except TimeoutError:
                return bool(condition())
        return True

    async def ended(self, timeout: float) -> bool:
        """Read until the proxy ends the TCP connection; False if it has not within `timeout`."""
        return await self.until(lambda: self.eof, timeout)

    async def responses(self, methods: Sequence[str], timeout: float) -> list[HTTPResponse]:
        """Read until the final responses to `methods` are in (or the end, or the deadline); all
        the responses the plaintext holds, interim ones included. Raises NotHTTP."""

        def finals() -> int:
            return sum(not r.interim for r in split_responses(bytes(self.plain), methods, eof=self.eof))

        await self.until(lambda: finals() >= len(methods), timeout)
        return split_responses(bytes(self.plain), methods, eof=self.eof)

    def summary(self) -> str:
        """What the proxy did, for assertion messages."""
        return (
            f"close={self.close_code} {self.close_reason!r} eof={self.eof} tls_error={self.tls_error} "
            f"tls_closed={self.tls_closed} frame_error={self.frame_error} plain={bytes(self.plain)[:300]!r}"
        )
