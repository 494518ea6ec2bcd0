"""Step 4, routing and IP validation: can the proxy reach each route's upstream, and may it?

The doctor resolves each upstream and judges every address against `upstream.allowed_ips` with
the proxy's own function (`proxy.upstream.vetted_addresses`, the connect seam's resolve-and-vet),
and connects only to addresses the policy allows: it never opens a connection the proxy would
refuse. With `--path`, an MCP `initialize` goes through the whole path (tunnel, proxy, upstream).
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from ipaddress import IPv4Address

from mcp_tunnel import __version__
from mcp_tunnel.config import Config
from mcp_tunnel.doctor.context import Context
from mcp_tunnel.doctor.model import Check, Status, fail, ok, skip, warn
from mcp_tunnel.doctor.probes import ConnectResult, HttpResult
from mcp_tunnel.ippolicy import IPPolicy, covering_network
from mcp_tunnel.proxy.upstream import upstream_ssl_context, vetted_addresses
from mcp_tunnel.routing import Route

MCP_PROTOCOL_VERSION = "2025-06-18"
RESTART = "then restart the proxy (docker compose restart mcp-proxy, or helm upgrade)"


@dataclass(frozen=True, slots=True)
class RouteFacts:
    route: Route
    addresses: tuple[str, ...] = ()
    resolve_error: str | None = None
    connect: ConnectResult | None = None  # None: not attempted


def judge_resolve(f: RouteFacts) -> Check:
    r = f.route
    name = f"resolve:{r.key}"
    if f.resolve_error is not None:
        return fail(
            name,
            f"{r.key} -> {r.upstream}: {r.host} does not resolve ({f.resolve_error}); the proxy answers 502",
            f"check the name from the proxy's network (dig +short {r.host}); in Compose use the upstream's "
            "service name, and run the MCP server as a Compose service rather than on the host",
        )
    if not f.addresses:
        return fail(name, f"{r.host} has no IPv4 address (AAAA answers are ignored)", "give it an A record")
    if f.addresses == (r.host,):
        return ok(name, f"{r.key} -> {r.upstream}: an IP address, nothing to resolve")
    return ok(name, f"{r.key} -> {r.upstream}: {r.host} resolves to {', '.join(f.addresses)}")


def judge_policy(f: RouteFacts, policy: IPPolicy) -> Check:
    """Every address inside allowed_ips; if not, the exact, narrowest CIDR to add."""
    r = f.route
    name = f"allowed_ips:{r.key}"
    if f.resolve_error is not None or not f.addresses:
        return skip(name, f"{r.host} did not resolve")
    allowed, refused = policy.partition(f.addresses)
    if not refused:
        why = "IP validation is off" if policy.disabled else "inside upstream.allowed_ips"
        return ok(name, f"{', '.join(allowed)} {why}")
    cidr = covering_network(refused)
    keep = ", ".join(str(n) for n in (*policy.networks, cidr))
    public = [a for a in refused if IPv4Address(a).is_global]
    note = f" ({', '.join(public)} is a public address: make sure the route is right)" if public else ""
    fix = (
        f"add {cidr} to upstream.allowed_ips; the list replaces the default, so write all you need: "
        f"allowed_ips: [{keep}]{note}. Or run the upstream as a Compose service on a private network; "
        f"avoid 0.0.0.0/0 and disable_ip_validation; {RESTART}"
    )
    if allowed:
        return warn(
            name,
            f"{r.host} resolves to {', '.join(refused)} outside upstream.allowed_ips as well as "
            f"{', '.join(allowed)}; the proxy uses only the allowed ones",
            fix,
        )
    return fail(
        name,
        f"IP validation failed: {refused[0]} is not a private address ({r.key} -> {r.upstream}); "
        "the proxy answers 502 and the doctor does not connect to it",
        fix,
    )


def judge_connect(f: RouteFacts, policy: IPPolicy) -> Check:
    r = f.route
    name = f"connect:{r.key}"
    if f.resolve_error is not None or not f.addresses:
        return skip(name, f"{r.host} did not resolve")
    if f.connect is None:
        return skip(name, "no address the policy allows: the doctor never connects to a refused address")
    c = f.connect
    if c.error is None:
        what = "TLS" if r.scheme == "https" else "TCP"
        return ok(name, f"{what} connect to {c.address}:{c.port} works")
    if c.error.startswith("TLS failed"):
        return fail(
            name,
            f"{r.upstream}: {c.error}",
            f"set upstream.tls.ca_file to the CA that signs {r.host}'s certificate "
            "(or upstream.tls.include_system_cas: true for a public CA)",
        )
    return fail(
        name,
        f"dial tcp {c.address}:{c.port}: connect: {c.error} ({r.key} -> {r.upstream}); the proxy answers 502",
        f"start the upstream or fix the route's port; check from the proxy's network (nc -vz {r.host} "
        f"{r.port}); "
        "with rootless Docker, host.docker.internal does not work: run the MCP server as a Compose service",
    )


def initialize_body() -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": MCP_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "mcp-tunnel-doctor", "version": __version__},
            },
        }
    ).encode()


def judge_initialize(key: str, host: str, path: str, result: HttpResult) -> Check:
    """What an MCP initialize through the tunnel answered, and what that status means."""
    name = f"mcp_initialize:{key}"
    url = f"https://{host}{path}"
    if result.error is not None:
        return fail(
            name, f"{url}: {result.stage}: {result.error}", "see the handshake and connect checks above"
        )
    status = result.status
    body_line = result.body.decode("utf-8", "replace").strip().splitlines()[:1]
    said = f" ({body_line[0][:120]})" if body_line else ""
    if status == 200:
        doc = result.json()
        info = doc.get("result", {}).get("serverInfo") if isinstance(doc, dict) else None
        if isinstance(info, dict):
            return ok(
                name,
                f"initialize via {url}: server {info.get('name')!s} {info.get('version', '')!s}".rstrip(),
            )
        err = doc.get("error") if isinstance(doc, dict) else None
        if err is not None:
            return fail(
                name,
                f"{url} answered a JSON-RPC error: {json.dumps(err)[:200]}",
                "check the MCP server's logs",
            )
        return fail(
            name, f"{url} answered 200 but not an MCP initialize result", "is --path the MCP endpoint?"
        )
    if status == 401:
        return ok(
            name, f"{url} answered 401: the path works and the server asks for OAuth (see the oauth step)"
        )
    if status == 404:
        return fail(
            name,
            f"{url} answered 404{said}: the upstream serves no MCP endpoint at {path}",
            (
                "use the server's MCP path in the connector URL (https://<route>.<tunnel-domain>/mcp) and in "
                "--path"
            ),
        )
    if status == 421:
        return fail(
            name,
            f"{url} answered 421{said}: the upstream refuses Host {host} (DNS-rebinding protection, as the "
            "MCP Python SDK does when bound to loopback)",
            f"set upstream.host_header: upstream in the proxy config, or allow {host} on the MCP server",
        )
    if status == 502 and "No route configured" in said:
        return fail(
            name,
            f"{url} answered 502{said}: the proxy has no route for {host}",
            "set tunnel_domain to the exact domain on the tunnel page, and make the connector "
            "subdomain a routes key",
        )
    if status in (502, 503, 504):
        return fail(
            name, f"{url} answered {status}{said}", "see the resolve, allowed_ips and connect checks above"
        )
    return fail(name, f"{url} answered {status}{said}", "check the MCP server's logs")


async def run(ctx: Context) -> list[Check]:
    config = ctx.config
    if config is None:
        return [skip("routes", "the config did not load, so the routes are unknown")]
    checks: list[Check] = []
    for route in config.routes.values():
        facts = await _gather(ctx, config, route)
        checks += [judge_resolve(facts), judge_policy(facts, config.upstream.policy)]
        connect = judge_connect(facts, config.upstream.policy)
        checks.append(connect)
        if connect.status is not Status.OK:
            ctx.upstream_down[route.key] = f"the upstream of {route.key} is not reachable (routing step)"
        checks.append(await _initialize(ctx, config, route))
    return checks


async def _gather(ctx: Context, config: Config, route: Route) -> RouteFacts:
    probes = ctx.probes
    try:
        vetted = await vetted_addresses(
            probes.resolver, config.upstream.policy, route.host, route.port, probes.timeout
        )
    except (OSError, TimeoutError) as exc:
        reason = (
            "timed out" if isinstance(exc, TimeoutError) else (getattr(exc, "strerror", None) or str(exc))
        )
        return RouteFacts(route, resolve_error=reason)
    addresses, allowed = vetted.answer, vetted.allowed
    if not allowed:
        return RouteFacts(route, tuple(addresses))
    tls: ssl.SSLContext | None = None
    if route.scheme == "https":
        try:
            tls = upstream_ssl_context(config.upstream)
        except (OSError, ssl.SSLError) as exc:
            return RouteFacts(
                route, tuple(addresses), connect=ConnectResult(allowed[0], route.port, f"TLS failed: {exc}")
            )
    result: ConnectResult | None = None
    for address in allowed:  # only vetted addresses, in resolver order, as the proxy dials them
        result = await probes.connect(address, route.port, tls=tls, server_name=route.host)
        if result.error is None:
            break
    return RouteFacts(route, tuple(addresses), connect=result)


async def _initialize(ctx: Context, config: Config, route: Route) -> Check:
    name = f"mcp_initialize:{route.key}"
    path = ctx.options.path_for(route.key)
    if path is None:
        return skip(
            name, "no --path for this route: pass --path /mcp to run an MCP initialize through the tunnel"
        )
    host = config.router.public_host(route)
    blocked = ctx.blocked(route.key, host)
    if blocked is not None:
        return skip(name, blocked)
    assert ctx.options.proxy is not None and ctx.ca_file is not None
    client = ctx.probes.tunnel(ctx.options.proxy, ctx.ca_file)
    result = await ctx.probes.request(
        client,
        host,
        "POST",
        path,
        headers=(("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream")),
        body=initialize_body(),
    )
    session = result.header("mcp-session-id")
    if session and result.status == 200:
        # Be a good citizen: end the session the check opened.
        await ctx.probes.request(client, host, "DELETE", path, headers=(("Mcp-Session-Id", session),))
    return judge_initialize(route.key, host, path, result)
