"""The `oauth:` section through the real proxy (SPEC §5.1): the documents an authorization server
and an MCP server publish with their internal URLs come out of the tunnel as the official
split-endpoint setup wants them; everything else comes out byte for byte as without the section."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mcp_tunnel.client import client_ssl_context
from support.pki import PKI
from support.proxy import RunningProxy, start_proxy
from support.rawtunnel import HTTPResponse, RawTunnel
from support.upstreams import Received, RecordingUpstream

AUTHORIZE = "https://login.example.com/authorize"
OAUTH = {"authorization_server": "auth", "authorization_endpoint": AUTHORIZE, "protected_resources": ["mcp"]}
WAIT = 10.0


def as_metadata(origin: str) -> dict[str, Any]:
    return {
        "issuer": f"{origin}/",
        "authorization_endpoint": f"{origin}/authorize",
        "token_endpoint": f"{origin}/token",
        "registration_endpoint": f"{origin}/register",
        "jwks_uri": f"{origin}/jwks",
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
    }


def json_answer(doc: object, *, extra: bytes = b"") -> bytes:
    body = json.dumps(doc).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n"
        % (
            extra,
            len(body),
        )
        + body
    )


def chunked_answer(body: bytes, pieces: int = 3, *, content_type: bytes = b"application/json") -> list[bytes]:
    step = max(1, len(body) // pieces)
    parts = [body[i : i + step] for i in range(0, len(body), step)]
    head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % content_type
    return [head] + [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]


Script = Callable[[Received, int], list[bytes]]


def scripted(script: Script) -> RecordingUpstream:
    """An upstream answering with the pieces `script` gives (each its own write)."""
    up = RecordingUpstream()

    async def handler(req: Received, writer: asyncio.StreamWriter) -> None:
        for piece in script(req, up.port):
            writer.write(piece)
            await writer.drain()
        if req.header("x-close") == "1":
            writer.close()

    up.handler = handler
    return up


BIG = {"issuer": "http://127.0.0.1:1/", "padding": "x" * (70 * 1024)}


def prm_body(port: int) -> dict[str, Any]:
    return {
        "resource": f"http://127.0.0.1:{port}/mcp",
        "authorization_servers": [f"http://127.0.0.1:{port}/"],
        "bearer_methods_supported": ["header"],
    }


def script(req: Received, port: int) -> list[bytes]:
    host = (req.header("host") or "").split(".")[0]
    origin = f"http://127.0.0.1:{port}"
    target = req.target
    if host == "auth":
        if target == "/.well-known/oauth-authorization-server":
            return [json_answer(as_metadata(origin), extra=b"Cache-Control: max-age=60\r\n")]
        if target == "/.well-known/openid-configuration/realms/x":
            return chunked_answer(json.dumps(as_metadata(origin)).encode())
        if target == "/.well-known/openid-configuration":  # close-delimited
            body = json.dumps(as_metadata(origin)).encode()
            return [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + body]
        if target == "/.well-known/oauth-authorization-server/big":
            return chunked_answer(json.dumps(BIG).encode())
        if target == "/.well-known/oauth-authorization-server/gzip":
            return [json_answer(as_metadata(origin), extra=b"Content-Encoding: gzip\r\n")]
        if target == "/.well-known/oauth-authorization-server/html":
            return chunked_answer(b"<html>" + origin.encode() + b"</html>", content_type=b"text/html")
        if target == "/.well-known/oauth-authorization-server/404":
            body = json.dumps(as_metadata(origin)).encode()
            return [
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(body)
                + body
            ]
        if target == "/.well-known/oauth-authorization-server/notjson":
            return [json_answer([origin])]
    if host in ("mcp", "other"):
        if target.startswith("/.well-known/oauth-protected-resource"):
            return [json_answer(prm_body(port))]
        if target == "/mcp":
            metadata = f"{origin}/.well-known/oauth-protected-resource/mcp"
            challenge = f'Bearer error="invalid_token", resource_metadata="{metadata}"'
            return [
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: %s\r\nContent-Length: 0\r\n\r\n"
                % challenge.encode()
            ]
    # anything else: the same document on another path, which must pass as is
    return [json_answer(as_metadata(origin))]


async def fetch(
    proxy: RunningProxy, pki: PKI, sub: str, requests: list[str]
) -> tuple[bytes, list[HTTPResponse]]:
    """Send raw requests (pipelined) on one tunnel connection: every plaintext byte that came back."""
    host = pki.host(sub)
    tunnel = await RawTunnel.connect(proxy.server.port, client_ssl_context(str(pki.ca_file)), host)
    try:
        methods = []
        data = b""
        for line in requests:
            method, target, *extra = line.split(" ")
            methods.append(method)
            data += f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n".encode()
            data += b"".join(f"{h}\r\n".encode() for h in extra) + b"\r\n"
        tunnel.send_plain(data)
        responses = await tunnel.responses(methods, WAIT)
        assert len(responses) == len(methods), tunnel.summary()
        return bytes(tunnel.plain), responses
    finally:
        await tunnel.aclose()


@pytest.fixture
async def pair(tmp: Path, pki: PKI) -> Any:
    """One scripted upstream behind two proxies: with the oauth: section and without it."""
    up = await scripted(script).start()
    routes = {k: f"http://127.0.0.1:{up.port}" for k in ("auth", "mcp", "other")}
    (tmp / "with").mkdir()
    (tmp / "without").mkdir()
    with_section = await start_proxy(tmp / "with", pki, routes, oauth=OAUTH)
    without = await start_proxy(tmp / "without", pki, routes)
    yield with_section, without, up
    await with_section.stop()
    await without.stop()
    await up.close()


async def test_authorization_server_metadata_is_split(pair: Any, pki: PKI) -> None:
    proxy, _, _ = pair
    # Content-Length, chunked and close-delimited upstream bodies; the two first on one connection
    _, responses = await fetch(
        proxy,
        pki,
        "auth",
        ["GET /.well-known/oauth-authorization-server", "GET /.well-known/openid-configuration/realms/x"],
    )
    _, closing = await fetch(proxy, pki, "auth", ["GET /.well-known/openid-configuration X-Close:1"])
    public = f"https://auth.{pki.domain}"
    for resp in [*responses, *closing]:
        assert resp.status == 200
        assert resp.header("transfer-encoding") is None
        assert resp.header("content-length") == str(len(resp.body))
        assert resp.header("content-type") == "application/json"
        assert json.loads(resp.body) == {
            "issuer": public,
            "authorization_endpoint": AUTHORIZE,
            "token_endpoint": f"{public}/token",
            "registration_endpoint": f"{public}/register",
            "jwks_uri": f"{public}/jwks",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }
    assert responses[0].header("cache-control") == "max-age=60"
    assert not proxy.log_has("level=warn")


async def test_protected_resource_metadata_and_challenge(pair: Any, pki: PKI) -> None:
    proxy, _, _ = pair
    _, (bare, suffixed, challenge) = await fetch(
        proxy,
        pki,
        "mcp",
        [
            "GET /.well-known/oauth-protected-resource",
            "GET /.well-known/oauth-protected-resource/mcp",
            "POST /mcp Content-Length:0",
        ],
    )
    public = f"https://mcp.{pki.domain}"
    for resp in (bare, suffixed):
        assert json.loads(resp.body) == {
            "resource": f"{public}/mcp",
            "authorization_servers": [f"https://auth.{pki.domain}"],
            "bearer_methods_supported": ["header"],
        }
        assert resp.header("content-length") == str(len(resp.body))
    assert challenge.status == 401
    assert challenge.header("www-authenticate") == (
        f'Bearer error="invalid_token", resource_metadata="{public}/.well-known/oauth-protected-resource/mcp"'
    )


@pytest.mark.parametrize(
    ("sub", "request_line", "warning"),
    [
        ("auth", "GET /token", None),  # another path
        ("auth", "POST /.well-known/oauth-authorization-server Content-Length:0", None),
        ("auth", "GET /.well-known/oauth-authorization-server/html", None),  # not JSON
        ("auth", "GET /.well-known/oauth-authorization-server/404", None),  # not 2xx
        ("auth", "GET /.well-known/oauth-protected-resource", None),  # not a document of the AS
        ("other", "GET /.well-known/oauth-protected-resource", None),  # another route
        ("other", "POST /mcp Content-Length:0", None),  # its challenge stays
        ("auth", "GET /.well-known/oauth-authorization-server/gzip", "compressed"),
        ("auth", "GET /.well-known/oauth-authorization-server/big", "over 64 KiB"),
        ("auth", "GET /.well-known/oauth-authorization-server/notjson", "not a JSON object"),
    ],
)
async def test_everything_else_passes_byte_for_byte(
    pair: Any, pki: PKI, sub: str, request_line: str, warning: str | None
) -> None:
    with_section, without, _ = pair
    got, (resp,) = await fetch(with_section, pki, sub, [request_line])
    expected, _ = await fetch(without, pki, sub, [request_line])
    assert got == expected  # a held body that is no JSON object goes out as it came
    assert resp.body or resp.header("www-authenticate")  # the comparison is about something
    warned = [line for line in with_section.log_lines() if "level=warn" in line]
    if warning is None:
        assert warned == []
    else:
        assert len(warned) == 1 and warning in warned[0] and "route=auth" in warned[0]


async def test_oversized_document_streams_before_it_is_whole(pair: Any, pki: PKI) -> None:
    """Past the cap the held part goes out at once: the client sees it before the upstream ends."""
    proxy, _, up = pair
    gate = asyncio.Event()
    body = json.dumps(BIG).encode()
    original = up.handler

    async def slow(req: Received, writer: asyncio.StreamWriter) -> None:
        if req.target != "/.well-known/oauth-authorization-server/slow":
            await original(req, writer)
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"%x\r\n%s\r\n" % (len(body), body))
        await writer.drain()
        await gate.wait()
        writer.write(b"0\r\n\r\n")

    up.handler = slow
    host = pki.host("auth")
    tunnel = await RawTunnel.connect(proxy.server.port, client_ssl_context(str(pki.ca_file)), host)
    try:
        tunnel.send_plain(
            f"GET /.well-known/oauth-authorization-server/slow HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        )
        assert await tunnel.until(lambda: body[-100:] in bytes(tunnel.plain), WAIT), tunnel.summary()
        gate.set()
        (resp,) = await tunnel.responses(["GET"], WAIT)
        assert resp.body == body
    finally:
        gate.set()
        await tunnel.aclose()
