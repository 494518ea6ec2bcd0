"""OAuth through the tunnel with real OAuth software on both ends (issue #21).

The official MCP SDK's authorization server (`mcp.server.auth`) and an SDK MCP server that needs
its tokens both run on loopback and publish their internal `http://127.0.0.1:PORT` URLs, as such
servers do behind a tunnel. The SDK's OAuth client (`OAuthClientProvider`) reaches them only
through the proxy, as Anthropic's backend would: it discovers the resource and the authorization
server, registers and exchanges its code through the tunnel, while the authorization request
goes to the configured browser-facing host (here a stand-in that is the same server on
loopback), and then calls a tool with its token. Without the `oauth:` section it cannot.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
import uvicorn
from mcp.client.auth import OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    IdentityAssertionParams,
    ProviderTokenVerifier,
    RefreshToken,
    construct_redirect_uri,
)
from mcp.server.auth.routes import create_auth_routes
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from pydantic import AnyHttpUrl
from starlette.applications import Starlette

from mcp_tunnel.client.httpx_transport import TunnelTransport
from support.pki import PKI
from support.proxy import start_proxy

PUBLIC_AUTHORIZE = "https://login.example.com/authorize"  # the allowlisted browser-facing host
REDIRECT = "http://localhost:3030/callback"


class MemoryProvider:
    """An in-memory OAuthAuthorizationServerProvider: codes for whoever asks (no login page)."""

    def __init__(self) -> None:
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.tokens: dict[str, AccessToken] = {}

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        assert client_info.client_id is not None
        self.clients[client_info.client_id] = client_info

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        code = secrets.token_urlsafe(16)
        assert client.client_id is not None
        self.codes[code] = AuthorizationCode(
            code=code,
            scopes=params.scopes or ["mcp"],
            expires_at=time.time() + 300,
            client_id=client.client_id,
            code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource,
        )
        return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state)

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        return self.codes.get(authorization_code)

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        del self.codes[authorization_code.code]
        token = secrets.token_urlsafe(24)
        assert client.client_id is not None
        self.tokens[token] = AccessToken(
            token=token,
            client_id=client.client_id,
            scopes=authorization_code.scopes,
            expires_at=int(time.time()) + 3600,
            resource=authorization_code.resource,
        )
        return OAuthToken(access_token=token, token_type="Bearer", expires_in=3600, scope="mcp")

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> RefreshToken | None:
        return None

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        raise NotImplementedError

    async def exchange_identity_assertion(
        self, client: OAuthClientInformationFull, params: IdentityAssertionParams
    ) -> OAuthToken:
        raise NotImplementedError

    async def load_access_token(self, token: str) -> AccessToken | None:
        return self.tokens.get(token)

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        self.tokens.pop(getattr(token, "token", ""), None)


@asynccontextmanager
async def serving(build: Callable[[int], Starlette]) -> AsyncIterator[int]:
    """Serve the app `build(port)` makes (it needs its own port for its URLs) on loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(build(port), log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        if task.done() or asyncio.get_running_loop().time() > deadline:
            raise RuntimeError("server did not start")
        await asyncio.sleep(0.01)  # polling uvicorn's own started flag, with a deadline
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def authorization_server(provider: MemoryProvider) -> Callable[[int], Starlette]:
    def build(port: int) -> Starlette:
        routes = create_auth_routes(
            provider,
            issuer_url=AnyHttpUrl(f"http://127.0.0.1:{port}"),
            client_registration_options=ClientRegistrationOptions(enabled=True, valid_scopes=["mcp"]),
        )
        return Starlette(routes=routes)

    return build


def mcp_server(provider: MemoryProvider, as_port: int, mcp_host: str) -> Callable[[int], Starlette]:
    def build(port: int) -> Starlette:
        server = MCPServer(
            "oauth-sample",
            token_verifier=ProviderTokenVerifier(provider),
            auth=AuthSettings(
                issuer_url=AnyHttpUrl(f"http://127.0.0.1:{as_port}"),
                resource_server_url=AnyHttpUrl(f"http://127.0.0.1:{port}/mcp"),
                required_scopes=["mcp"],
                validate_token_resource=False,
            ),
        )

        @server.tool()
        def hello(name: str) -> str:
            return f"Hello, {name}!"

        security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=[mcp_host])
        return server.streamable_http_app(json_response=True, transport_security=security)

    return build


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Browser:
    """The user's browser: loads the authorization URL from the allowlisted host (the stand-in is
    the authorization server on loopback) and brings back the code from the redirect."""

    def __init__(self, as_port: int) -> None:
        self.as_port = as_port
        self.visited: list[str] = []
        self.result: AuthorizationCodeResult | None = None

    async def redirect(self, url: str) -> None:
        self.visited.append(url)
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == PUBLIC_AUTHORIZE, url
        async with httpx2.AsyncClient() as direct:
            resp = await direct.get(f"http://127.0.0.1:{self.as_port}/authorize?{parts.query}")
        assert resp.status_code == 302, resp.text
        location = urlsplit(resp.headers["location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
        query = parse_qs(location.query)
        self.result = AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0])

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


async def sign_in_and_call(tmp: Path, pki: PKI, oauth: dict[str, Any] | None) -> tuple[Any, Browser, Any]:
    provider = MemoryProvider()
    mcp_host = pki.host("mcp")
    async with (
        serving(authorization_server(provider)) as as_port,
        serving(mcp_server(provider, as_port, mcp_host)) as mcp_port,
    ):
        extra: dict[str, Any] = {} if oauth is None else {"oauth": oauth}
        routes = {"mcp": f"http://127.0.0.1:{mcp_port}", "auth": f"http://127.0.0.1:{as_port}"}
        proxy = await start_proxy(tmp, pki, routes, **extra)
        browser = Browser(as_port)
        auth = OAuthClientProvider(
            server_url=f"https://{mcp_host}/mcp",
            client_metadata=OAuthClientMetadata(
                client_name="tunnel-test",
                redirect_uris=[AnyHttpUrl(REDIRECT)],
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                scope="mcp",
            ),
            storage=MemoryStorage(),
            redirect_handler=browser.redirect,
            callback_handler=browser.callback,
        )
        try:
            async with (
                httpx2.AsyncClient(transport=TunnelTransport(proxy.client()), auth=auth, timeout=10) as http,
                streamable_http_client(f"https://{mcp_host}/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                result = await session.call_tool("hello", {"name": "oauth"})
                return result, browser, proxy
        finally:
            await proxy.stop()


OAUTH = {
    "authorization_server": "auth",
    "authorization_endpoint": PUBLIC_AUTHORIZE,
    "protected_resources": ["mcp"],
}


async def test_sdk_client_signs_in_through_the_tunnel(tmp: Path, pki: PKI) -> None:
    result, browser, proxy = await sign_in_and_call(tmp, pki, OAUTH)
    assert result.content[0].text == "Hello, oauth!"
    assert len(browser.visited) == 1  # the one authorization request, on the public host
    lines = proxy.log_lines()

    def reached(host: str, method: str, path: str) -> bool:
        want = f'msg="request started" method={method} host={pki.host(host)} path={path}'
        return any(want in line for line in lines)

    # discovery, registration and the code exchange all went through the tunnel
    assert reached("mcp", "GET", "/.well-known/oauth-protected-resource/mcp")
    assert reached("auth", "GET", "/.well-known/oauth-authorization-server")
    assert reached("auth", "POST", "/register")
    assert reached("auth", "POST", "/token")
    assert reached("mcp", "POST", "/mcp")
    assert not any("level=warn" in line for line in lines)


async def test_without_the_section_the_sdk_client_cannot_sign_in(tmp: Path, pki: PKI) -> None:
    """The internal URLs the servers publish lead the client off the tunnel: why #21 exists."""
    with pytest.raises(ExceptionGroup) as info:  # the SDK's error, raised in its task group
        await sign_in_and_call(tmp, pki, None)

    def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
        out: list[BaseException] = []
        for exc in group.exceptions:
            out += leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
        return out

    errors = leaves(info.value)
    # it went for the internal address the resource metadata named, which no tunnel serves
    assert any(isinstance(e, httpx2.ConnectError) and "127.0.0.1" in str(e) for e in errors), errors
