"""WebSocket frames after the handshake (RFC 6455 §5), sans-I/O, for a binary-only byte pipe.

`ws_handshake` answers the opening handshake on the proxy's side (websockets' sans-I/O
`ClientProtocol` still makes it on the tunnel client's); this module takes over once the 101 is
sent, run by `tunnel_session` on both ends. A tunnel only ever carries one TLS byte stream in
binary messages, so it needs no message assembly, no extensions and no text decoding: each
data frame's payload is handed on as it arrives. Doing that here instead of through
websockets' general frame parser (a generator over a stream reader, an event object per frame)
measured ~5 us less per request and ~1.2 KB less per idle tunnel (docs/performance.md).
Masking uses websockets' C `apply_mask`; the framing rules are checked against websockets' own
`Frame` in tests/test_ws_frames.py.
"""

from __future__ import annotations

import os
import struct
from typing import Final, NamedTuple

from websockets.frames import EXTERNAL_CLOSE_CODES

from mcp_tunnel.errors import FrameError as FrameError

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the pure-Python fallback websockets ships
    from websockets.utils import apply_mask

# Final, here and below: compiled, a constant is then inlined or kept in a C static instead of
# being looked up in the module's dictionary (and unboxed) at every frame.
CONT: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

# Close codes (RFC 6455 §7.4.1)
NORMAL_CLOSURE = 1000
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
NO_STATUS_RCVD = 1005
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011

_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")
_HEAD16: Final = struct.Struct("!BBH")
_HEAD64: Final = struct.Struct("!BBQ")


class Frame(NamedTuple):
    """One complete, unmasked frame."""

    opcode: int
    fin: bool
    payload: bytes


class FrameParser:
    """Splits a byte stream into frames and enforces the rules a receiver must check.

    `masked` is what the peer must do: clients mask, servers do not (§5.1). `max_message`
    bounds the size of one message across its fragments (None: no bound).
    """

    __slots__ = ("_buf", "_in_message", "_masked", "_max_message", "_message_size", "_need")

    def __init__(self, *, masked: bool, max_message: int | None) -> None:
        self._masked = masked
        self._max_message = max_message
        self._buf: bytes | bytearray = b""
        self._need = 2  # bytes the buffer must hold before parsing can move on
        self._in_message = False  # inside a fragmented data message
        self._message_size = 0

    def feed(self, data: bytes) -> list[Frame]:
        """The frames `data` completes, in order. Raises FrameError at the first broken rule."""
        buf = self._buf
        if buf:
            if isinstance(buf, bytes):
                buf = self._buf = bytearray(buf)
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            self._buf = b""
        frames: list[Frame] = []
        pos, end = 0, len(data)
        masked = self._masked
        while True:
            avail = end - pos
            if avail < 2:
                self._keep(data, pos, 2)
                return frames
            b0, b1 = data[pos], data[pos + 1]
            if b0 & 0x70:
                raise FrameError(PROTOCOL_ERROR, "reserved bits must be 0")
            if bool(b1 & 0x80) is not masked:
                raise FrameError(PROTOCOL_ERROR, "incorrect masking")
            opcode, fin, length = b0 & 0x0F, bool(b0 & 0x80), b1 & 0x7F
            head = 2
            if length == 126:
                head = 4
                if avail < head:
                    self._keep(data, pos, head)
                    return frames
                length = _U16.unpack_from(data, pos + 2)[0]
            elif length == 127:
                head = 10
                if avail < head:
                    self._keep(data, pos, head)
                    return frames
                length = _U64.unpack_from(data, pos + 2)[0]
                if length >> 63:
                    raise FrameError(PROTOCOL_ERROR, "frame length has its top bit set")
            if masked:
                head += 4
            size = self._check(opcode, fin, length)
            if avail < head + length:
                self._keep(data, pos, head + length)
                return frames
            start = pos + head
            pos = start + length
            payload = data[start:pos]
            if masked:
                payload = apply_mask(payload, data[start - 4 : start])
            if opcode < CLOSE:
                self._in_message = not fin
                self._message_size = size  # read only by a continuation, so only while in a message
            frames.append(Frame(opcode, fin, payload))

    def _check(self, opcode: int, fin: bool, length: int) -> int:
        """The header's rules, checked before waiting for a payload that may never be allowed.

        Returns the size of the data message so far, this frame included.
        """
        if opcode >= CLOSE:
            if opcode not in (CLOSE, PING, PONG):
                raise FrameError(PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
            if not fin:
                raise FrameError(PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                raise FrameError(PROTOCOL_ERROR, "control frame too long")
            return 0
        if opcode not in (CONT, TEXT, BINARY):
            raise FrameError(PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
        if opcode == CONT:
            if not self._in_message:
                raise FrameError(PROTOCOL_ERROR, "unexpected continuation frame")
            size = self._message_size + length
        elif self._in_message:
            raise FrameError(PROTOCOL_ERROR, "expected a continuation frame")
        else:
            size = length
        limit = self._max_message
        if limit is not None and size > limit:
            raise FrameError(MESSAGE_TOO_BIG, f"message over {limit} bytes")
        return size

    def _keep(self, data: bytes, pos: int, need: int) -> None:
        """Hold the unparsed tail until at least `need` bytes of it are there."""
        self._buf = data[pos:]  # b"" when everything was used
        self._need = need

    @property
    def buffered(self) -> int:
        return len(self._buf)


def frame_header(opcode: int, length: int) -> bytes:
    """An unmasked, final frame's header (what a server sends)."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return _HEAD16.pack(0x80 | opcode, 126, length)
    return _HEAD64.pack(0x80 | opcode, 127, length)


def encode_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame; `mask` for what a client sends (a fresh random key per frame, §5.3)."""
    n = len(payload)
    if not mask:
        return frame_header(opcode, n) + payload
    key = os.urandom(4)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = _HEAD16.pack(0x80 | opcode, 0xFE, n)
    else:
        head = _HEAD64.pack(0x80 | opcode, 0xFF, n)
    return head + key + apply_mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return _U16.pack(code) + reason.encode()


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a close frame; 1005 when it carries none. Raises FrameError."""
    if not payload:
        return NO_STATUS_RCVD, ""
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame too short")
    code = _U16.unpack_from(payload)[0]
    if code not in EXTERNAL_CLOSE_CODES and not 3000 <= code < 5000:
        raise FrameError(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason
