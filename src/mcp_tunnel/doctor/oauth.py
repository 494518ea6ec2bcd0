"""Step 5, OAuth through the tunnel (digest §11): split endpoints, judged from the metadata.

Two parties talk to an authorization server: users' browsers (the authorization endpoint, which
must NOT be a tunnel host: those accept only Claude) and Anthropic's backend (discovery, token,
registration: these must be reachable by it, which behind an allowlist means through the
tunnel). The doctor fetches the metadata through the tunnel exactly as the backend would and
checks each endpoint against that split.

With the config's ``oauth:`` section the proxy rewrites those documents (SPEC §5.1); the doctor
judges them as the proxy serves them: the same rewrite is applied to what it fetched (a no-op on
a document the proxy already rewrote), so a proxy without the section, or an upstream fetched
another way, is judged as the configured proxy will present it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from mcp_tunnel.client import TunnelClient
from mcp_tunnel.config import Config
from mcp_tunnel.doctor.context import Context
from mcp_tunnel.doctor.model import Check, fail, ok, skip, warn
from mcp_tunnel.doctor.probes import HttpResult
from mcp_tunnel.oauth_rewrite import public_url, rewrite_as_metadata, rewrite_resource_metadata
from mcp_tunnel.routing import Route, normalize_host

PRM = "/.well-known/oauth-protected-resource"
INTERNAL_SUFFIXES = (
    ".internal",
    ".local",
    ".localhost",
    ".lan",
    ".corp",
    ".home.arpa",
    ".intranet",
    ".private",
    ".cluster.local",
)


def is_tunnel_host(host: str, config: Config) -> bool:
    domain = config.tunnel_domain
    if domain and (host == domain or host.endswith("." + domain)):
        return True
    return host in config.routes


def looks_internal(host: str) -> bool:
    """A name or address a browser or Anthropic's backend on the internet cannot reach."""
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        pass
    return "." not in host or host == "localhost" or host.endswith(INTERNAL_SUFFIXES)


def _host(url: str) -> str:
    return normalize_host(urlsplit(url).netloc.rpartition("@")[2])


def judge_backend_endpoint(name: str, field: str, url: object, config: Config, as_host: str) -> Check:
    """token/registration endpoints: Anthropic's backend calls them, so they belong on the tunnel."""
    want = f"https://{as_host}{'/token' if field == 'token_endpoint' else '/register'}"
    fix = (
        f"serve split metadata: {field} on the tunnel (e.g. {want}), authorization_endpoint on the "
        "browser-reachable host; or use the connector's Tunnel OAuth configuration"
    )
    if not isinstance(url, str) or not url:
        return fail(name, f"the metadata has no {field}", fix)
    host = _host(url)
    if is_tunnel_host(host, config):
        if urlsplit(url).scheme != "https":
            return fail(name, f"{field} {url} must be an https:// URL", f"use {want}")
        if config.router.lookup(host) is None:
            return fail(
                name,
                f"{field} {url} is on the tunnel domain but no route serves {host}",
                (
                    "add a route for the authorization server (routes: { auth: http://auth-server:port }); "
                    "then restart the proxy"
                ),
            )
        return ok(name, f"{field} {url} is on the tunnel: Anthropic's backend reaches it through the proxy")
    if looks_internal(host):
        return fail(
            name,
            f"{field} {url} is an internal host: Claude can't reach it, so sign-in succeeds in the browser "
            "but the connector never connects",
            fix,
        )
    return warn(
        name,
        f"{field} {url} is off the tunnel: it must be reachable from Anthropic's backend on the internet "
        "(an IP allowlist blocks it)",
        fix,
    )


def judge_authorization_endpoint(name: str, url: object, config: Config) -> Check:
    """The browser loads it, so it must not be a tunnel host (those accept only Claude)."""
    if not isinstance(url, str) or not url:
        return fail(
            name,
            "the metadata has no authorization_endpoint",
            "advertise the browser-reachable /authorize URL",
        )
    host = _host(url)
    if is_tunnel_host(host, config):
        return fail(
            name,
            f"authorization_endpoint {url} is a tunnel host: users' browsers cannot load it (OAuth sign-in "
            "redirects to a tunnel address that doesn't load)",
            "advertise the authorization endpoint on the existing browser-reachable host "
            "(https://<your-allowlisted-host>/authorize); keep token and registration on the tunnel",
        )
    if looks_internal(host):
        return warn(
            name,
            (
                f"authorization_endpoint {url} looks internal: fine only if every user's browser is on that "
                "network"
            ),
            "advertise a host users' browsers can reach",
        )
    return ok(name, f"authorization_endpoint {url} is off the tunnel (browsers load it)")


def judge_as_metadata(as_url: str, doc: Mapping[str, object], config: Config) -> list[Check]:
    as_host = _host(as_url)
    checks: list[Check] = []
    issuer = doc.get("issuer")
    if isinstance(issuer, str) and issuer.rstrip("/") != as_url.rstrip("/"):
        checks.append(
            warn(
                f"issuer:{as_host}",
                (
                    f"issuer {issuer} differs from the advertised authorization server {as_url} (RFC 8414 "
                    "wants them equal)"
                ),
                f"set issuer to {as_url}",
            )
        )
    checks.append(
        judge_backend_endpoint(
            f"token_endpoint:{as_host}", "token_endpoint", doc.get("token_endpoint"), config, as_host
        )
    )
    reg = doc.get("registration_endpoint")
    if reg is None:
        checks.append(
            ok(
                f"registration_endpoint:{as_host}",
                "none advertised: no dynamic client registration (use your own OAuth client)",
            )
        )
    else:
        checks.append(
            judge_backend_endpoint(
                f"registration_endpoint:{as_host}", "registration_endpoint", reg, config, as_host
            )
        )
    checks.append(
        judge_authorization_endpoint(
            f"authorization_endpoint:{as_host}", doc.get("authorization_endpoint"), config
        )
    )
    methods = doc.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" in methods:
        checks.append(ok(f"pkce:{as_host}", "code_challenge_methods_supported includes S256"))
    else:
        checks.append(
            fail(
                f"pkce:{as_host}",
                f"code_challenge_methods_supported is {methods!r}: S256 is required",
                'add "code_challenge_methods_supported": ["S256"] to the metadata',
            )
        )
    return checks


@dataclass(frozen=True, slots=True)
class ResourceJudgement:
    checks: list[Check]
    tunnel_servers: list[str]  # authorization servers to fetch through the tunnel


def judge_protected_resource(
    key: str, host: str, path: str, doc: object, config: Config
) -> ResourceJudgement:
    """`resource` and `authorization_servers` must point at tunnel hosts (digest §11 step 3)."""
    name = f"protected_resource:{key}"
    if not isinstance(doc, dict):
        return ResourceJudgement(
            [fail(name, f"https://{host}{PRM} is not a JSON object", "serve RFC 9728 metadata as JSON")], []
        )
    checks: list[Check] = []
    resource = doc.get("resource")
    want = f"https://{host}{path}"
    if not isinstance(resource, str) or not is_tunnel_host(_host(resource), config):
        checks.append(
            fail(
                name,
                f"resource is {resource!r}, not a tunnel URL: Claude reaches this server as {want}",
                f'set "resource": "{want}"',
            )
        )
    else:
        checks.append(ok(name, f"resource {resource} is on the tunnel"))
    servers = doc.get("authorization_servers")
    tunnel: list[str] = []
    aname = f"authorization_servers:{key}"
    if not isinstance(servers, list) or not servers:
        checks.append(
            fail(
                aname,
                "no authorization_servers listed",
                'list the tunnel issuer, e.g. "https://auth.<tunnel-domain>"',
            )
        )
        return ResourceJudgement(checks, tunnel)
    for url in servers:
        shost = _host(str(url))
        if is_tunnel_host(shost, config) and config.router.lookup(shost) is not None:
            tunnel.append(str(url))
            checks.append(ok(aname, f"{url} is on the tunnel and routed"))
        elif is_tunnel_host(shost, config):
            checks.append(
                fail(
                    aname,
                    f"{url} is on the tunnel domain but no route serves {shost}",
                    "add a route for the authorization server",
                )
            )
        else:
            checks.append(
                (fail if looks_internal(shost) else warn)(
                    aname,
                    f"{url} is off the tunnel: Anthropic's backend fetches its metadata and token "
                    "endpoint from "
                    "the internet",
                    "route the authorization server through the tunnel (routes: "
                    "{ auth: http://auth-server:port }) "
                    "and list https://auth.<tunnel-domain> here",
                )
            )
    return ResourceJudgement(checks, tunnel)


def metadata_paths(as_url: str) -> list[str]:
    """RFC 8414 (path inserted after the well-known prefix), then OpenID Connect discovery."""
    path = urlsplit(as_url).path.rstrip("/")
    candidates = [
        f"/.well-known/oauth-authorization-server{path}",
        f"/.well-known/openid-configuration{path}",
        f"{path}/.well-known/openid-configuration",
    ]
    return list(dict.fromkeys(candidates))


# --- the step ----------------------------------------------------------------------------------


async def run(ctx: Context) -> list[Check]:
    config = ctx.config
    if config is None:
        return [skip("oauth", "the config did not load, so the routes are unknown")]
    if ctx.options.proxy is None or ctx.ca_file is None:
        return [skip("oauth", "needs --proxy and a CA: the metadata is fetched through the tunnel")]
    client = ctx.probes.tunnel(ctx.options.proxy, ctx.ca_file)
    checks: list[Check] = []
    servers: dict[str, None] = {}
    for route in config.routes.values():
        host = config.router.public_host(route)
        name = f"protected_resource:{route.key}"
        blocked = ctx.blocked(route.key, host)
        if blocked is not None:
            checks.append(skip(name, blocked))
            continue
        path = ctx.options.path_for(route.key) or ""
        targets = list(dict.fromkeys([f"{PRM}{path.rstrip('/')}", PRM]))
        result = HttpResult()
        for target in targets:
            result = await ctx.probes.request(
                client, host, "GET", target, headers=(("Accept", "application/json"),)
            )
            if result.status == 200:
                break
        if result.error is not None:
            checks.append(fail(name, f"{host}{PRM}: {result.stage}: {result.error}", "see the routing step"))
            continue
        if result.status != 200:
            checks.append(
                skip(name, f"{host} does not serve {PRM} (HTTP {result.status}): no OAuth advertised here")
            )
            continue
        judged = judge_protected_resource(
            route.key, host, path, served_resource(result.json(), route, config), config
        )
        checks += judged.checks
        servers.update(dict.fromkeys(judged.tunnel_servers))
    for as_url in servers:
        checks += await _authorization_server(ctx, config, client, as_url)
    if not checks:
        checks.append(skip("oauth", "no routes"))
    return checks


async def _authorization_server(
    ctx: Context, config: Config, client: TunnelClient, as_url: str
) -> list[Check]:
    as_host = _host(as_url)
    name = f"as_metadata:{as_host}"
    route = config.router.lookup(as_host)
    blocked = ctx.blocked(route.key, as_host) if route is not None else None
    if blocked is not None:
        return [skip(name, blocked)]
    result = HttpResult()
    fetched = ""
    for target in metadata_paths(as_url):
        result = await ctx.probes.request(
            client, as_host, "GET", target, headers=(("Accept", "application/json"),)
        )
        if result.status == 200:
            fetched = target
            break
    if result.error is not None:
        return [
            fail(
                name,
                f"{as_host}: {result.stage}: {result.error}",
                "see the tls and routing steps for this route",
            )
        ]
    doc = result.json() if result.status == 200 else None
    warnings: list[str] = []
    if isinstance(doc, dict) and route is not None:
        doc, warnings = served_as_metadata(doc, route, config)
    if not isinstance(doc, dict):
        return [
            fail(
                name,
                (
                    f"https://{as_host} serves no authorization server metadata (last answer HTTP "
                    f"{result.status})"
                ),
                f"serve RFC 8414 metadata at https://{as_host}/.well-known/oauth-authorization-server",
            )
        ]
    rewritten = [
        warn(f"oauth_rewrite:{as_host}", f"the proxy's oauth: section: {w}", "see docs/oauth.md")
        for w in warnings
        if "RFC 9207" in w  # the S256 warning is the pkce check's own failure
    ]
    return [
        ok(name, f"fetched https://{as_host}{fetched} through the tunnel"),
        *judge_as_metadata(as_url, doc, config),
        *rewritten,
    ]


def served_resource(doc: object, route: Route, config: Config) -> object:
    """The protected resource metadata as the proxy serves it (rewritten with an oauth: section)."""
    oauth = config.oauth
    if oauth is None or route.key not in oauth.protected_resources or not isinstance(doc, dict):
        return doc
    doc = dict(doc)
    rewrite_resource_metadata(
        doc,
        public=public_url(route.key, config.tunnel_domain),
        authorization_server=public_url(oauth.authorization_server, config.tunnel_domain),
    )
    return doc


def served_as_metadata(
    doc: dict[str, object], route: Route, config: Config
) -> tuple[dict[str, object], list[str]]:
    """Authorization server metadata as the proxy serves it, and the rewrite's warnings."""
    oauth = config.oauth
    if oauth is None or route.key != oauth.authorization_server:
        return doc, []
    doc = dict(doc)
    warnings = rewrite_as_metadata(
        doc,
        public=public_url(route.key, config.tunnel_domain),
        authorization_endpoint=oauth.authorization_endpoint,
        upstream=route.upstream,
    )
    return doc, warnings
