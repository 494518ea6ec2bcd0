"""ws_handshake: the WebSocket upgrade request, the first bytes anyone on the internet sends.

Inputs are request heads built line by line (method, target, version, and headers drawn from
the ones the handshake looks at: Upgrade, Connection, Sec-WebSocket-Key and -Version, framing
headers, repeats, odd spacing and case, CRLF or bare LF), often followed by the first bytes of
the WebSocket stream, sometimes with a byte flipped or deleted, sometimes random bytes; then cut
into random chunks, fed as the proxy feeds them (stop at the first head).

Oracle: each chunk is answered "need more" (None), the head and the bytes after it, or
UpgradeRefused with a complete 400 or 426 response; nothing else is raised. Once a head is
whole, `check_upgrade` and `accept` either refuse it (UpgradeRefused, 400 or 426, a response that
starts with its status line and whose Content-Length is its body's) or answer a 101 whose
Sec-WebSocket-Accept is RFC 6455's for the one key sent. Every chunking of a stream gives the
same answer, and the head plus the bytes handed on after it are the stream's bytes: nothing
a client sent along with its upgrade is lost or answered differently because of where the
network cut it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from hypothesis import strategies as st
from websockets.utils import accept_key

from fuzzing.common import chance, chunks, cuts, mostly, permutation, pick
from fuzzing.driver import Harness
from mcp_tunnel.ws_handshake import UpgradeParser, UpgradeRefused, UpgradeRequest, accept, check_upgrade


@dataclass(frozen=True)
class Case:
    data: bytes
    cuts: tuple[int, ...]


_KEY = base64.b64encode(b"0123456789abcdef")
_VALUES: dict[bytes, list[bytes]] = {
    b"Host": [b"example.com", b"", b"a.b:443"],
    b"Upgrade": [b"websocket", b"WebSocket", b"websocket, h2c", b"h2c", b"", b" websocket ", b"websocket,"],
    b"Connection": [
        b"Upgrade",
        b"upgrade",
        b"keep-alive, Upgrade",
        b"close",
        b"",
        b"Upgrade,",
        b"x, upgrade",
    ],
    b"Sec-WebSocket-Key": [
        _KEY,
        base64.b64encode(b"0123456789abcde"),
        base64.b64encode(b"0123456789abcdefg"),
        b"not base64!",
        b"",
        _KEY + b" ",
        _KEY.rstrip(b"="),
    ],
    b"Sec-WebSocket-Version": [b"13", b" 13", b"8", b"13, 8", b"", b"abc"],
    b"Content-Length": [b"0", b"5", b"-1"],
    b"Transfer-Encoding": [b"chunked", b"gzip"],
    b"Origin": [b"https://claude.ai"],
    b"X-Other": [b"\x80\xff", b"a" * 300],
}
_GOOD = [b"Host", b"Upgrade", b"Connection", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version"]


_NAMES = sorted(_VALUES)
_SHORT_BYTES = st.binary(max_size=20)
_RANDOM = st.binary(max_size=300)
_AFTER_HEAD = [b"", b"", b"\x82\x85abcd\x01\x02\x03\x04\x05", b"GET / HTTP/1.1\r\n\r\n"]


@st.composite
def _header(draw: st.DrawFn) -> bytes:
    name = pick(draw, _NAMES)
    value = draw(_SHORT_BYTES) if chance(draw, 5) else pick(draw, _VALUES[name])
    name = pick(draw, [name, name.lower(), name.upper()])
    return name + pick(draw, [b": ", b":", b" : ", b":\t"]) + value


_EXTRA = st.lists(_header(), max_size=4)


_LINE_PARTS: dict[str, tuple[bytes, list[bytes]]] = {
    "method": (b"GET", [b"POST", b"get", b"HEAD", b"PRI"]),
    "target": (b"/", [b"/ws?x=1", b"*", b"http://a/", b""]),
    "version": (b"HTTP/1.1", [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2"]),
}
_FOCUS = [*_LINE_PARTS, *(n.decode() for n in _GOOD), "extra"]


@st.composite
def _head(draw: st.DrawFn) -> bytes:
    # Half the heads are a good upgrade with one thing changed (so each rule is reached on its
    # own, not only behind another that refuses first); the others change every part at will.
    focus = pick(draw, _FOCUS) if chance(draw, 2) else None

    def part(key: str, good: bytes, others: list[bytes]) -> bytes:
        if focus is None:
            return mostly(draw, good, others)
        return pick(draw, others) if key == focus else good

    method, target, version = (part(k, *_LINE_PARTS[k]) for k in ("method", "target", "version"))
    lines = [method + b" " + target + b" " + version]
    for name in _GOOD:
        how = "value" if focus is None or focus == name.decode() else "keep"
        if how == "value":
            how = pick(draw, ["value", "value", "drop", "repeat"]) if focus else how
        if how == "drop" or (focus is None and chance(draw, 30)):
            continue
        lines.append(name + b": " + part(name.decode(), _VALUES[name][0], _VALUES[name]))
        if how == "repeat" or (focus is None and chance(draw, 30)):
            lines.append(name + b": " + pick(draw, _VALUES[name]))
    if focus == "extra" or (focus is None and chance(draw, 2)):
        lines += draw(_EXTRA)
    order = draw(permutation(len(lines) - 1))
    lines = [lines[0], *(lines[i] for i in order)]
    eol = b"\n" if focus is None and chance(draw, 10) else b"\r\n"
    return eol.join(lines) + eol + eol


_HEADS = _head()


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = pick(draw, ["head", "head", "head", "mutated", "random"])
    if kind == "random":
        data = draw(_RANDOM)
    else:
        # A client may send its first frames without waiting for the 101.
        data = draw(_HEADS) + pick(draw, _AFTER_HEAD)
        if kind == "mutated":
            at = pick(draw, range(len(data)))
            how = pick(draw, ["flip", "delete", "insert"])
            byte = bytes([pick(draw, range(256))])
            data = data[:at] + (b"" if how == "delete" else byte) + data[at + (0 if how == "insert" else 1) :]
    return Case(data, cuts(draw, len(data), 8))


def _check_refusal(refused: UpgradeRefused) -> tuple[str, int, bytes]:
    assert type(refused) is UpgradeRefused and refused.status in (400, 426), refused
    response = refused.response
    head, sep, body = response.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 %d " % refused.status), response
    assert b"\r\nContent-Length: %d" % len(body) in head, response
    return ("refused", refused.status, response)


def outcome(chunks: list[bytes]) -> tuple[str, int, bytes]:
    """What the proxy answers a stream arriving in these chunks, and what it hands on after."""
    parser = UpgradeParser()
    fed = b""
    for i, piece in enumerate(chunks):
        fed += piece
        try:
            parsed = parser.feed(piece)
        except UpgradeRefused as refused:
            return _check_refusal(refused)
        if parsed is None:
            continue
        request, rest = parsed
        after = rest + b"".join(chunks[i + 1 :])
        assert type(rest) is bytes and fed.endswith(rest), (fed, rest)
        try:
            check_upgrade(request)
            response = accept(request)
        except UpgradeRefused as refused:
            return _check_refusal(refused)
        _check_accepted(request)
        keys = request.values(b"sec-websocket-key")
        expected = b"Sec-WebSocket-Accept: " + accept_key(keys[0].decode("latin-1")).encode() + b"\r\n"
        assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), response
        assert expected in response and response.endswith(b"\r\n\r\n"), response
        return ("accepted", len(b"".join(chunks)) - len(after), response)
    return ("incomplete", 0, b"")


def _tokens(values: list[bytes]) -> list[bytes]:
    return [t.strip().lower() for v in values for t in v.split(b",") if t.strip()]


def _check_accepted(request: UpgradeRequest) -> None:
    """What RFC 6455 §4.2.1 asks of an upgrade the server accepts, restated from the RFC."""
    assert request.method == "GET" and request.http_version == "1.1", request
    assert _tokens(request.values(b"upgrade")) == [b"websocket"], request
    assert b"upgrade" in _tokens(request.values(b"connection")), request
    assert not request.values(b"content-length") and not request.values(b"transfer-encoding"), request
    keys = request.values(b"sec-websocket-key")
    assert len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16, request
    assert [v.strip() for v in request.values(b"sec-websocket-version")] == [b"13"], request


def check(case: Case) -> None:
    whole = outcome([case.data])
    chunked = outcome(chunks(case.data, case.cuts))
    assert chunked == whole, (chunked, whole)


HARNESS = Harness("handshake", cases(), check)
