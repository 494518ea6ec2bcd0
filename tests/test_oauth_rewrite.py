"""The OAuth document rewriting of the `oauth:` section (SPEC §5.1), without any I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mcp_tunnel.oauth_rewrite import (
    MAX_DOCUMENT,
    OAuthRewriter,
    OAuthSettings,
    public_url,
    rewrite_as_metadata,
    rewrite_challenge,
    rewrite_resource_metadata,
)
from mcp_tunnel.routing import Route

DOMAIN = "abcd.tunnel.test"
AUTHORIZE = "https://login.example.com/authorize"
SETTINGS = OAuthSettings("auth", AUTHORIZE, ("mcp",))
AUTH_ROUTE = Route("auth", "http", "keycloak", 8080)
MCP_ROUTE = Route("mcp", "http", "127.0.0.1", 9000)
OTHER_ROUTE = Route("other", "http", "127.0.0.1", 9001)


def test_public_url_of_a_key() -> None:
    assert public_url("auth", DOMAIN) == f"https://auth.{DOMAIN}"
    assert public_url(f"sso.{DOMAIN}", DOMAIN) == f"https://sso.{DOMAIN}"
    assert public_url("sso.example.com", DOMAIN) == f"https://sso.example.com.{DOMAIN}"  # as routed
    assert public_url("sso.example.com", "") == "https://sso.example.com"
    assert public_url("auth", "") == "https://auth"


def internal_as() -> dict[str, Any]:
    return {
        "issuer": "http://localhost:8080/",
        "authorization_endpoint": "http://localhost:8080/authorize",
        "token_endpoint": "http://localhost:8080/token",
        "registration_endpoint": "http://keycloak:8080/register?x=1",
        "revocation_endpoint": "https://elsewhere.example.com/revoke",
        "jwks_uri": "http://localhost:8080/jwks",
        "userinfo_endpoint": "http://localhost/userinfo",  # another port: not the server's origin
        "scopes_supported": ["mcp"],
        "code_challenge_methods_supported": ["S256"],
    }


def test_as_metadata_is_split_as_the_official_steps_say() -> None:
    doc = internal_as()
    warnings = rewrite_as_metadata(
        doc,
        public=f"https://auth.{DOMAIN}",
        authorization_endpoint=AUTHORIZE,
        upstream="http://keycloak:8080",
    )
    assert warnings == []
    assert doc == {
        "issuer": f"https://auth.{DOMAIN}",
        "authorization_endpoint": AUTHORIZE,
        "token_endpoint": f"https://auth.{DOMAIN}/token",
        "registration_endpoint": f"https://auth.{DOMAIN}/register?x=1",  # the upstream's origin
        "revocation_endpoint": "https://elsewhere.example.com/revoke",  # not its own: unchanged
        "jwks_uri": f"https://auth.{DOMAIN}/jwks",
        "userinfo_endpoint": "http://localhost/userinfo",
        "scopes_supported": ["mcp"],
        "code_challenge_methods_supported": ["S256"],
    }


def test_as_metadata_rewrite_is_idempotent_and_warns_without_s256() -> None:
    doc = internal_as()
    kwargs: dict[str, Any] = {
        "public": f"https://auth.{DOMAIN}",
        "authorization_endpoint": AUTHORIZE,
        "upstream": "http://keycloak:8080",
    }
    rewrite_as_metadata(doc, **kwargs)
    again = json.loads(json.dumps(doc))
    rewrite_as_metadata(again, **kwargs)
    assert again == doc
    doc["code_challenge_methods_supported"] = ["plain"]
    assert rewrite_as_metadata(doc, **kwargs) == [
        "authorization server metadata without S256 in code_challenge_methods_supported"
    ]
    del doc["code_challenge_methods_supported"]
    assert len(rewrite_as_metadata(doc, **kwargs)) == 1


def test_as_metadata_warns_when_redirects_carry_another_issuer() -> None:
    kwargs: dict[str, Any] = {
        "public": f"https://auth.{DOMAIN}",
        "authorization_endpoint": AUTHORIZE,
        "upstream": "http://keycloak:8080",
    }
    doc = {**internal_as(), "authorization_response_iss_parameter_supported": True}
    (warning,) = rewrite_as_metadata(doc, **kwargs)
    assert "RFC 9207" in warning
    doc = {
        **internal_as(),
        "issuer": f"https://auth.{DOMAIN}",
        "authorization_response_iss_parameter_supported": True,
    }
    assert rewrite_as_metadata(doc, **kwargs) == []


def test_resource_metadata_names_the_tunnel_urls() -> None:
    doc: dict[str, Any] = {
        "resource": "http://127.0.0.1:9000/mcp",
        "authorization_servers": ["http://127.0.0.1:8080/"],
        "scopes_supported": ["mcp"],
    }
    rewrite_resource_metadata(
        doc, public=f"https://mcp.{DOMAIN}", authorization_server=f"https://auth.{DOMAIN}"
    )
    assert doc == {
        "resource": f"https://mcp.{DOMAIN}/mcp",
        "authorization_servers": [f"https://auth.{DOMAIN}"],
        "scopes_supported": ["mcp"],
    }
    bare: dict[str, Any] = {"resource": "http://127.0.0.1:9000"}
    rewrite_resource_metadata(
        bare, public=f"https://mcp.{DOMAIN}", authorization_server=f"https://auth.{DOMAIN}"
    )
    assert bare["resource"] == f"https://mcp.{DOMAIN}"


def test_challenge_keeps_everything_but_the_metadata_origin() -> None:
    value = (
        b'Bearer error="invalid_token", '
        b'resource_metadata="http://127.0.0.1:9000/.well-known/oauth-protected-resource/mcp", scope="mcp"'
    )
    assert rewrite_challenge(value, f"https://mcp.{DOMAIN}") == (
        b'Bearer error="invalid_token", resource_metadata="https://mcp.'
        + DOMAIN.encode()
        + b'/.well-known/oauth-protected-resource/mcp", scope="mcp"'
    )
    assert rewrite_challenge(b'Bearer realm="x"', "https://m") == b'Bearer realm="x"'


def rewriter() -> tuple[OAuthRewriter, list[tuple[str, dict[str, Any]]]]:
    warnings: list[tuple[str, dict[str, Any]]] = []

    def warn(msg: str, **fields: Any) -> None:
        warnings.append((msg, fields))

    return OAuthRewriter(SETTINGS, DOMAIN, warn), warnings


@pytest.mark.parametrize(
    ("route", "method", "path", "document"),
    [
        (AUTH_ROUTE, "GET", "/.well-known/oauth-authorization-server", True),
        (AUTH_ROUTE, "GET", "/.well-known/oauth-authorization-server/realms/x", True),
        (AUTH_ROUTE, "GET", "/.well-known/openid-configuration", True),
        (AUTH_ROUTE, "GET", "/.well-known/oauth-authorization-serverx", None),
        (AUTH_ROUTE, "POST", "/.well-known/oauth-authorization-server", None),
        (AUTH_ROUTE, "GET", "/token", None),
        (AUTH_ROUTE, "GET", "/.well-known/oauth-protected-resource", None),
        (MCP_ROUTE, "GET", "/.well-known/oauth-protected-resource", True),
        (MCP_ROUTE, "GET", "/.well-known/oauth-protected-resource/mcp", True),
        (MCP_ROUTE, "POST", "/mcp", False),  # only its challenge header is looked at
        (MCP_ROUTE, "GET", "/.well-known/oauth-authorization-server", False),
        (OTHER_ROUTE, "GET", "/.well-known/oauth-protected-resource", None),
    ],
)
def test_which_exchanges_are_rewritten(route: Route, method: str, path: str, document: bool | None) -> None:
    r, _ = rewriter()
    ex = r.exchange(route, method, path)
    assert (None if ex is None else ex.document) == document


JSON = [(b"content-type", b"application/json; charset=utf-8")]


def test_exchange_holds_and_rewrites_a_document() -> None:
    r, warnings = rewriter()
    ex = r.exchange(MCP_ROUTE, "GET", "/.well-known/oauth-protected-resource/mcp")
    assert ex is not None
    body = json.dumps(
        {"resource": "http://127.0.0.1:9000/mcp", "authorization_servers": ["http://x"]}
    ).encode()
    headers = [*JSON, (b"content-length", b"%d" % len(body)), (b"x-other", b"1")]
    assert ex.head(200, headers)
    assert ex.keep(body[:10]) and ex.keep(body[10:])
    out_headers, out = ex.finish()
    assert json.loads(out) == {
        "resource": f"https://mcp.{DOMAIN}/mcp",
        "authorization_servers": [f"https://auth.{DOMAIN}"],
    }
    assert out_headers == [*JSON, (b"x-other", b"1"), (b"content-length", b"%d" % len(out))]
    assert warnings == []


@pytest.mark.parametrize(
    ("status", "headers", "warning"),
    [
        (404, JSON, None),
        (204, JSON, None),
        (200, [(b"content-type", b"text/html")], None),
        (200, [*JSON, (b"content-encoding", b"gzip")], "compressed"),
        (200, [*JSON, (b"content-length", b"%d" % (MAX_DOCUMENT + 1))], "over 64 KiB"),
    ],
)
def test_exchange_passes_what_it_must_not_touch(
    status: int, headers: list[tuple[bytes, bytes]], warning: str | None
) -> None:
    r, warnings = rewriter()
    ex = r.exchange(AUTH_ROUTE, "GET", "/.well-known/oauth-authorization-server")
    assert ex is not None
    assert not ex.head(status, list(headers))
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0][0] and warnings[0][1] == {"route": "auth"}


def test_exchange_lets_an_oversized_document_go_unchanged() -> None:
    r, warnings = rewriter()
    ex = r.exchange(AUTH_ROUTE, "GET", "/.well-known/openid-configuration")
    assert ex is not None and ex.head(200, list(JSON))
    piece = b"x" * (MAX_DOCUMENT // 2)
    assert ex.keep(piece) and ex.keep(piece)
    assert not ex.keep(b"y")
    assert ex.release() == [piece, piece, b"y"] and not ex.holding
    assert warnings == [("OAuth metadata over 64 KiB: passed unchanged", {"route": "auth"})]


def test_exchange_passes_a_body_that_is_not_a_json_object_with_its_bytes() -> None:
    r, warnings = rewriter()
    ex = r.exchange(AUTH_ROUTE, "GET", "/.well-known/oauth-authorization-server")
    assert ex is not None and ex.head(200, [*JSON, (b"transfer-encoding", b"chunked")])
    ex.keep(b"[1, 2]")
    headers, body = ex.finish()
    assert body == b"[1, 2]" and headers == [*JSON, (b"content-length", b"6")]
    assert [w for w, _ in warnings] == ["OAuth metadata is not a JSON object: passed unchanged"]


def test_challenge_rewritten_on_any_answer_of_a_protected_resource_only() -> None:
    r, _ = rewriter()
    challenge = (
        b"www-authenticate",
        b'Bearer resource_metadata="http://127.0.0.1:9000/.well-known/oauth-protected-resource/mcp"',
    )
    ex = r.exchange(MCP_ROUTE, "POST", "/mcp")
    assert ex is not None
    headers = [challenge]
    assert not ex.head(401, headers)
    assert headers == [
        (
            b"www-authenticate",
            b'Bearer resource_metadata="https://mcp.'
            + DOMAIN.encode()
            + b'/.well-known/oauth-protected-resource/mcp"',
        )
    ]
    as_ex = r.exchange(AUTH_ROUTE, "GET", "/.well-known/openid-configuration")
    assert as_ex is not None
    headers = [challenge]
    as_ex.head(401, headers)
    assert headers == [challenge]
