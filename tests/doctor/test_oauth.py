"""Step 5: split OAuth metadata served by a loopback server behind a real in-process proxy."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from doctor_support import doctor, failed_steps, make_pair, statuses

from mcp_tunnel.doctor.model import Status
from support.proxy import start_proxy
from support.upstreams import Received, RecordingUpstream

DOMAIN = "tunnel.test"
SPLIT = {
    "issuer": f"https://auth.{DOMAIN}",
    "authorization_endpoint": "https://sso.example.com/authorize",
    "token_endpoint": f"https://auth.{DOMAIN}/token",
    "registration_endpoint": f"https://auth.{DOMAIN}/register",
    "code_challenge_methods_supported": ["S256"],
}
RESOURCE = {"resource": f"https://mcp.{DOMAIN}/mcp", "authorization_servers": [f"https://auth.{DOMAIN}"]}


def metadata_server(resource: dict[str, Any], auth: dict[str, Any]) -> RecordingUpstream:
    """One upstream for both routes; the proxy passes the tunnel Host, which says which is asked."""

    async def handler(req: Received, writer: asyncio.StreamWriter) -> None:
        host = (req.header("host") or "").split(":")[0]
        doc: dict[str, Any] | None = None
        if host == f"mcp.{DOMAIN}" and req.target.startswith("/.well-known/oauth-protected-resource"):
            doc = resource
        elif host == f"auth.{DOMAIN}" and req.target == "/.well-known/oauth-authorization-server":
            doc = auth
        if host == f"mcp.{DOMAIN}" and req.method == "POST" and req.target == "/mcp":
            challenge = (
                f'Bearer resource_metadata="https://mcp.{DOMAIN}/.well-known/oauth-protected-resource/mcp"'
            )
            writer.write(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: %s\r\nContent-Length: 0\r\n\r\n"
                % challenge.encode()
            )
            return
        if doc is None:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        body = json.dumps(doc).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )

    return RecordingUpstream(handler=handler)


async def diagnose_oauth(
    tmp: Path, resource: dict[str, Any], auth: dict[str, Any]
) -> tuple[Any, RecordingUpstream]:
    up = await metadata_server(resource, auth).start()
    pki = make_pair(tmp / "data", DOMAIN)
    upstream = f"http://127.0.0.1:{up.port}"
    proxy = await start_proxy(tmp, pki, {"mcp": upstream, "auth": upstream})
    try:
        report, _ = await doctor(proxy.config_path, proxy=proxy.url, paths={"mcp": "/mcp"})
    finally:
        await proxy.stop()
        await up.close()
    return report, up


async def test_split_metadata_done_right_passes(open_dir: Path) -> None:
    report, up = await diagnose_oauth(open_dir, RESOURCE, SPLIT)
    assert report.ok
    assert "asks for OAuth" in report.find("routing", "mcp_initialize:mcp").message  # type: ignore[union-attr]
    oauth = statuses(report, "oauth")
    assert oauth == {
        "protected_resource:mcp": "ok",
        "authorization_servers:mcp": "ok",
        "protected_resource:auth": "skip",  # the auth route advertises no protected resource
        f"as_metadata:auth.{DOMAIN}": "ok",
        f"token_endpoint:auth.{DOMAIN}": "ok",
        f"registration_endpoint:auth.{DOMAIN}": "ok",
        f"authorization_endpoint:auth.{DOMAIN}": "ok",
        f"pkce:auth.{DOMAIN}": "ok",
    }
    # fetched through the tunnel, as Anthropic's backend would: the path-specific document first
    targets = [(r.header("host"), r.target) for r in up.requests if r.method == "GET"]
    assert (f"mcp.{DOMAIN}", "/.well-known/oauth-protected-resource/mcp") in targets
    assert (f"auth.{DOMAIN}", "/.well-known/oauth-authorization-server") in targets


async def test_token_endpoint_on_an_internal_host_fails_with_the_split_fix(open_dir: Path) -> None:
    auth = {**SPLIT, "token_endpoint": "http://keycloak.corp.internal:8080/realms/x/token"}
    report, _ = await diagnose_oauth(open_dir, RESOURCE, auth)
    check = report.find("oauth", f"token_endpoint:auth.{DOMAIN}")
    assert check is not None and check.status is Status.FAIL
    assert "internal host" in check.message and "never connects" in check.message
    assert check.fix is not None and f"https://auth.{DOMAIN}/token" in check.fix
    assert failed_steps(report) == ["oauth"]


async def test_authorization_endpoint_on_the_tunnel_fails(open_dir: Path) -> None:
    auth = {**SPLIT, "authorization_endpoint": f"https://auth.{DOMAIN}/authorize"}
    report, _ = await diagnose_oauth(open_dir, RESOURCE, auth)
    check = report.find("oauth", f"authorization_endpoint:auth.{DOMAIN}")
    assert check is not None and check.status is Status.FAIL
    assert check.fix is not None and "browser-reachable" in check.fix


async def test_missing_s256_and_internal_authorization_server(open_dir: Path) -> None:
    report, _ = await diagnose_oauth(
        open_dir, RESOURCE, {**SPLIT, "code_challenge_methods_supported": ["plain"]}
    )
    assert statuses(report, "oauth")[f"pkce:auth.{DOMAIN}"] == "fail"
    resource = {**RESOURCE, "authorization_servers": ["http://auth.internal:9000"]}
    report, _ = await diagnose_oauth(open_dir, resource, SPLIT)
    check = report.find("oauth", "authorization_servers:mcp")
    assert check is not None and check.status is Status.FAIL
    assert check.fix is not None and "route the authorization server through the tunnel" in check.fix
    assert not any(name.startswith("as_metadata") for name in statuses(report, "oauth"))


async def test_resource_off_the_tunnel_fails(open_dir: Path) -> None:
    report, _ = await diagnose_oauth(
        open_dir, {**RESOURCE, "resource": "http://mcp.internal:8080/mcp"}, SPLIT
    )
    check = report.find("oauth", "protected_resource:mcp")
    assert check is not None and check.status is Status.FAIL
    assert check.fix is not None and f"https://mcp.{DOMAIN}/mcp" in check.fix


async def test_oauth_without_proxy_is_skipped(open_dir: Path, up_url: str) -> None:
    from support.proxy import write_config

    pki = make_pair(open_dir / "data", DOMAIN)
    report, _ = await doctor(write_config(open_dir, pki, {"mcp": up_url}))
    assert statuses(report, "oauth") == {"oauth": "skip"}


INTERNAL_AS = {
    "issuer": "http://keycloak.corp.internal:8080",
    "authorization_endpoint": "http://keycloak.corp.internal:8080/authorize",
    "token_endpoint": "http://keycloak.corp.internal:8080/token",
    "registration_endpoint": "http://keycloak.corp.internal:8080/register",
    "code_challenge_methods_supported": ["S256"],
}
INTERNAL_RESOURCE = {
    "resource": "http://127.0.0.1:9000/mcp",
    "authorization_servers": ["http://keycloak.corp.internal:8080"],
}
OAUTH_SECTION = {
    "authorization_server": "auth",
    "authorization_endpoint": "https://sso.example.com/authorize",
    "protected_resources": ["mcp"],
}


async def test_oauth_section_makes_unsplit_metadata_healthy(open_dir: Path) -> None:
    """Servers that publish their internal URLs, behind a proxy that rewrites them (SPEC §5.1)."""
    up = await metadata_server(INTERNAL_RESOURCE, INTERNAL_AS).start()
    pki = make_pair(open_dir / "data", DOMAIN)
    upstream = f"http://127.0.0.1:{up.port}"
    proxy = await start_proxy(open_dir, pki, {"mcp": upstream, "auth": upstream}, oauth=OAUTH_SECTION)
    try:
        report, _ = await doctor(proxy.config_path, proxy=proxy.url, paths={"mcp": "/mcp"})
    finally:
        await proxy.stop()
        await up.close()
    assert failed_steps(report) == []
    oauth = statuses(report, "oauth")
    assert oauth["protected_resource:mcp"] == "ok"
    assert oauth["authorization_servers:mcp"] == "ok"
    for check in ("token_endpoint", "registration_endpoint", "authorization_endpoint", "pkce", "as_metadata"):
        assert oauth[f"{check}:auth.{DOMAIN}"] == "ok", (check, oauth)


async def test_doctor_judges_documents_as_the_configured_proxy_serves_them(open_dir: Path) -> None:
    """The rewrite the doctor applies is the proxy's: a judgement of the unsplit documents with
    the section is healthy, without it the same documents fail."""
    from mcp_tunnel.config import load_config
    from mcp_tunnel.doctor.oauth import judge_as_metadata, served_as_metadata, served_resource
    from support.proxy import write_config

    pki = make_pair(open_dir / "data", DOMAIN)
    routes = {"mcp": "http://127.0.0.1:9000", "auth": "http://keycloak.corp.internal:8080"}
    with_section = load_config(str(write_config(open_dir, pki, routes, oauth=OAUTH_SECTION)))
    doc, warnings = served_as_metadata(dict(INTERNAL_AS), with_section.routes["auth"], with_section)
    assert warnings == []
    assert all(c.status is Status.OK for c in judge_as_metadata(f"https://auth.{DOMAIN}", doc, with_section))
    resource = served_resource(dict(INTERNAL_RESOURCE), with_section.routes["mcp"], with_section)
    assert resource == {
        "resource": f"https://mcp.{DOMAIN}/mcp",
        "authorization_servers": [f"https://auth.{DOMAIN}"],
    }
    without = load_config(str(write_config(open_dir, pki, routes)))
    same, _ = served_as_metadata(dict(INTERNAL_AS), without.routes["auth"], without)
    assert same == INTERNAL_AS
    assert any(c.status is Status.FAIL for c in judge_as_metadata(f"https://auth.{DOMAIN}", same, without))
