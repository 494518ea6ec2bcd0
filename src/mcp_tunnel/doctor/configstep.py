"""Step 2, the proxy's config: everything `proxy -check` refuses, plus the dangerous settings.

The loader (`mcp_tunnel.config.load_config`) already gives one line naming file, line, field,
found and expected, with the official error text; the doctor adds the fix the official
troubleshooting gives for that text, and warns about settings that load but weaken the
SSRF protection.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network

from mcp_tunnel.config import Config, load_config
from mcp_tunnel.doctor.context import Context, assigned_domain
from mcp_tunnel.doctor.model import Check, fail, ok, skip, warn
from mcp_tunnel.errors import ConfigError
from mcp_tunnel.ippolicy import RFC1918

RESTART = "then restart the proxy (docker compose restart mcp-proxy, or helm upgrade)"
LOOPBACK = IPv4Network("127.0.0.0/8")
LINK_LOCAL = IPv4Network("169.254.0.0/16")  # cloud metadata endpoints live here
_IP_REFUSED = re.compile(r"IP validation failed: ([0-9.]+) is not a private address")
_OPEN_DENIED = re.compile(r"open (.+): permission denied")


def config_fix(exc: ConfigError, proxy_uid: int) -> str:
    """The official troubleshooting's fix for a load error, else the loader's own `expected`."""
    text = str(exc)
    if "cannot unmarshal !!seq into map[string]string" in text:
        return (
            "write routes as a mapping, one `name: http://host:port` per line (routes: "
            f"{{ echo: http://hello-mcp:9000 }}); {RESTART}"
        )
    if "invalid upstream (must be scheme://host:port)" in text:
        return (
            "use exactly scheme://host:port in the route; put the path in the connector URL instead "
            f"(https://<route>.<tunnel-domain>/mcp); {RESTART}"
        )
    m = _IP_REFUSED.search(text)
    if m:
        return (
            f"add {m.group(1)}/32 to upstream.allowed_ips (the list replaces the default, so keep the "
            "ranges you need), or run the upstream as a Compose service on a private network; avoid "
            f"0.0.0.0/0 and disable_ip_validation; {RESTART}"
        )
    m = _OPEN_DENIED.search(text)
    if m:
        return (
            f"chown {proxy_uid} {m.group(1)} (the proxy's user; the key stays 0600: the safe fix), or "
            f"chmod 644 {m.group(1)}, the official troubleshooting's fix, which makes it readable by "
            f"every user of the host; {RESTART}"
        )
    if "did you mean" in text:
        return f"rename the key as suggested; {RESTART}"
    if "no such file or directory" in text:
        return (
            "check the path; paths in a Compose deployment are container paths (/data/...), so run the "
            "doctor inside the proxy container or with a config whose paths exist here"
        )
    if exc.expected:
        field = f"{exc.field}: " if exc.field else ""
        return f"{field}expected {exc.expected}; {RESTART}"
    return f"correct the file as the message says; {RESTART}"


def judge_load(config: Config | None, error: ConfigError | None, proxy_uid: int) -> Check:
    if error is not None:
        return fail("load", str(error), config_fix(error, proxy_uid))
    assert config is not None
    listen = f"{config.listen_host or '*'}:{config.listen_port}"
    return ok("load", f"{config.path} is valid: {len(config.routes)} route(s), listening on {listen}")


def judge_policy(config: Config) -> list[Check]:
    """Warn about allow-lists that weaken SSRF protection; ok names what is allowed."""
    policy = config.upstream.policy
    name = "allowed_ips"
    if policy.disabled:
        return [
            warn(
                name,
                (
                    "upstream.disable_ip_validation is true: the proxy connects to any address a route "
                    "resolves to"
                ),
                "remove disable_ip_validation and list the narrowest CIDRs in upstream.allowed_ips",
            )
        ]
    checks: list[Check] = []
    for net in policy.networks:
        if net.prefixlen == 0:
            checks.append(
                warn(
                    name,
                    f"{net} in upstream.allowed_ips allows every address: no SSRF protection",
                    "list only the networks your upstreams live in",
                )
            )
        elif net.overlaps(LOOPBACK):
            checks.append(
                warn(
                    name,
                    f"{net} allows loopback: a route can reach services bound to the proxy host's 127.0.0.1",
                    "fine for a demo or a sidecar; in production run the upstream as a Compose service "
                    "on a private address",
                )
            )
        elif net.overlaps(LINK_LOCAL):
            checks.append(
                warn(
                    name,
                    f"{net} allows link-local 169.254.0.0/16, where cloud metadata services answer",
                    "remove it unless an upstream really lives there",
                )
            )
    if not checks:
        default = policy.networks == RFC1918
        shown = ", ".join(str(n) for n in policy.networks)
        checks.append(ok(name, f"{'the RFC1918 default' if default else 'allowed'}: {shown}"))
    return checks


def judge_warnings(config: Config) -> list[Check]:
    """The loader's own warnings, minus the ones `judge_policy` already words with a fix."""
    out: list[Check] = []
    for line in config.warnings:
        if "disable_ip_validation" in line or "allows every address" in line:
            continue
        fix = None
        if "no tunnel_domain" in line:
            fix = "set tunnel_domain to the exact domain on the tunnel page (Helm Managed mode sets it)"
        elif "never used" in line:
            fix = "remove one of the two keys"
        elif "host bits set" in line:
            fix = "write the network address"
        out.append(warn("loader_warning", line, fix))
    return out


def judge_tunnel_domain(config: Config, assigned: str | None, assigned_file: str | None) -> Check:
    """`tunnel_domain` against setup's `tunnel-domain` file (the assigned domain), when there is one."""
    name = "tunnel_domain"
    domain = config.tunnel_domain
    if assigned is not None and assigned_file is not None:
        if domain != assigned:
            shown = repr(domain) if domain else "not set"
            return fail(
                name,
                f"tunnel_domain is {shown} but the tunnel's domain (in {assigned_file}, written by setup) "
                f"is {assigned!r}: callers get `502 No route configured for host`",
                f"set tunnel_domain: {assigned} (or pass -tunnel-domain {assigned}); {RESTART}",
            )
        return ok(name, f"{domain} (matches {assigned_file})")
    if not domain:
        if any("." not in key for key in config.routes):
            return warn(
                name,
                "tunnel_domain is not set, so bare route keys match only the bare host",
                "set tunnel_domain to the exact domain on the tunnel page",
            )
        return ok(name, "not set; every route key is a full hostname")
    return ok(
        name, f"{domain} (compare it with the domain on the tunnel page; the certificate check follows)"
    )


def load(ctx: Context) -> None:
    """Gather: load the config once; every later step reads it from the context."""
    opts = ctx.options
    if opts.config is None:
        return
    try:
        ctx.config = load_config(opts.config, tunnel_domain=opts.tunnel_domain, environ=opts.env)
    except ConfigError as exc:
        ctx.config_error = exc


async def run(ctx: Context) -> list[Check]:
    if ctx.options.config is None:
        return [skip("load", "no --config given: nothing to check")]
    checks = [judge_load(ctx.config, ctx.config_error, ctx.options.proxy_uid)]
    if ctx.config is None:
        return checks
    assigned, assigned_file = assigned_domain(ctx)
    checks.append(judge_tunnel_domain(ctx.config, assigned, assigned_file))
    checks += judge_policy(ctx.config)
    checks += judge_warnings(ctx.config)
    return checks
