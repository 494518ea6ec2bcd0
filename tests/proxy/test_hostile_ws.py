"""Hostile WebSocket peers (issue #17), against the compiled and the pure build.

Broken framing right after the 101 and in the middle of a live session, then a seeded random
mutation fuzz of frame streams. The oracle: a close with the code the proxy documents for that
fault (1002 broken framing, 1003 text, 1007 a close reason that is not UTF-8, 1009 too big), the
TCP side ended at once, and `HostileProxy.finish` (a normal answer afterwards, nothing but log
lines on stderr, a clean exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from mcp_tunnel.client import client_ssl_context
from mcp_tunnel.ws_frames import BINARY, CLOSE, CONT, PING, PONG, TEXT, FrameError, FrameParser, parse_close
from support.hostile import PROMPT, HostileProxy, StartProxy
from support.rawtunnel import PEER_FAULT_CODES, RawTunnel, close_frame, frame

MIB = 1 << 20

# (bytes a client sends, the close code the proxy must answer with)
BROKEN: dict[str, tuple[bytes, int]] = {
    "http-after-101": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1002),  # 'G': reserved bits set
    "zeros-after-101": (b"\x00" * 64, 1002),  # a continuation, unmasked
    "opcode-0x3": (frame(0x3, b"x"), 1002),
    "opcode-0x7": (frame(0x7, b""), 1002),
    "opcode-0xb": (frame(0xB, b"x"), 1002),
    "opcode-0xf": (frame(0xF, b""), 1002),
    "unmasked-binary": (frame(BINARY, b"\x16\x03\x01", mask=False), 1002),
    "unmasked-close": (frame(CLOSE, struct.pack("!H", 1000), mask=False), 1002),
    "rsv1": (frame(BINARY, b"x", rsv=4), 1002),
    "rsv2": (frame(BINARY, b"x", rsv=2), 1002),
    "rsv3-ping": (frame(PING, b"x", rsv=1), 1002),
    "length-2**40": (frame(BINARY, b"", length=1 << 40), 1009),
    "length-top-bit": (frame(BINARY, b"", length=1 << 63), 1002),
    "length-1MiB+1": (frame(BINARY, b"", length=MIB + 1), 1009),
    "fragments-over-1MiB": (
        frame(BINARY, b"\0" * (MIB // 2), fin=False) + frame(CONT, b"", length=MIB),
        1009,
    ),
    "fragmented-ping": (frame(PING, b"x", fin=False), 1002),
    "fragmented-close": (frame(CLOSE, struct.pack("!H", 1000), fin=False), 1002),
    "ping-126-bytes": (frame(PING, b"p" * 126), 1002),
    "pong-length-65536": (frame(PONG, b"", length=65536), 1002),
    "continuation-first": (frame(CONT, b"x"), 1002),
    "binary-inside-fragmented": (frame(BINARY, b"", fin=False) + frame(BINARY, b"x"), 1002),
    "close-1-byte": (frame(CLOSE, b"\x03"), 1002),
    "close-code-999": (close_frame(999), 1002),
    "close-code-1005": (close_frame(1005), 1002),
    "close-code-1006": (close_frame(1006), 1002),
    "close-code-1015": (close_frame(1015), 1002),
    "close-code-5000": (close_frame(5000), 1002),
    "close-reason-not-utf8": (close_frame(1000, b"\xff\xfe"), 1007),
    "text": (frame(TEXT, b"hello"), 1003),
    "text-fragments": (frame(TEXT, b"hel", fin=False) + frame(CONT, b"lo"), 1003),
}


async def _assert_closed_with(tunnel: RawTunnel, code: int) -> None:
    ended = await tunnel.ended(PROMPT)
    assert ended, f"the proxy did not end the tunnel within {PROMPT}s: {tunnel.summary()}"
    assert tunnel.frame_error is None, tunnel.summary()
    assert tunnel.close_code == code, tunnel.summary()


@pytest.mark.parametrize("case", list(BROKEN))
async def test_broken_framing_right_after_the_101(shared_proxy: HostileProxy, case: str) -> None:
    data, code = BROKEN[case]
    since = shared_proxy.begin()
    tunnel = await shared_proxy.opened()
    tunnel.write(data)
    await _assert_closed_with(tunnel, code)
    await shared_proxy.check(since)


@pytest.mark.parametrize("case", list(BROKEN))
async def test_broken_framing_in_a_live_session(shared_proxy: HostileProxy, case: str) -> None:
    """After a TLS handshake and an answered request: the same faults, the same closes."""
    data, code = BROKEN[case]
    since = shared_proxy.begin()
    tunnel = await shared_proxy.tunnel()
    tunnel.send_plain(b"GET /first HTTP/1.1\r\nHost: " + shared_proxy.host().encode() + b"\r\n\r\n")
    assert [r.status for r in await tunnel.responses(["GET"], PROMPT)] == [200], tunnel.summary()
    tunnel.write(data)
    await _assert_closed_with(tunnel, code)
    await shared_proxy.check(since)


async def test_broken_framing_with_a_request_in_flight(hostile: StartProxy) -> None:
    """A protocol error while a request body is still on its way upstream ends that exchange too,
    and leaves nothing behind."""
    proxy = hostile()
    assert proxy.healthy is not None
    seen = proxy.healthy.mark()
    tunnel = await proxy.tunnel()
    head = (
        b"POST /upload-in-flight HTTP/1.1\r\nHost: %s\r\nContent-Length: 100\r\n\r\n" % proxy.host().encode()
    )
    tunnel.send_plain(head + b"0123456789")
    assert await proxy.healthy_saw(b"/upload-in-flight", seen), "the head never reached the upstream"
    tunnel.write(frame(0x3, b"x"))
    await _assert_closed_with(tunnel, 1002)
    await proxy.finish()


# --- the fuzz -------------------------------------------------------------------------------------

FUZZ_SEED = 17
FUZZ_CASES = 200  # per build
FUZZ_BUDGET = 30.0  # seconds per build at most: past it, no new case starts
FUZZ_PARALLEL = 8


def _client_hello() -> bytes:
    """A real ClientHello record: the first bytes a tunnel carries, so mutations reach TLS."""
    ctx = client_ssl_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="ok.tunnel.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@dataclass
class _Frame:
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    mask: bool = True
    length: int | None = None

    def wire(self) -> bytes:
        return frame(
            self.opcode, self.payload, fin=self.fin, rsv=self.rsv, mask=self.mask, length=self.length
        )


def _base_frames(rng: random.Random, hello: bytes) -> list[_Frame]:
    """A well-formed client frame stream: the ClientHello in one or more messages and fragments,
    with pings and pongs between them, and sometimes a close at the end."""
    frames: list[_Frame] = []
    rest = hello
    while rest:
        n = rng.randint(1, len(rest))
        part, rest = rest[:n], rest[n:]
        if rng.random() < 0.5:
            frames.append(_Frame(BINARY, part))
        else:  # the same bytes as a fragmented message, a ping maybe between the fragments
            cut = rng.randint(0, len(part))
            frames.append(_Frame(BINARY, part[:cut], fin=False))
            if rng.random() < 0.3:
                frames.append(_Frame(PING, rng.randbytes(rng.randint(0, 125))))
            frames.append(_Frame(CONT, part[cut:]))
        if rng.random() < 0.2:
            frames.append(_Frame(rng.choice((PING, PONG)), rng.randbytes(rng.randint(0, 20))))
    if rng.random() < 0.3:
        frames.append(_Frame(CLOSE, struct.pack("!H", rng.choice((1000, 1001, 3000, 4999))) + b"bye"))
    return frames


_LENGTHS = (0, 1, 125, 126, 127, 65535, 65536, MIB, MIB + 1, 1 << 40, 1 << 63)
_CONTROL = (
    b"",
    b"\x03",
    struct.pack("!H", 1000),
    struct.pack("!H", 999),
    struct.pack("!H", 1005),
    struct.pack("!H", 4000) + b"\xff",
    b"p" * 125,
    b"p" * 126,
)


# How often each edit of `_mutate_frames` is picked: the ones that keep the framing valid more
# often, so that a fair share of the cases gets past the frame parser to TLS.
_WEIGHTS = (1, 1, 1, 1, 1, 4, 1, 2, 2, 2, 3)


def _mutate_frames(rng: random.Random, frames: list[_Frame]) -> list[_Frame]:
    """One to three edits of the frames' structure: opcode, FIN, reserved bits, masking, a declared
    length that lies, a corrupt byte in a payload (it reaches TLS), frames dropped, repeated,
    swapped or split, control frames (valid or not) put in between."""
    out = [_Frame(f.opcode, f.payload, f.fin, f.rsv, f.mask, f.length) for f in frames]
    for _ in range(rng.randint(1, 3)):
        if not out:
            break
        i = rng.randrange(len(out))
        f = out[i]
        op = rng.choices(range(11), weights=_WEIGHTS)[0]
        if op == 0:
            f.opcode = rng.randrange(16)
        elif op == 1:
            f.fin = not f.fin
        elif op == 2:
            f.rsv = rng.randrange(1, 8)
        elif op == 3:
            f.mask = False
        elif op == 4:
            f.length = rng.choice(_LENGTHS)
        elif op == 5 and f.payload:
            j = rng.randrange(len(f.payload))
            f.payload = f.payload[:j] + bytes((f.payload[j] ^ (1 << rng.randrange(8)),)) + f.payload[j + 1 :]
        elif op == 6:
            del out[i]
        elif op == 7:
            out.insert(i, _Frame(f.opcode, f.payload, f.fin, f.rsv, f.mask, f.length))
        elif op == 8:
            j = rng.randrange(len(out))
            out[i], out[j] = out[j], out[i]
        elif op == 9:
            out.insert(i, _Frame(rng.choice((PING, PONG, CLOSE)), rng.choice(_CONTROL)))
        elif op == 10 and f.payload and f.opcode in (BINARY, CONT):
            cut = rng.randrange(len(f.payload))
            out[i : i + 1] = [
                _Frame(f.opcode, f.payload[:cut], fin=False),
                _Frame(CONT, f.payload[cut:], fin=f.fin),
            ]
    return out


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """One to four random byte edits: bit flips, random bytes, insertions, deletions, repeats, a cut."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[i] = rng.randrange(256)
        elif op == 2:
            buf[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and buf:
            del buf[i : i + rng.randint(1, 32)]
        elif op == 4 and buf:
            buf[i:i] = buf[i : i + rng.randint(1, 64)] * rng.randint(1, 4)
        elif op == 5 and buf:
            del buf[rng.randint(1, len(buf)) :]
    return bytes(buf)


def _fuzz_input(rng: random.Random, hello: bytes) -> bytes:
    """A mutated frame stream: structure edits always, byte edits on a quarter of them."""
    data = b"".join(f.wire() for f in _mutate_frames(rng, _base_frames(rng, hello)))
    return _mutate_bytes(rng, data) if rng.random() < 0.25 else data


def _close_codes_sent(data: bytes) -> set[int]:
    """The codes of the valid close frames in the well-formed start of `data` (the proxy echoes one)."""
    parser, codes = FrameParser(masked=True, max_message=None), set()
    try:
        for i in range(len(data)):  # byte by byte: the frames before a broken one still count
            for f in parser.feed(data[i : i + 1]):
                if f.opcode == CLOSE:
                    codes.add(parse_close(f.payload)[0])
    except FrameError:
        pass
    return codes


async def _fuzz_case(port: int, data: bytes) -> str | None:
    """Send `data` after the 101, then end our side; what was wrong with the proxy's answer, or None."""
    tunnel = await RawTunnel.open(port, timeout=PROMPT * 2)
    try:
        tunnel.write(data)
        tunnel.shutdown_write()
        if not await tunnel.ended(PROMPT):
            return f"not closed within {PROMPT}s: {tunnel.summary()}"
        if tunnel.frame_error is not None:
            return f"broken frames from the proxy: {tunnel.summary()}"
        code = tunnel.close_code
        # No close frame (it saw our EOF first) is fine; a close frame carries a fault's code or
        # the echo of a close we sent, never 1011 (the proxy's own failure).
        if code is not None and code not in PEER_FAULT_CODES and code not in _close_codes_sent(data):
            return f"close code {code}: {tunnel.summary()}"
        return None
    finally:
        await tunnel.aclose()


async def test_fuzzed_frame_streams(hostile: StartProxy, tmp: Path) -> None:
    proxy = hostile()
    hello = _client_hello()
    rng = random.Random(FUZZ_SEED)
    cases = [_fuzz_input(rng, hello) for _ in range(FUZZ_CASES)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FUZZ_BUDGET
    failures: list[str] = []
    gate = asyncio.Semaphore(FUZZ_PARALLEL)
    ran = 0

    async def one(i: int, data: bytes) -> None:
        nonlocal ran
        async with gate:
            if loop.time() > deadline:
                return
            ran += 1
            problem = await _fuzz_case(proxy.port, data)
            if problem is not None:
                failures.append(f"case {i} ({data[:40].hex()}...): {problem}")

    await asyncio.gather(*(one(i, data) for i, data in enumerate(cases)))
    assert not failures, f"{len(failures)} of {ran} cases:\n" + "\n".join(failures[:10])
    assert ran >= FUZZ_CASES // 2, f"only {ran} of {FUZZ_CASES} cases ran within {FUZZ_BUDGET}s"
    await proxy.finish()
