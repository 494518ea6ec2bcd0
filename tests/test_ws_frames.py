"""ws_frames against RFC 6455 §5 and against websockets' own frame parser, the code it replaces.

The proxy hands the byte stream to `FrameParser` right after the 101, so every byte a peer sends
into the private network passes through it. websockets 17 is the oracle: `websockets.frames.Frame`
for single frames (its `serialize` and its generator `Frame.parse` over a `StreamReader`), and
`websockets.protocol.Protocol` for the rules that span frames (fragmentation, message size).

Where the two deliberately differ (each one is pinned by a test in the last-but-one section and
restated by `as_websockets_sees_it` for the fuzz test):

- A 64-bit length with its top bit set breaks §5.2 and we fail with 1002 on the header;
  websockets does not look at that bit (too big for any max_size, or a wait for 2**63 bytes).
- Control frames do not count toward max_message (the limit is on messages, and a control frame
  is at most 125 bytes); websockets budgets them against what is left of the open message.
- A close frame in the middle of a fragmented message is returned like any other control frame
  (§5.4 lets control frames come between fragments); websockets fails with 1002.
- Close payloads are checked by `parse_close` when the caller gets the frame, not in the parser;
  websockets checks them on receipt and discards everything after a close.
- We check every header rule (reserved bits, control frame rules, continuation order, size)
  as soon as the header is in, websockets some of them only once the payload has arrived, and
  in another order: a frame that breaks two rules may get 1002 from one and 1009 from the other.
- Neither decodes text here: websockets checks UTF-8 when it assembles messages, a layer we do
  not have; the tunnel answers any text message with 1003.
"""

from __future__ import annotations

import contextlib
import os
import random
import struct
from collections.abc import Callable, Iterator

import pytest
from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.frames import Close as WsClose
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side
from websockets.streams import StreamReader
from websockets.utils import apply_mask

from mcp_tunnel.ws_frames import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    Frame,
    FrameError,
    FrameParser,
    close_payload,
    encode_frame,
    frame_header,
    parse_close,
)

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]
CONTROL_SIZES = [n for n in SIZES if n <= 125]
KEY = bytes.fromhex("37fa213d")  # the masking key of RFC 6455 §5.7's examples


# Helpers ------------------------------------------------------------------------------------------


def payload(n: int, salt: int = 0) -> bytes:
    """Deterministic, non-repeating bytes, so a wrong offset or mask shows up as a mismatch."""
    return random.Random(n * 7919 + salt).randbytes(n)


def raw(
    opcode: int,
    data: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    key: bytes | None = None,
    length: int | None = None,
    width: int | None = None,
) -> bytes:
    """A frame byte for byte, including what no correct peer sends (`length` may lie, `width` is
    the length field's size in bits: 7, 16 or 64, the smallest that fits unless given)."""
    n = len(data) if length is None else length
    if width is None:
        width = 7 if n < 126 else 16 if n < 65536 else 64
    b0 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if key is not None else 0
    if width == 7:
        head = bytes((b0, mask_bit | n))
    elif width == 16:
        head = struct.pack("!BBH", b0, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mask_bit | 127, n)
    if key is None:
        return head + data
    return head + key + apply_mask(data, key)


def header_len(frame: bytes) -> int:
    """Bytes before the masking key: all a receiver needs to judge the header."""
    return 2 + {126: 2, 127: 8}.get(frame[1] & 0x7F, 0)


def declared_length(frame: bytes) -> int | None:
    """The payload length a frame's header declares, or None if its length field is not all there."""
    if len(frame) < 2 or len(frame) < header_len(frame):
        return None
    n = frame[1] & 0x7F
    return n if n < 126 else int.from_bytes(frame[2 : header_len(frame)], "big")


def frame_ends(data: bytes) -> Iterator[int]:
    """Where each complete frame of `data` ends, by header arithmetic alone (no rules)."""
    pos = 0
    while (n := declared_length(data[pos : pos + 10])) is not None:
        end = pos + header_len(data[pos:]) + (4 if data[pos + 1] & 0x80 else 0) + n
        if end > len(data):
            return
        yield end
        pos = end


def ws_serialize(opcode: int, data: bytes, *, fin: bool = True, mask: bool) -> bytes:
    return WsFrame(Opcode(opcode), data, fin).serialize(mask=mask, extensions=[])


def ws_parse(data: bytes, *, mask: bool, max_size: int | None = None) -> list[Frame]:
    """Every frame in `data`, by websockets' `Frame.parse`; `data` must end on a frame boundary."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()  # read_exact never waits now: it returns or raises EOFError
    frames: list[Frame] = []
    while reader.buffer:
        parsing = WsFrame.parse(reader.read_exact, mask=mask, max_size=max_size, extensions=[])
        try:
            next(parsing)
        except StopIteration as done:
            f = done.value
            assert not (f.rsv1 or f.rsv2 or f.rsv3)
            frames.append(Frame(int(f.opcode), f.fin, bytes(f.data)))
        else:  # pragma: no cover - only if websockets stops honouring EOF
            raise AssertionError("websockets waits for more data")
    return frames


def ws_outcome(data: bytes, *, masked: bool, max_message: int | None) -> tuple[list[Frame], int | None]:
    """What websockets' Protocol makes of `data` after the handshake: its frames, and the close
    code it fails with (None: it accepted everything, or waits for more)."""
    proto = Protocol(Side.SERVER if masked else Side.CLIENT, max_size=max_message)
    proto.receive_data(data)
    frames = [
        Frame(int(f.opcode), f.fin, bytes(f.data)) for f in proto.events_received() if isinstance(f, WsFrame)
    ]
    exc = proto.parser_exc
    if exc is None:
        return frames, None
    # Anything else (say an AssertionError) would be websockets' own bug, not a verdict.
    assert isinstance(exc, ProtocolError | PayloadTooBig | UnicodeDecodeError), repr(exc)
    assert proto.close_sent is not None
    return frames, proto.close_sent.code


def parse_all(data: bytes, *, masked: bool, max_message: int | None = None) -> list[Frame]:
    """All frames of `data` fed at once, which must leave nothing behind."""
    parser = FrameParser(masked=masked, max_message=max_message)
    frames = parser.feed(data)
    assert parser.buffered == 0
    return frames


def feed_pieces(parser: FrameParser, data: bytes, cuts: list[int]) -> list[Frame]:
    """Feed `data` cut at `cuts`; after each piece `buffered` must be the unfinished frame's bytes."""
    ends = [0, *frame_ends(data)]
    frames: list[Frame] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        got = parser.feed(data[prev:cut])
        assert all(type(f.payload) is bytes for f in got)
        frames += got
        done = ends[len(frames)]  # where the last complete frame ends
        assert parser.buffered == cut - done
        prev = cut
    return frames


# Round trips with websockets ----------------------------------------------------------------------

DATA_CASES = [(op, n) for op in (BINARY, TEXT) for n in SIZES]
CONTROL_CASES = [(op, n) for op in (PING, PONG, CLOSE) for n in CONTROL_SIZES]


@pytest.mark.parametrize("mask", [True, False], ids=["from-client", "from-server"])
@pytest.mark.parametrize(("opcode", "size"), DATA_CASES + CONTROL_CASES)
def test_websockets_frame_parses_with_ours(opcode: int, size: int, mask: bool) -> None:
    """What websockets sends, masked as a client or bare as a server, reads back unchanged."""
    data = payload(size, opcode)
    wire = ws_serialize(opcode, data, mask=mask)
    assert parse_all(wire, masked=mask) == [Frame(opcode, True, data)]


@pytest.mark.parametrize("mask", [True, False], ids=["from-client", "from-server"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("first", [BINARY, TEXT])
def test_websockets_fragmented_message_parses_with_ours(first: int, size: int, mask: bool) -> None:
    """A fragmented message, with control frames between its fragments, keeps order and flags."""
    frames = [
        Frame(first, False, payload(size, 1)),
        Frame(PING, True, b"ping"),
        Frame(CONT, False, payload(size, 2)),
        Frame(CONT, False, b""),
        Frame(PONG, True, b""),
        Frame(CONT, True, payload(size, 3)),
        Frame(BINARY, True, b"next message"),
    ]
    wire = b"".join(ws_serialize(f.opcode, f.payload, fin=f.fin, mask=mask) for f in frames)
    assert parse_all(wire, masked=mask, max_message=3 * size + 12) == frames


@pytest.mark.parametrize(("opcode", "size"), DATA_CASES + CONTROL_CASES)
def test_our_encodings_parse_with_websockets(opcode: int, size: int) -> None:
    """encode_frame either way, and frame_header + payload, are frames websockets reads back."""
    data = payload(size, opcode)
    expected = [Frame(opcode, True, data)]
    masked = encode_frame(opcode, data, mask=True)
    assert ws_parse(masked, mask=True) == expected
    assert ws_parse(encode_frame(opcode, data, mask=False), mask=False) == expected
    assert ws_parse(frame_header(opcode, size) + data, mask=False) == expected
    # The smallest length field that fits (§5.2 requires it), plus the key when masked.
    assert len(masked) == header_len(masked) + 4 + size
    assert header_len(masked) == (2 if size < 126 else 4 if size < 65536 else 10)


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, "8200"),
        (125, "827d"),
        (126, "827e007e"),
        (65535, "827effff"),
        (65536, "827f0000000000010000"),
        (2**32, "827f0000000100000000"),
    ],
)
def test_frame_header_bytes(size: int, header: str) -> None:
    """The length field switches from 7 to 16 to 64 bits exactly at 126 and 65536."""
    assert frame_header(BINARY, size) == bytes.fromhex(header)


def test_rfc_examples() -> None:
    """RFC 6455 §5.7's example frames, independent of websockets."""
    client = FrameParser(masked=True, max_message=None)
    assert client.feed(bytes.fromhex("818537fa213d7f9f4d5158")) == [Frame(TEXT, True, b"Hello")]
    assert client.feed(bytes.fromhex("8a8537fa213d7f9f4d5158")) == [Frame(PONG, True, b"Hello")]
    server = FrameParser(masked=False, max_message=None)
    assert server.feed(bytes.fromhex("810548656c6c6f")) == [Frame(TEXT, True, b"Hello")]
    assert server.feed(bytes.fromhex("010348656c80026c6f")) == [
        Frame(TEXT, False, b"Hel"),
        Frame(CONT, True, b"lo"),
    ]
    assert server.feed(bytes.fromhex("890548656c6c6f")) == [Frame(PING, True, b"Hello")]
    assert server.feed(bytes.fromhex("827e0100") + bytes(256)) == [Frame(BINARY, True, bytes(256))]


def test_encode_frame_masks_with_a_fresh_key_per_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each masked frame asks for its own 4 random bytes (§5.3) and applies them as in §5.7."""
    keys = [KEY, bytes(4), b"\xff" * 4]
    asked: list[int] = []

    def urandom(n: int) -> bytes:
        asked.append(n)
        return keys[len(asked) - 1]

    monkeypatch.setattr(os, "urandom", urandom)  # what ws_frames.encode_frame looks up
    assert encode_frame(TEXT, b"Hello", mask=True) == bytes.fromhex("818537fa213d7f9f4d5158")
    assert encode_frame(BINARY, b"ab", mask=True) == bytes.fromhex("8282000000006162")
    assert encode_frame(BINARY, b"ab", mask=True) == bytes.fromhex("8282ffffffff9e9d")
    assert asked == [4, 4, 4]
    assert encode_frame(BINARY, b"ab", mask=False) == b"\x82\x02ab"
    assert asked == [4, 4, 4]  # no key for an unmasked frame


# Feeding in every split ---------------------------------------------------------------------------


def stream_frames() -> list[Frame]:
    """Several frames across all three length forms, a fragmented message and control frames."""
    return [
        Frame(BINARY, True, b""),
        Frame(BINARY, True, payload(1)),
        Frame(PING, True, payload(125)),
        Frame(BINARY, False, payload(126)),
        Frame(PONG, True, b""),
        Frame(CONT, False, payload(127)),
        Frame(CONT, True, payload(3)),
        Frame(TEXT, True, payload(65536)),
        Frame(BINARY, True, payload(65535)),
        Frame(CLOSE, True, close_payload(1000, "bye")),
    ]


def encode_stream(frames: list[Frame], *, mask: bool) -> bytes:
    return b"".join(ws_serialize(f.opcode, f.payload, fin=f.fin, mask=mask) for f in frames)


@pytest.mark.parametrize("mask", [True, False], ids=["from-client", "from-server"])
def test_one_byte_at_a_time(mask: bool) -> None:
    """Every header and payload boundary falls between two feeds somewhere in the stream."""
    frames = stream_frames()
    wire = encode_stream(frames, mask=mask)
    parser = FrameParser(masked=mask, max_message=None)
    assert feed_pieces(parser, wire, list(range(1, len(wire)))) == frames


@pytest.mark.parametrize("mask", [True, False], ids=["from-client", "from-server"])
def test_random_pieces(mask: bool) -> None:
    """Pieces from 1 byte to larger than a frame, 40 seeded cuttings of the same stream."""
    frames = stream_frames()
    wire = encode_stream(frames, mask=mask)
    rng = random.Random(6455)
    for _ in range(40):
        cuts, pos = [], 0
        while True:
            pos += int(2 ** rng.uniform(0, 17))  # log-uniform: as many tiny pieces as huge ones
            if pos >= len(wire):
                break
            cuts.append(pos)
        parser = FrameParser(masked=mask, max_message=None)
        assert feed_pieces(parser, wire, cuts) == frames


@pytest.mark.parametrize("mask", [True, False], ids=["from-client", "from-server"])
def test_all_at_once_and_every_single_cut(mask: bool) -> None:
    """A short stream cut once at every offset (and not at all) always gives the same frames."""
    frames = [f for f in stream_frames() if len(f.payload) < 1000]
    head = encode_stream(frames, mask=mask)
    big = encode_stream([Frame(BINARY, True, payload(70000))], mask=mask)
    assert parse_all(head + big, masked=mask) == [*frames, Frame(BINARY, True, payload(70000))]
    short = head + big[:20]  # ends inside a frame, past its header
    for cut in range(len(short) + 1):
        parser = FrameParser(masked=mask, max_message=None)
        assert feed_pieces(parser, short, [cut]) == frames


def test_empty_feeds_change_nothing() -> None:
    """An empty read between two halves of a header neither loses nor invents bytes."""
    wire = raw(BINARY, payload(300))
    parser = FrameParser(masked=False, max_message=None)
    assert parser.feed(b"") == []
    assert parser.feed(wire[:3]) == []
    assert parser.feed(b"") == []
    assert parser.buffered == 3
    assert parser.feed(wire[3:]) == [Frame(BINARY, True, payload(300))]
    assert parser.feed(b"") == []
    assert parser.buffered == 0


# buffered -----------------------------------------------------------------------------------------


def test_buffered_reports_the_held_tail() -> None:
    """`buffered` is exactly the bytes of the frame not yet complete, whichever form it is in."""
    parser = FrameParser(masked=True, max_message=None)
    assert parser.buffered == 0
    one, big = raw(BINARY, b"abc", key=KEY), raw(BINARY, payload(70000), key=KEY)
    assert parser.feed(one[:1]) == []
    assert parser.buffered == 1
    assert parser.feed(one[1:] + big[:5]) == [Frame(BINARY, True, b"abc")]
    assert parser.buffered == 5  # inside the 64-bit length field
    assert parser.feed(big[5:14]) == []
    assert parser.buffered == 14  # header and key, no payload yet
    assert parser.feed(big[14:-1]) == []
    assert parser.buffered == len(big) - 1
    assert parser.feed(big[-1:] + one) == [Frame(BINARY, True, payload(70000)), Frame(BINARY, True, b"abc")]
    assert parser.buffered == 0


# Every rule ---------------------------------------------------------------------------------------

# Each case builds the frames of a stream from the masking key a sender on this side uses (None for
# a server); the last frame breaks one rule. (id, frames, max_message, close code)
Case = tuple[str, Callable[[bytes | None], list[bytes]], int | None, int]

RULES: list[Case] = [
    ("rsv1", lambda k: [raw(BINARY, b"x", rsv=0x40, key=k)], None, 1002),
    ("rsv2", lambda k: [raw(BINARY, b"x", rsv=0x20, key=k)], None, 1002),
    ("rsv3", lambda k: [raw(BINARY, b"x", rsv=0x10, key=k)], None, 1002),
    ("rsv-on-ping", lambda k: [raw(PING, b"x", rsv=0x40, key=k)], None, 1002),
    (
        "rsv-on-continuation",
        lambda k: [raw(TEXT, b"a", fin=False, key=k), raw(CONT, rsv=0x10, key=k)],
        None,
        1002,
    ),
    *[(f"opcode-{op:#x}", lambda k, op=op: [raw(op, b"x", key=k)], None, 1002) for op in range(3, 8)],
    *[(f"opcode-{op:#x}", lambda k, op=op: [raw(op, b"x", key=k)], None, 1002) for op in range(0xB, 0x10)],
    ("fragmented-ping", lambda k: [raw(PING, b"p", fin=False, key=k)], None, 1002),
    ("fragmented-pong", lambda k: [raw(PONG, fin=False, key=k)], None, 1002),
    ("fragmented-close", lambda k: [raw(CLOSE, close_payload(1000), fin=False, key=k)], None, 1002),
    ("ping-126", lambda k: [raw(PING, bytes(126), key=k)], None, 1002),
    ("pong-65536", lambda k: [raw(PONG, bytes(65536), key=k)], None, 1002),
    ("close-126", lambda k: [raw(CLOSE, close_payload(1000, "x" * 124), key=k)], None, 1002),
    ("continuation-first", lambda k: [raw(CONT, b"x", key=k)], None, 1002),
    ("continuation-after-message", lambda k: [raw(BINARY, b"a", key=k), raw(CONT, b"b", key=k)], None, 1002),
    (
        "continuation-after-last-fragment",
        lambda k: [raw(BINARY, b"a", fin=False, key=k), raw(CONT, b"b", key=k), raw(CONT, b"c", key=k)],
        None,
        1002,
    ),
    (
        "binary-inside-message",
        lambda k: [raw(BINARY, b"a", fin=False, key=k), raw(BINARY, b"b", key=k)],
        None,
        1002,
    ),
    (
        "text-inside-message",
        lambda k: [raw(BINARY, b"a", fin=False, key=k), raw(TEXT, b"b", key=k)],
        None,
        1002,
    ),
    (
        "binary-inside-message-after-ping",
        lambda k: [raw(TEXT, b"a", fin=False, key=k), raw(PING, key=k), raw(BINARY, fin=False, key=k)],
        None,
        1002,
    ),
    ("length-top-bit", lambda k: [raw(BINARY, key=k, length=1 << 63)], None, 1002),
    ("length-all-ones", lambda k: [raw(BINARY, key=k, length=2**64 - 1)], None, 1002),
    ("too-big", lambda k: [raw(BINARY, bytes(11), key=k)], 10, 1009),
    ("too-big-text", lambda k: [raw(TEXT, bytes(11), key=k)], 10, 1009),
    ("too-big-zero-limit", lambda k: [raw(BINARY, b"x", key=k)], 0, 1009),
    ("too-big-16-bit", lambda k: [raw(BINARY, bytes(65535), key=k)], 65534, 1009),
    ("too-big-64-bit", lambda k: [raw(BINARY, bytes(65537), key=k)], 65536, 1009),
    ("too-big-first-fragment", lambda k: [raw(BINARY, bytes(11), fin=False, key=k)], 10, 1009),
    (
        "too-big-across-fragments",
        lambda k: [
            raw(BINARY, bytes(6), fin=False, key=k),
            raw(PING, key=k),  # empty: websockets would charge a payload to the message
            raw(CONT, bytes(4), fin=False, key=k),
            raw(CONT, bytes(1), key=k),
        ],
        10,
        1009,
    ),
    (
        "too-big-in-the-second-message",
        lambda k: [
            raw(BINARY, bytes(6), fin=False, key=k),
            raw(CONT, bytes(4), key=k),
            raw(BINARY, bytes(11), key=k),
        ],
        10,
        1009,
    ),
]


@pytest.fixture(params=[True, False], ids=["from-client", "from-server"])
def side(request: pytest.FixtureRequest) -> bool:
    """Whether the peer is a client (frames must be masked) or a server (frames must not be)."""
    return bool(request.param)


def check_rule(frames: list[bytes], masked: bool, max_message: int | None, code: int) -> None:
    """The stream fails with `code` all at once, one byte at a time, and on the header alone."""
    data = b"".join(frames)
    with pytest.raises(FrameError) as failure:
        FrameParser(masked=masked, max_message=max_message).feed(data)
    assert failure.value.code == code
    assert failure.value.reason
    # The last frame's header (no masking key, no payload) is enough: a peer cannot make us
    # wait for, or buffer, a payload that could never be allowed.
    early = data[: len(data) - len(frames[-1]) + header_len(frames[-1])]
    parser = FrameParser(masked=masked, max_message=max_message)
    for i in range(len(early) - 1):
        parser.feed(early[i : i + 1])
    with pytest.raises(FrameError) as failure:
        parser.feed(early[-1:])
    assert failure.value.code == code


@pytest.mark.parametrize(("frames", "max_message", "code"), [c[1:] for c in RULES], ids=[c[0] for c in RULES])
def test_rule(
    frames: Callable[[bytes | None], list[bytes]], max_message: int | None, code: int, side: bool
) -> None:
    """Each broken rule fails with its close code, and websockets fails the same bytes the same way."""
    pieces = frames(KEY if side else None)
    check_rule(pieces, side, max_message, code)
    if (declared_length(pieces[-1]) or 0) >= 1 << 63:
        return  # the length's top bit: websockets waits for 2**63 bytes (see the differences below)
    assert ws_outcome(b"".join(pieces), masked=side, max_message=max_message)[1] == code


@pytest.mark.parametrize("opcode", [BINARY, PING, CLOSE])
def test_masking_must_match_the_side(opcode: int) -> None:
    """A client that does not mask, or a server that does, is failed with 1002 (§5.1)."""
    check_rule([raw(opcode, b"", key=None)], True, None, 1002)
    check_rule([raw(opcode, b"", key=KEY)], False, None, 1002)
    check_rule([raw(BINARY, b"ok", key=KEY), raw(opcode, b"", key=None)], True, None, 1002)
    check_rule([raw(BINARY, b"ok"), raw(opcode, b"", key=KEY)], False, None, 1002)
    assert ws_outcome(raw(opcode, key=None), masked=True, max_message=None)[1] == 1002
    assert ws_outcome(raw(opcode, key=KEY), masked=False, max_message=None)[1] == 1002


def test_what_the_rules_allow(side: bool) -> None:
    """The edge just inside each rule: these must not fail (so the rule tests can't pass by accident)."""
    k = KEY if side else None
    frames = [
        raw(PING, bytes(125), key=k),
        raw(CLOSE, close_payload(1000, "x" * 123), key=k),
        raw(PONG, b"", key=k, width=16),  # a needlessly long length field is still a length
        raw(BINARY, bytes(10), key=k),
        raw(TEXT, bytes(4), fin=False, key=k),
        raw(PING, b"in between", key=k),
        raw(CONT, bytes(3), fin=False, key=k),
        raw(CONT, bytes(3), key=k, width=64),
        raw(BINARY, bytes(10), fin=False, key=k),
        raw(CONT, b"", key=k),
    ]
    got = parse_all(b"".join(frames), masked=side, max_message=10)
    assert [(f.opcode, f.fin, len(f.payload)) for f in got] == [
        (PING, True, 125),
        (CLOSE, True, 125),
        (PONG, True, 0),
        (BINARY, True, 10),
        (TEXT, False, 4),
        (PING, True, 10),
        (CONT, False, 3),
        (CONT, True, 3),
        (BINARY, False, 10),
        (CONT, True, 0),
    ]


def test_max_message_none_is_unbounded() -> None:
    """No limit: big frames and big fragmented messages pass, and a huge header just waits."""
    frames = [raw(BINARY, payload(70000), fin=False), raw(CONT, payload(65536)), raw(BINARY, payload(70000))]
    got = parse_all(b"".join(frames), masked=False, max_message=None)
    assert [len(f.payload) for f in got] == [70000, 65536, 70000]
    parser = FrameParser(masked=False, max_message=None)
    assert parser.feed(raw(BINARY, length=(1 << 63) - 1)) == []
    assert parser.buffered == 10


def test_too_big_is_judged_on_the_header_before_any_payload() -> None:
    """1009 comes with the length field, not after buffering up to a gigabyte of payload."""
    parser = FrameParser(masked=True, max_message=1 << 20)
    assert parser.feed(raw(BINARY, bytes(1 << 19), fin=False, key=KEY)) != []
    with pytest.raises(FrameError) as failure:
        parser.feed(raw(CONT, key=KEY, length=1 << 30)[:10])
    assert failure.value.code == 1009


# parse_close and close_payload --------------------------------------------------------------------


def test_parse_close_empty_is_no_status() -> None:
    assert parse_close(b"") == (1005, "")


def test_parse_close_one_byte_is_a_protocol_error() -> None:
    with pytest.raises(FrameError) as failure:
        parse_close(b"\x03")
    assert failure.value.code == 1002


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_parse_close_invalid_codes(code: int) -> None:
    """Reserved, internal-only (1005, 1006, 1015) and unassigned codes may not be sent (§7.4)."""
    with pytest.raises(FrameError) as failure:
        parse_close(struct.pack("!H", code) + b"reason")
    assert failure.value.code == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1014, 3000, 4999])
def test_parse_close_valid_codes(code: int) -> None:
    assert parse_close(struct.pack("!H", code)) == (code, "")
    assert parse_close(close_payload(code, "why")) == (code, "why")


def test_parse_close_agrees_with_websockets_on_every_code() -> None:
    """All 65536 codes: we accept exactly the codes websockets' Close.parse accepts."""
    ours, theirs = set(), set()
    for code in range(65536):
        data = struct.pack("!H", code)
        with contextlib.suppress(FrameError):
            ours.add(parse_close(data)[0])
        with contextlib.suppress(ProtocolError):
            theirs.add(WsClose.parse(data).code)
    assert ours == theirs
    assert len(ours) == 12 + 2000  # 1000-1003, 1007-1014, and 3000-4999


@pytest.mark.parametrize(
    "reason",
    [b"\xff", b"\xc3", b"ok\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"],
    ids=["ff", "truncated-2", "truncated-3", "overlong", "surrogate", "above-10ffff", "lone-continuation"],
)
def test_parse_close_reason_must_be_utf8(reason: bytes) -> None:
    """A reason that is not UTF-8 fails with 1007 (§8.1), as websockets' UnicodeDecodeError does."""
    with pytest.raises(FrameError) as failure:
        parse_close(b"\x03\xe8" + reason)
    assert failure.value.code == 1007
    with pytest.raises(UnicodeDecodeError):
        WsClose.parse(b"\x03\xe8" + reason)


@pytest.mark.parametrize("reason", ["", "bye", "d\u00e9j\u00e0 vu", "\U0001f512" * 30])
def test_close_payload_round_trip(reason: str) -> None:
    """What we send is what we (and websockets) read back, up to the 123 bytes a reason can have."""
    data = close_payload(1001, reason)
    assert len(data) <= 125
    assert parse_close(data) == (1001, reason)
    assert WsClose.parse(data) == WsClose(1001, reason)
    assert parse_all(encode_frame(CLOSE, data, mask=True), masked=True) == [Frame(CLOSE, True, data)]


# Where we differ from websockets, on purpose ------------------------------------------------------


def test_difference_length_top_bit() -> None:
    """§5.2: "the most significant bit MUST be 0". We fail on the header; websockets only
    compares the length with max_size, so without one it would wait for 2**63 bytes."""
    header = raw(BINARY, key=KEY, length=1 << 63)
    check_rule([header], True, None, 1002)
    assert ws_outcome(header, masked=True, max_message=None) == ([], None)
    assert ws_outcome(header, masked=True, max_message=1 << 20)[1] == 1009


def test_difference_control_frames_are_outside_max_message() -> None:
    """A ping in a message that is already at the limit is fine here (the limit is on messages);
    websockets charges it to the message and fails with 1009."""
    frames = [raw(BINARY, bytes(10), fin=False, key=KEY), raw(PING, b"p", key=KEY), raw(CONT, key=KEY)]
    data = b"".join(frames)
    assert [f.opcode for f in parse_all(data, masked=True, max_message=10)] == [BINARY, PING, CONT]
    assert ws_outcome(data, masked=True, max_message=10) == ([Frame(BINARY, False, bytes(10))], 1009)


def test_difference_close_inside_a_fragmented_message() -> None:
    """§5.4 lets control frames come between fragments; the close frame is returned (the tunnel
    stops there anyway), where websockets fails with 1002 "incomplete fragmented message"."""
    data = raw(BINARY, b"a", fin=False) + raw(CLOSE, close_payload(1000))
    assert parse_all(data, masked=False) == [
        Frame(BINARY, False, b"a"),
        Frame(CLOSE, True, close_payload(1000)),
    ]
    assert ws_outcome(data, masked=False, max_message=None) == ([Frame(BINARY, False, b"a")], 1002)
    # Like any control frame, it neither ends the message nor counts toward its size.
    more = raw(CONT, b"bc") + raw(BINARY, b"d")
    got = parse_all(data + more, masked=False, max_message=3)
    assert got[2:] == [Frame(CONT, True, b"bc"), Frame(BINARY, True, b"d")]


def test_difference_frames_after_close_are_still_parsed() -> None:
    """Stopping after a close is the caller's job; websockets discards what follows."""
    data = raw(CLOSE) + raw(BINARY, b"late")
    assert parse_all(data, masked=False) == [Frame(CLOSE, True, b""), Frame(BINARY, True, b"late")]
    assert ws_outcome(data, masked=False, max_message=None) == ([Frame(CLOSE, True, b"")], None)


def test_difference_text_is_not_decoded() -> None:
    """Neither parser decodes text frames; websockets does it in its message assembler."""
    data = raw(TEXT, b"\xff\xfe", key=KEY)
    assert parse_all(data, masked=True) == [Frame(TEXT, True, b"\xff\xfe")]
    assert ws_outcome(data, masked=True, max_message=None) == ([Frame(TEXT, True, b"\xff\xfe")], None)


def test_difference_rule_order() -> None:
    """A frame that breaks two rules: we see the reserved bit first, websockets the size."""
    data = raw(BINARY, bytes(11), rsv=0x40, key=KEY)
    check_rule([data], True, 10, 1002)
    assert ws_outcome(data, masked=True, max_message=10)[1] == 1009


# Fuzz ---------------------------------------------------------------------------------------------

CLOSE_CODES = [1000, 1001, 1005, 1006, 1011, 1015, 999, 3000, 4999, 5000]
CLOSE_REASONS = [b"", b"bye", "\u00e9t\u00e9".encode(), b"\xff", b"\xe2\x82"]


def random_frame(rng: random.Random, masked: bool, in_message: bool) -> tuple[bytes, bool]:
    """A frame that is mostly legal where it stands, with each field now and then wrong; and
    whether a fragmented message is open after it."""
    roll = rng.random()
    if roll < 0.25:
        opcode = rng.choice([PING, PONG, PING, PONG, CLOSE])
    elif roll < 0.85:
        opcode = CONT if in_message else rng.choice([TEXT, BINARY])
    elif roll < 0.95:
        opcode = rng.choice([CONT, TEXT, BINARY])  # half the time out of order
    else:
        opcode = rng.randrange(16)
    fin = rng.random() < (0.97 if opcode >= CLOSE else 0.7)
    if opcode == CLOSE and rng.random() < 0.7:
        data = struct.pack("!H", rng.choice(CLOSE_CODES)) + rng.choice(CLOSE_REASONS)
    else:
        sizes = (
            [0, 1, 7, 60, 125, 125, 126] if opcode >= CLOSE else [0, 1, 2, 7, 60, 125, 126, 127, 200, 1000]
        )
        data = rng.randbytes(rng.choice(sizes))
    n = len(data)
    minimal = 7 if n < 126 else 16 if n < 65536 else 64
    width = rng.choice([w for w in (7, 16, 64) if w >= minimal]) if rng.random() < 0.1 else minimal
    length = None
    if rng.random() < 0.005:
        length, width = n | (1 << 63), 64
    frame = raw(
        opcode,
        data,
        fin=fin,
        rsv=rng.choice([0x10, 0x20, 0x40]) if rng.random() < 0.02 else 0,
        key=KEY if masked != (rng.random() < 0.015) else None,
        length=length,
        width=width,
    )
    return frame, (not fin if opcode in (CONT, TEXT, BINARY) else in_message)


def random_stream(rng: random.Random, masked: bool) -> bytes:
    """A few frames, then sometimes a flipped byte, a cut, or trailing noise; or just noise."""
    if rng.random() < 0.1:
        return rng.randbytes(rng.randint(0, 30))
    data, in_message = bytearray(), False
    for _ in range(rng.randint(1, 6)):
        frame, in_message = random_frame(rng, masked, in_message)
        data += frame
    roll = rng.random()
    if roll < 0.1:
        data[rng.randrange(len(data))] ^= rng.randint(1, 255)
    elif roll < 0.2:
        del data[rng.randrange(len(data)) :]
    elif roll < 0.25:
        data += rng.randbytes(rng.randint(1, 20))
    return bytes(data)


def our_outcome(data: bytes, *, masked: bool, max_message: int | None) -> tuple[list[Frame], int | None, int]:
    """Our frames, our close code (None: no error) and where the frame we stopped in starts.

    Fed frame by frame so the frames before an error are known; fed at once it must agree.
    """
    parser = FrameParser(masked=masked, max_message=max_message)
    frames: list[Frame] = []
    code, start = None, 0
    try:
        for end in frame_ends(data):
            frames += parser.feed(data[start:end])
            start = end
        frames += parser.feed(data[start:])
    except FrameError as exc:
        code = exc.code
    else:
        assert parser.buffered == len(data) - start
    try:
        at_once = FrameParser(masked=masked, max_message=max_message).feed(data)
    except FrameError as exc:
        assert exc.code == code
    else:
        assert (at_once, None) == (frames, code)
    return frames, code, start


def as_websockets_sees_it(
    frames: list[Frame], code: int | None, tail: bytes, max_message: int | None
) -> tuple[list[Frame], bool]:
    """Our outcome restated with websockets' policies (module docstring): (frames, rejected).

    `tail` is what we hold of an unfinished frame: websockets fails a control frame on its
    length alone when that is over what is left of max_message.
    """
    seen: list[Frame] = []
    open_size = 0  # size so far of an open fragmented message
    in_message = False
    for f in frames:
        if f.opcode >= CLOSE:
            if max_message is not None and len(f.payload) > max_message - open_size:
                return seen, True
            if f.opcode == CLOSE:
                try:
                    parse_close(f.payload)
                except FrameError:
                    return seen, True
                return (seen, True) if in_message else ([*seen, f], False)
        else:
            in_message = not f.fin
            open_size = open_size + len(f.payload) if in_message else 0
        seen.append(f)
    if code is None and max_message is not None and tail and tail[0] & 0x0F >= CLOSE:
        n = declared_length(tail)
        if n is not None and n > max_message - open_size:
            return seen, True
    return seen, code is not None


def completion(tail: bytes, max_message: int) -> bytes:
    """Zero bytes that complete the frame `tail` begins: its header, then its payload unless the
    length alone is already over max_message."""
    head = header_len(tail) + (4 if tail[1] & 0x80 else 0)
    full = tail + bytes(max(0, head - len(tail)))
    n = declared_length(full)
    assert n is not None
    if n > max_message:
        return full[len(tail) :]
    return full[len(tail) :] + bytes(head + n - len(full))


def test_fuzz_agrees_with_websockets() -> None:
    """2000 seeded streams: both parsers accept the same frames, or both reject.

    When we fail on a header whose payload has not arrived, websockets may still be waiting
    for it (it checks some rules only after the payload); the frame is then completed with
    zero bytes, and websockets must fail on it too.
    """
    rng = random.Random(20240611)
    tally = {"accepted": 0, "rejected": 0, "completed": 0}
    for i in range(2000):
        masked = rng.random() < 0.5
        max_message = rng.choice([0, 10, 200, 1000, 3000, 1 << 16, 1 << 16, 1 << 16])
        data = random_stream(rng, masked)
        frames, code, start = our_outcome(data, masked=masked, max_message=max_message)
        expected, rejected = as_websockets_sees_it(frames, code, data[start:], max_message)
        theirs, their_code = ws_outcome(data, masked=masked, max_message=max_message)
        where = f"case {i}: masked={masked} max_message={max_message} data={data.hex()}"
        assert theirs == expected, where
        if rejected and their_code is None:
            assert code is not None, where
            tally["completed"] += 1
            padded = data + completion(data[start:], max_message)
            theirs, their_code = ws_outcome(padded, masked=masked, max_message=max_message)
            assert theirs == expected, where
        assert (their_code is not None) == rejected, where
        tally["rejected" if rejected else "accepted"] += 1
    # Both verdicts, and the completed case, must be common, or the comparison proves little.
    assert tally["accepted"] > 500, tally
    assert tally["rejected"] > 800, tally
    assert tally["completed"] > 20, tally


# What a broken rule says -----------------------------------------------------------------------------


def rule_reason(case_id: str, max_message: int | None) -> str:
    """The close reason each rule's refusal carries: it goes out in the close frame we answer with."""
    if case_id.startswith("rsv"):
        return "reserved bits must be 0"
    if case_id.startswith("opcode-"):
        return f"invalid opcode {int(case_id.removeprefix('opcode-'), 16):#x}"
    if case_id.startswith("fragmented-"):
        return "fragmented control frame"
    if case_id in ("ping-126", "pong-65536", "close-126"):
        return "control frame too long"
    if case_id.startswith("continuation-"):
        return "unexpected continuation frame"
    if "-inside-message" in case_id:
        return "expected a continuation frame"
    if case_id.startswith("length-"):
        return "frame length has its top bit set"
    assert case_id.startswith("too-big"), case_id
    return f"message over {max_message} bytes"


@pytest.mark.parametrize(("case_id", "frames", "max_message", "code"), RULES, ids=[c[0] for c in RULES])
def test_rule_reason(
    case_id: str,
    frames: Callable[[bytes | None], list[bytes]],
    max_message: int | None,
    code: int,
    side: bool,
) -> None:
    with pytest.raises(FrameError) as failure:
        FrameParser(masked=side, max_message=max_message).feed(b"".join(frames(KEY if side else None)))
    error = failure.value
    assert (error.code, error.reason, str(error)) == (code, rule_reason(case_id, max_message), error.reason)


@pytest.mark.parametrize("masked", [True, False])
def test_masking_reason(masked: bool) -> None:
    with pytest.raises(FrameError) as failure:
        FrameParser(masked=masked, max_message=None).feed(raw(BINARY, b"x", key=None if masked else KEY))
    assert (failure.value.code, str(failure.value)) == (1002, "incorrect masking")


@pytest.mark.parametrize(
    ("payload_", "code", "reason"),
    [
        (b"\x03", 1002, "close frame too short"),
        (struct.pack("!H", 999), 1002, "invalid close code 999"),
        (struct.pack("!H", 1005), 1002, "invalid close code 1005"),
        (struct.pack("!H", 1000) + b"\xff", 1007, "close reason is not UTF-8"),
    ],
)
def test_parse_close_reasons(payload_: bytes, code: int, reason: str) -> None:
    with pytest.raises(FrameError) as failure:
        parse_close(payload_)
    assert (failure.value.code, failure.value.reason, str(failure.value)) == (code, reason, reason)


def test_close_payload_without_a_reason_is_the_code_alone() -> None:
    assert close_payload(1000) == b"\x03\xe8"
    assert close_payload(1001, "bye") == b"\x03\xe9bye"


def test_a_continuation_counts_toward_the_message_after_a_finished_one() -> None:
    """The size of a message starts again at each new message, whatever the last one's was."""
    parser = FrameParser(masked=False, max_message=10)
    frames = parser.feed(raw(BINARY, bytes(8)) + raw(BINARY, bytes(2), fin=False) + raw(CONT, bytes(8)))
    assert [(f.opcode, f.fin, len(f.payload)) for f in frames] == [
        (BINARY, True, 8),
        (BINARY, False, 2),
        (CONT, True, 8),
    ]
    with pytest.raises(FrameError) as failure:
        parser.feed(raw(BINARY, bytes(2), fin=False) + raw(CONT, bytes(9)))
    assert failure.value.code == 1009


def test_a_refused_stream_holds_no_bytes() -> None:
    """After a FrameError the parser keeps nothing of what it was fed (the tunnel is closing)."""
    parser = FrameParser(masked=False, max_message=None)
    assert parser.feed(raw(BINARY, b"abc")[:1]) == [] and parser.buffered == 1
    with pytest.raises(FrameError):
        parser.feed(raw(BINARY, b"abc")[1:] + raw(BINARY, b"x", rsv=0x40))
    assert parser.buffered == 0
