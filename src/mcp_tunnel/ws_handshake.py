"""The server side of the WebSocket opening handshake (RFC 6455 §4.2), sans-I/O.

httptools (llhttp) parses the upgrade request; this module decides: the 101 that accepts it,
or the answer that refuses it. The checks and statuses are websockets' `ServerProtocol.accept`
ones, which did this job before at ~85 us per handshake (a tunnel never negotiates extensions
or subprotocols, so that part is left out); the accept key is websockets' own `accept_key`.
Parsing, checking and answering a usual upgrade takes ~18 us as Python and ~8 us compiled
(mypyc, `mcp_tunnel.native`), on every new tunnel. A wrong Sec-WebSocket-Version gets
RFC 6455 §4.4's 426 naming the version we speak.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import httptools
from websockets.utils import accept_key

from mcp_tunnel.errors import UpgradeRefused as UpgradeRefused

MAX_HEAD_BYTES = 64 * 1024  # request line and headers of an upgrade request
MAX_HEADERS = 128

NOT_A_TUNNEL = (
    "This listener expects a WebSocket carrying TLS (an MCP tunnel connection from cloudflared); "
    "plain HTTP requests are not served here.\n"
)

_REASONS = {400: "Bad Request", 426: "Upgrade Required", 503: "Service Unavailable"}


def refused(
    status: int,
    body: str,
    *,
    not_websocket: bool = False,
    quiet: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> UpgradeRefused:
    """The refusal of an upgrade request, with the whole answer it gets (`UpgradeRefused`)."""
    response = refusal_response(status, body, headers)
    return UpgradeRefused(status, body.strip(), response=response, not_websocket=not_websocket, quiet=quiet)


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    method: str
    http_version: str
    headers: tuple[tuple[bytes, bytes], ...]  # names lowercased, in order

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


def refusal_response(status: int, body: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    data = body.encode()
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines += ["Content-Type: text/plain; charset=utf-8", "Connection: close", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


class _HeadComplete(Exception):
    """Raised from on_headers_complete to stop llhttp at the end of a head that is no upgrade."""


class UpgradeParser:
    """Collects one upgrade request head from the stream (httptools callbacks)."""

    __slots__ = ("_complete", "_headers", "_parser", "_size", "_url")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._size = 0
        self._complete = False

    def feed(self, data: bytes) -> tuple[UpgradeRequest, bytes] | None:
        """The request and the bytes after its head once it is whole, else None.

        Raises UpgradeRefused (400, quietly) for anything that is not an HTTP/1.1 request head
        within the size limits.
        """
        rest = b""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:  # llhttp always gives the head's end
            rest = data[int(upgrade.args[0]) :]
        except httptools.HttpParserError as error:
            if not isinstance(error.__context__, _HeadComplete):
                raise refused(400, NOT_A_TUNNEL, not_websocket=True, quiet=True) from None
        if not self._complete:
            return None
        parser = self._parser
        request = UpgradeRequest(
            parser.get_method().decode("latin-1"), parser.get_http_version(), tuple(self._headers)
        )
        return request, rest

    def on_url(self, url: bytes) -> None:
        self._count(len(url))

    # The callbacks' ValueErrors carry no message: httptools turns them into a parser error,
    # which `feed` answers with the one quiet 400, so no text of theirs is ever seen.
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) >= MAX_HEADERS:
            raise ValueError  # too many headers
        self._headers.append((name.lower(), value))
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._complete = True
        if not self._parser.should_upgrade():
            # Not an upgrade to llhttp (check_upgrade refuses it): what follows the head is not
            # parsed as HTTP, so the answer is the head's alone, however the bytes were split.
            # It was a 400 when the client's first frames came in the same read (llhttp failed
            # on them as a second request) and a 426 when they came in the next one (fuzzing/).
            raise _HeadComplete

    def _count(self, n: int) -> None:
        self._size += n
        if self._size > MAX_HEAD_BYTES:
            raise ValueError  # request head too large


def check_upgrade(request: UpgradeRequest) -> None:
    """Refuse what websockets' server would: plain HTTP first, then a broken WebSocket upgrade."""
    if request.method != "GET" or request.http_version != "1.1":
        raise refused(400, NOT_A_TUNNEL, not_websocket=True, quiet=True)
    if request.values(b"content-length") or request.values(b"transfer-encoding"):
        raise refused(400, NOT_A_TUNNEL, not_websocket=True, quiet=True)
    upgrade = _tokens(request.values(b"upgrade"))
    if [t.lower() for t in upgrade] != ["websocket"]:
        if not upgrade or all(t.lower() != "websocket" for t in upgrade):
            raise refused(400, NOT_A_TUNNEL, not_websocket=True)
        raise _upgrade_required(f"invalid Upgrade header: {', '.join(upgrade)}")
    if not any(t.lower() == "upgrade" for t in _tokens(request.values(b"connection"))):
        raise _upgrade_required("invalid Connection header")


def accept(request: UpgradeRequest) -> bytes:
    """The 101 response for a checked upgrade request, or UpgradeRefused (400, 426)."""
    keys = request.values(b"sec-websocket-key")
    if len(keys) != 1:
        raise _bad_handshake("missing Sec-WebSocket-Key" if not keys else "more than one Sec-WebSocket-Key")
    key = keys[0].decode("latin-1")
    try:
        raw_key = base64.b64decode(key.encode(), validate=True)
    except binascii.Error:
        raw_key = b""
    if len(raw_key) != 16:
        raise _bad_handshake("invalid Sec-WebSocket-Key")
    versions = request.values(b"sec-websocket-version")
    if len(versions) != 1:
        raise _bad_handshake(
            "missing Sec-WebSocket-Version" if not versions else "more than one Sec-WebSocket-Version"
        )
    if versions[0].strip() != b"13":
        raise refused(
            426,
            "Failed to open a WebSocket connection: unsupported Sec-WebSocket-Version.\n",
            headers=(("Sec-WebSocket-Version", "13"),),
        )
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
    )


def _tokens(values: list[bytes]) -> list[str]:
    return [t.strip() for v in values for t in v.decode("latin-1").split(",") if t.strip()]


def _bad_handshake(why: str) -> UpgradeRefused:
    return refused(400, f"Failed to open a WebSocket connection: {why}.\n")


def _upgrade_required(why: str) -> UpgradeRefused:
    return refused(
        426,
        f"Failed to open a WebSocket connection: {why}.\n\n"
        "You cannot access a WebSocket server directly with a browser. You need a WebSocket client.\n",
        headers=(("Upgrade", "websocket"),),
    )
