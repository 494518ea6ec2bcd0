"""The upgrade decision (ws_handshake), checked against websockets' own server handshake."""

from __future__ import annotations

import pytest
from websockets.http11 import Request
from websockets.server import ServerProtocol

from mcp_tunnel.ws_handshake import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    NOT_A_TUNNEL,
    UpgradeParser,
    UpgradeRefused,
    UpgradeRequest,
    accept,
    check_upgrade,
    refused,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
GOOD = [
    ("Host", "tunnel.example:443"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
]


def head(
    headers: list[tuple[str, str]], *, method: str = "GET", version: str = "1.1", path: str = "/"
) -> bytes:
    lines = [f"{method} {path} HTTP/{version}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse(data: bytes) -> tuple[UpgradeRequest, bytes]:
    parsed = UpgradeParser().feed(data)
    assert parsed is not None
    return parsed


def decide(data: bytes) -> int:
    """Our answer's status: 101, or the refusal's."""
    try:
        request, _ = parse(data)
        check_upgrade(request)
        accept(request)
    except UpgradeRefused as refused:
        return refused.status
    return 101


def websockets_status(data: bytes) -> int:
    """What websockets' ServerProtocol answers the same request (400 when it cannot parse it)."""
    ws = ServerProtocol()
    ws.receive_data(data)
    events = ws.events_received()
    if not events or not isinstance(events[0], Request):
        return 400
    return ws.accept(events[0]).status_code


def test_accept_key_is_the_rfc_example() -> None:
    response = accept(parse(head(GOOD))[0])
    # RFC 6455 §1.3: this key's accept value.
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Extensions" not in response and b"Sec-WebSocket-Protocol" not in response


def _without(name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in GOOD if k != name]


def _with(name: str, value: str) -> list[tuple[str, str]]:
    return [*_without(name), (name, value)]


CASES = {
    "good": head(GOOD),
    "any-path": head(GOOD, path="/some/where?x=1"),
    "upgrade-case": head(_with("Upgrade", "WebSocket")),
    "connection-list": head(_with("Connection", "keep-alive, Upgrade")),
    "no-connection-upgrade": head(_with("Connection", "keep-alive")),
    "two-upgrade-protocols": head(_with("Upgrade", "websocket, h2c")),
    "no-key": head(_without("Sec-WebSocket-Key")),
    "short-key": head(_with("Sec-WebSocket-Key", "c2hvcnQ=")),
    "not-base64-key": head(_with("Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!!!=")),
    "two-keys": head([*GOOD, ("Sec-WebSocket-Key", KEY)]),
    "no-version": head(_without("Sec-WebSocket-Version")),
    "extensions-offered": head([*GOOD, ("Sec-WebSocket-Extensions", "permessage-deflate")]),
    "subprotocol-offered": head([*GOOD, ("Sec-WebSocket-Protocol", "mcp")]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_decision_as_websockets(name: str) -> None:
    data = CASES[name]
    assert decide(data) == websockets_status(data)


def test_wrong_version_is_426_naming_ours() -> None:
    """RFC 6455 §4.4 (websockets says 400 here)."""
    with pytest.raises(UpgradeRefused) as info:
        accept(parse(head(_with("Sec-WebSocket-Version", "8")))[0])
    assert info.value.status == 426
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in info.value.response


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(head(GOOD, method="POST"), id="post"),
        pytest.param(head(GOOD, version="1.0"), id="http-1.0"),
        pytest.param(head([("Host", "x")]), id="plain-get"),
        pytest.param(head([*GOOD, ("Content-Length", "5")]) + b"hello", id="with-body"),
    ],
)
def test_plain_http_is_not_a_tunnel(data: bytes) -> None:
    with pytest.raises(UpgradeRefused) as info:
        request, _ = parse(data)
        check_upgrade(request)
    refused = info.value
    assert refused.status == 400 and refused.not_websocket
    assert refused.response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert refused.response.endswith(NOT_A_TUNNEL.encode())
    assert b"\r\nConnection: close\r\n" in refused.response


def test_plain_get_is_logged_garbage_is_quiet() -> None:
    with pytest.raises(UpgradeRefused) as plain:
        check_upgrade(parse(head([("Host", "x")]))[0])
    assert not plain.value.quiet
    with pytest.raises(UpgradeRefused) as garbage:
        UpgradeParser().feed(b"\x00\x01 not http at all\r\n\r\n")
    assert garbage.value.quiet and garbage.value.not_websocket


def test_bytes_after_the_head_are_returned_whole() -> None:
    frames = b"\x82\x85abcd" + b"12345"
    request, rest = parse(head(GOOD) + frames)
    assert rest == frames
    assert request.method == "GET" and request.http_version == "1.1"


def test_head_in_pieces() -> None:
    data = head(GOOD) + b"tail"
    parser = UpgradeParser()
    for i in range(len(data) - 5):
        assert parser.feed(data[i : i + 1]) is None
    parsed = parser.feed(data[len(data) - 5 :])
    assert parsed is not None and parsed[1] == b"tail"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([h for h in GOOD if h[0] != "Connection"], 426),  # a WebSocket upgrade without Connection
        ([("Host", "x")], 400),  # plain HTTP
    ],
)
def test_the_answer_is_the_heads_however_the_bytes_are_split(
    headers: list[tuple[str, str]], status: int
) -> None:
    """What follows a head that is no upgrade is not parsed as HTTP: a client's early frames in the
    same read made llhttp fail (400) where the next read gave the head's own answer (426); found
    by fuzzing/handshake.py."""
    data = head(headers) + b"\x82\x85abcd12345"
    cut = len(head(headers))
    for pieces in ([data], [data[:cut], data[cut:]]):
        parser = UpgradeParser()
        parsed = next(p for p in map(parser.feed, pieces) if p is not None)
        with pytest.raises(UpgradeRefused) as refused:
            check_upgrade(parsed[0])
        assert refused.value.status == status, pieces


def test_size_limits() -> None:
    big = head([*GOOD, ("X-Big", "a" * MAX_HEAD_BYTES)])
    with pytest.raises(UpgradeRefused) as info:
        UpgradeParser().feed(big)
    assert info.value.status == 400
    many = head(GOOD + [(f"X-{i}", "1") for i in range(MAX_HEADERS)])
    with pytest.raises(UpgradeRefused):
        UpgradeParser().feed(many)
    assert (
        UpgradeParser().feed(head(GOOD + [(f"X-{i}", "1") for i in range(MAX_HEADERS - len(GOOD))]))
        is not None
    )


# --- every refusal, byte for byte -----------------------------------------------------------------

BROWSER = "You cannot access a WebSocket server directly with a browser. You need a WebSocket client.\n"


def _response(status: str, body: str, *headers: str) -> bytes:
    """A refusal as RFC 9112 frames it: status line, headers, our three, blank line, body."""
    data = body.encode()
    lines = [f"HTTP/1.1 {status}", *headers, "Content-Type: text/plain; charset=utf-8"]
    lines += ["Connection: close", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _refusal(data: bytes) -> UpgradeRefused:
    with pytest.raises(UpgradeRefused) as info:
        request, _ = parse(data)
        check_upgrade(request)
        accept(request)
    return info.value


NOT_WS = _response("400 Bad Request", NOT_A_TUNNEL)


def _bad(why: str) -> bytes:
    return _response("400 Bad Request", f"Failed to open a WebSocket connection: {why}.\n")


def _required(why: str) -> bytes:
    body = f"Failed to open a WebSocket connection: {why}.\n\n{BROWSER}"
    return _response("426 Upgrade Required", body, "Upgrade: websocket")


@pytest.mark.parametrize(
    ("data", "response", "not_websocket", "quiet"),
    [
        pytest.param(head(GOOD, method="POST"), NOT_WS, True, True, id="post"),
        pytest.param(head(GOOD, version="1.0"), NOT_WS, True, True, id="http-1.0"),
        pytest.param(head([*GOOD, ("Content-Length", "0")]), NOT_WS, True, True, id="content-length"),
        pytest.param(
            head([*GOOD, ("Transfer-Encoding", "chunked")]) + b"0\r\n\r\n", NOT_WS, True, True, id="chunked"
        ),
        pytest.param(head([("Host", "x")]), NOT_WS, True, False, id="plain-get"),
        pytest.param(head(_with("Upgrade", "h2c")), NOT_WS, True, False, id="other-upgrade"),
        pytest.param(head(_with("Upgrade", "h2c, tls")), NOT_WS, True, False, id="other-upgrades"),
        pytest.param(
            head(_with("Upgrade", "websocket, h2c")),
            _required("invalid Upgrade header: websocket, h2c"),
            False,
            False,
            id="websocket-and-more",
        ),
        pytest.param(
            head(_with("Connection", "keep-alive")),
            _required("invalid Connection header"),
            False,
            False,
            id="no-connection-upgrade",
        ),
        pytest.param(
            head(_without("Sec-WebSocket-Key")), _bad("missing Sec-WebSocket-Key"), False, False, id="no-key"
        ),
        pytest.param(
            head([*GOOD, ("Sec-WebSocket-Key", KEY)]),
            _bad("more than one Sec-WebSocket-Key"),
            False,
            False,
            id="two-keys",
        ),
        pytest.param(
            head(_with("Sec-WebSocket-Key", "c2hvcnQ=")),
            _bad("invalid Sec-WebSocket-Key"),
            False,
            False,
            id="short",
        ),
        # base64 with one character outside the alphabet: a lenient decoder would skip it.
        pytest.param(
            head(_with("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=!=")),
            _bad("invalid Sec-WebSocket-Key"),
            False,
            False,
            id="stray-char",
        ),
        pytest.param(
            head(_without("Sec-WebSocket-Version")),
            _bad("missing Sec-WebSocket-Version"),
            False,
            False,
            id="no-version",
        ),
        pytest.param(
            head([*GOOD, ("Sec-WebSocket-Version", "13")]),
            _bad("more than one Sec-WebSocket-Version"),
            False,
            False,
            id="two-versions",
        ),
        pytest.param(
            head(_with("Sec-WebSocket-Version", "8")),
            _response(
                "426 Upgrade Required",
                "Failed to open a WebSocket connection: unsupported Sec-WebSocket-Version.\n",
                "Sec-WebSocket-Version: 13",
            ),
            False,
            False,
            id="wrong-version",
        ),
    ],
)
def test_refusals_byte_for_byte(data: bytes, response: bytes, not_websocket: bool, quiet: bool) -> None:
    refused = _refusal(data)
    assert refused.response == response
    assert (refused.not_websocket, refused.quiet) == (not_websocket, quiet)
    # The exception's text is the body without its line breaks at the ends (what is logged).
    assert str(refused) == response.partition(b"\r\n\r\n")[2].decode().strip()


def test_a_status_without_a_reason_phrase_of_ours_says_error() -> None:
    assert refused(500, "x").response == _response("500 Error", "x")
    assert refused(503, "busy\n").response == _response("503 Service Unavailable", "busy\n")


def test_a_head_without_an_upgrade_leaves_nothing_over() -> None:
    request, rest = parse(head([("Host", "x")]))
    assert rest == b"" and request.values(b"host") == [b"x"]


def _head_counting(total: int) -> bytes:
    """An upgrade head whose counted size (URL, and each header's name and value plus 4) is `total`."""
    counted = len("/") + sum(len(k) + len(v) + 4 for k, v in GOOD) + len("X-Big") + 4
    return head([*GOOD, ("X-Big", "a" * (total - counted))])


def test_head_size_limit_is_exact() -> None:
    assert UpgradeParser().feed(_head_counting(MAX_HEAD_BYTES)) is not None
    with pytest.raises(UpgradeRefused) as info:
        UpgradeParser().feed(_head_counting(MAX_HEAD_BYTES + 1))
    assert (info.value.status, info.value.quiet) == (400, True)


def test_header_count_limit_is_exact() -> None:
    extra = MAX_HEADERS - len(GOOD)
    assert UpgradeParser().feed(head(GOOD + [(f"X-{i}", "1") for i in range(extra)])) is not None
    with pytest.raises(UpgradeRefused) as info:
        UpgradeParser().feed(head(GOOD + [(f"X-{i}", "1") for i in range(extra + 1)]))
    assert (info.value.status, info.value.quiet) == (400, True)
