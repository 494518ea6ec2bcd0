"""ws_frames: the frame parser every byte of a tunnel passes through, and close payloads.

Inputs are streams of frames built field by field (any opcode, reserved bits, FIN, masked or
not, lengths in the shortest or a longer encoding, 64-bit lengths with the top bit set, close
payloads with valid and invalid codes and reasons), sometimes cut short, with random bytes
after them, flipped bytes or random bytes only; then cut into random chunks.

Oracle: every chunking of one stream gives the same frames and ends in the same FrameError
(same close code, same reason) or none; the stream fed one byte at a time gives every frame
before the error, the other chunkings a prefix of them (a feed that raises returns nothing).
The frames accepted are the ones that were encoded, in order; no data message goes over
`max_message`; each accepted frame round-trips through `frame_header` / `encode_frame`, and
each accepted close payload through `parse_close` / `close_payload`. FrameError carries 1002,
1007 or 1009 and nothing else is ever raised.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import strategies as st
from websockets.frames import EXTERNAL_CLOSE_CODES

from fuzzing.common import chance, chunks, cuts, mostly, pick, text
from fuzzing.driver import Harness
from mcp_tunnel.ws_frames import (
    CLOSE,
    CONT,
    INVALID_DATA,
    MESSAGE_TOO_BIG,
    PROTOCOL_ERROR,
    Frame,
    FrameError,
    FrameParser,
    close_payload,
    encode_frame,
    frame_header,
    parse_close,
)

_CODES = (PROTOCOL_ERROR, INVALID_DATA, MESSAGE_TOO_BIG)


@dataclass(frozen=True)
class Spec:
    """One frame as built: what a correct parser must give back for it."""

    opcode: int
    fin: bool
    payload: bytes
    rsv: int = 0  # reserved bits set (no extension is negotiated: must be refused)
    mask_ok: bool = True  # masked as the parser expects


@dataclass(frozen=True)
class Case:
    masked: bool  # what the parser expects of the peer
    max_message: int | None
    specs: tuple[Spec, ...]  # the frames encoded at the start of `data`, in order
    data: bytes
    whole: bool  # `data` is the encoded frames, perhaps cut short: no other bytes
    cuts: tuple[int, ...]  # chunk boundaries

    def __repr__(self) -> str:
        return (
            f"Case(masked={self.masked}, max_message={self.max_message}, specs={self.specs!r}, "
            f"data={self.data!r}, whole={self.whole}, cuts={self.cuts!r})"
        )


_close_codes = st.one_of(
    st.sampled_from([1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1011, 1015, 2999, 3000, 4999, 5000]),
    st.integers(0, 65535),
)
_close_payloads = st.one_of(
    st.builds(close_payload, _close_codes, text(max_size=20)),
    st.builds(lambda c, r: struct.pack("!H", c) + r, _close_codes, st.binary(max_size=20)),
    st.binary(max_size=3),
)


_PAYLOADS = [
    st.binary(max_size=10),
    st.binary(max_size=130),
    st.binary(max_size=300),
    *(st.binary(min_size=n, max_size=n) for n in (125, 126, 127)),  # the control frame bound
]
_KEYS = st.binary(min_size=4, max_size=4)


@st.composite
def _frame(draw: st.DrawFn, masked: bool) -> tuple[bytes, Spec]:
    opcode = mostly(draw, pick(draw, [0x2, 0x0, 0x1, 0x8, 0x9, 0xA]), range(16))
    fin = draw(st.booleans()) if chance(draw, 4) else opcode != CONT
    payload = draw(_close_payloads if opcode == CLOSE else pick(draw, _PAYLOADS))
    rsv = pick(draw, range(8)) if chance(draw, 10) else 0
    mask = masked if not chance(draw, 20) else not masked
    n = len(payload)
    width = pick(draw, ["short", "short", "short", "16", "64", "64top"])
    if width == "short" and n < 126:
        head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode, (0x80 if mask else 0) | n])
    elif width in ("short", "16") and n < 65536:
        head = struct.pack("!BBH", (0x80 if fin else 0) | rsv << 4 | opcode, (0x80 if mask else 0) | 126, n)
    else:
        length = n | (1 << 63 if width == "64top" else 0)
        head = struct.pack(
            "!BBQ", (0x80 if fin else 0) | rsv << 4 | opcode, (0x80 if mask else 0) | 127, length
        )
    if mask:
        key = draw(_KEYS)
        body = key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    else:
        body = payload
    return head + body, Spec(opcode, fin, payload, rsv, mask == masked)


_STREAMS = {masked: st.lists(_frame(masked), max_size=8) for masked in (False, True)}
_RANDOM = st.binary(max_size=200)
_JUNK = st.binary(min_size=1, max_size=40)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    masked = draw(st.booleans())
    built = draw(_STREAMS[masked])
    max_message = None
    if not chance(draw, 3):  # mostly a bound at (or next to) the size of a message sent
        size, sizes = 0, [0]
        for _, spec in built:
            if spec.opcode < CLOSE:
                size = size + len(spec.payload) if spec.opcode == CONT else len(spec.payload)
                sizes.append(size)
        max_message = max(0, pick(draw, sizes) + pick(draw, [0, -1, 1]))
    data = b"".join(raw for raw, _ in built)
    ends = [sum(len(raw) for raw, _ in built[: i + 1]) for i in range(len(built))]
    intact = len(data)  # the encoded frames that end by here are still the specs
    tail = pick(draw, ["none", "none", "truncate", "junk", "flip", "random"])
    if tail == "truncate" and data:
        data = data[: pick(draw, range(len(data)))]
        intact = len(data)
    elif tail == "junk":
        data += draw(_JUNK)
    elif tail == "flip" and data:
        at = intact = pick(draw, range(len(data)))
        data = data[:at] + bytes([data[at] ^ pick(draw, range(1, 256))]) + data[at + 1 :]
    specs = tuple(spec for (_, spec), end in zip(built, ends, strict=True) if end <= intact)
    if tail == "random":
        data, specs = draw(_RANDOM), ()
    return Case(masked, max_message, specs, data, tail in ("none", "truncate"), cuts(draw, len(data), 12))


def _feed_all(case: Case, chunks: list[bytes]) -> tuple[list[Frame], FrameError | None]:
    parser = FrameParser(masked=case.masked, max_message=case.max_message)
    frames: list[Frame] = []
    for piece in chunks:
        try:
            frames += parser.feed(piece)
        except FrameError as exc:
            return frames, exc
    return frames, None


def check(case: Case) -> None:
    data = case.data
    by_byte, error = _feed_all(case, [data[i : i + 1] for i in range(len(data))])
    seen = None if error is None else (error.code, error.reason)
    for pieces in ([data], chunks(data, case.cuts)):
        frames, err = _feed_all(case, pieces)
        assert (None if err is None else (err.code, err.reason)) == seen, (pieces, err, error)
        if error is None:
            assert frames == by_byte, (pieces, frames, by_byte)
        else:
            assert frames == by_byte[: len(frames)], (pieces, frames, by_byte)
    if error is not None:
        assert type(error) is FrameError and error.code in _CODES and isinstance(error.reason, str), error

    # The frames accepted are the frames encoded, in order (random bytes have no specs).
    for frame, spec in zip(by_byte, case.specs, strict=False):
        assert frame == Frame(spec.opcode, spec.fin, spec.payload), (frame, spec)
        assert spec.rsv == 0 and spec.mask_ok, (frame, spec)  # a broken header was not refused
    if case.whole and error is None:
        assert len(by_byte) == len(case.specs), (by_byte, case.specs)  # nothing held back

    size, in_message = 0, False
    for frame in by_byte:  # RFC 6455 §5: what a receiver must refuse was refused
        assert type(frame.payload) is bytes, frame
        assert frame.opcode in (0x0, 0x1, 0x2, 0x8, 0x9, 0xA), frame
        if frame.opcode >= CLOSE:
            assert frame.fin and len(frame.payload) <= 125, frame
        else:
            assert (frame.opcode == CONT) == in_message, (frame, in_message)
            size = len(frame.payload) if frame.opcode != CONT else size + len(frame.payload)
            in_message = not frame.fin
            if case.max_message is not None:
                assert size <= case.max_message, (frame, case.max_message)
        _round_trip(frame)


def _round_trip(frame: Frame) -> None:
    """An accepted frame, re-encoded as a server and as a client sends it, parses to itself."""
    opcode, payload = frame.opcode, frame.payload
    if opcode == CONT:
        return  # alone, a continuation has no message to continue
    again = FrameParser(masked=False, max_message=None).feed(frame_header(opcode, len(payload)) + payload)
    assert again == [Frame(opcode, True, payload)], (frame, again)
    again = FrameParser(masked=True, max_message=None).feed(encode_frame(opcode, payload, mask=True))
    assert again == [Frame(opcode, True, payload)], (frame, again)
    if opcode == CLOSE:
        try:
            code, reason = parse_close(payload)
        except FrameError as exc:
            assert type(exc) is FrameError and exc.code in (PROTOCOL_ERROR, INVALID_DATA), exc
            return
        if payload:  # a code a peer may send (RFC 6455 §7.4), as websockets lists them
            assert code in EXTERNAL_CLOSE_CODES or 3000 <= code <= 4999, (payload, code)
            assert close_payload(code, reason) == payload, (payload, code, reason)


HARNESS = Harness("frames", cases(), check)
