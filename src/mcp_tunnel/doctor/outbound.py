"""Step 1, the outbound connection: the tunnel token, the Compose wiring, the edge.

cloudflared's own logs are where these problems show (`No ingress rules were defined`, no
`Registered tunnel connection` lines); the doctor finds the causes without running cloudflared:
a truncated token, a missing `--url`, a cloudflared that does not share the proxy's network
namespace, a firewall in front of port 7844.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import shlex
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from mcp_tunnel import redact
from mcp_tunnel.doctor.context import DEFAULT_LISTEN_PORT, Context
from mcp_tunnel.doctor.model import Check, fail, ok, skip, warn
from mcp_tunnel.doctor.probes import ConnectResult

# cloudflared finds the edge through SRV _v2-origintunneld._tcp.argotunnel.com; these are the
# two regions it answers with. Egress must allow TCP and UDP 7844 to them (digest §8.4).
EDGE_HOSTS = ("region1.v2.argotunnel.com:7844", "region2.v2.argotunnel.com:7844")
EDGE_FIREWALL = "198.41.192.0/19 and 2606:4700:a0::/44"
TOKEN_FIX = (
    "copy the whole token again (Console: the tunnel's page; programmatic flow: sudo cat "
    "data/tunnel-token), export TUNNEL_TOKEN=<token>, then docker compose up -d cloudflared "
    "(after a rotation, restart cloudflared on every host)"
)
_B64 = re.compile(r"[A-Za-z0-9+/_=-]+\Z")
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


# --- the tunnel token ----------------------------------------------------------------------


def judge_token(token: str | None, source: str, read_error: str | None = None, hint: str = "") -> Check:
    """Does the token look like a cloudflared tunnel token (base64 JSON with a, t, s)?

    The token is a secret: no part of it is ever put in a message.
    """
    name = "tunnel_token"
    if read_error is not None:
        return fail(
            name, f"cannot read {source}: {read_error}", f"check the path and its permissions; {TOKEN_FIX}"
        )
    if token is None:
        return skip(
            name, "no tunnel token given (--token-file FILE, or TUNNEL_TOKEN in the environment)" + hint
        )
    text = token.strip()
    if not text:
        return fail(name, f"the token from {source} is empty", TOKEN_FIX)
    if text[0] in "'\"" or text[-1] in "'\"":
        return fail(
            name,
            f"the token from {source} is wrapped in quotes, which cloudflared takes as part of it",
            "remove the quotes around the token (in .env write TUNNEL_TOKEN=eyJ... without quotes)",
        )
    if any(ch.isspace() for ch in text):
        return fail(
            name,
            f"the token from {source} contains whitespace or a line break (pasted across lines?)",
            TOKEN_FIX,
        )
    if not _B64.match(text):
        return fail(name, f"the token from {source} is not base64 text", TOKEN_FIX)
    decoded = _b64decode(text)
    if decoded is None:
        return fail(
            name, f"the token from {source} ({len(text)} chars) does not decode: truncated?", TOKEN_FIX
        )
    try:
        doc: object = json.loads(decoded)
    except ValueError:
        return fail(
            name,
            f"the token from {source} ({len(text)} chars) decodes to incomplete JSON: truncated",
            TOKEN_FIX,
        )
    if not isinstance(doc, dict):
        return fail(name, f"the token from {source} decodes to JSON that is not an object", TOKEN_FIX)
    missing = [k for k in ("a", "t", "s") if not isinstance(doc.get(k), str) or not doc.get(k)]
    if missing:
        return warn(
            name,
            f"the token from {source} is base64 JSON but lacks {', '.join(missing)}: "
            "not a cloudflared tunnel token?",
            TOKEN_FIX,
        )
    try:
        tunnel = str(uuid.UUID(str(doc["t"])))
    except ValueError:
        return warn(name, f"the token from {source} has a tunnel id that is not a UUID", TOKEN_FIX)
    return ok(name, f"looks like a tunnel token for tunnel {tunnel} ({len(text)} chars, from {source})")


def _b64decode(text: str) -> bytes | None:
    """Standard or URL-safe base64, padding optional."""
    body = text.rstrip("=")
    if len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    try:
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None


# --- the Compose file ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ComposeFacts:
    path: str
    document: object = None
    error: str | None = None  # unreadable or not YAML
    listen_port: int = DEFAULT_LISTEN_PORT
    port_known: bool = False  # False when the config did not load (8080 assumed)
    token_available: bool = False  # TUNNEL_TOKEN in the doctor's environment or the .env beside
    dotenv_has_token: bool = False


def judge_compose(facts: ComposeFacts) -> list[Check]:
    """cloudflared needs `--url http://localhost:<port>` and the proxy's network namespace."""
    if facts.error is not None:
        return [
            fail(
                "compose.file",
                f"{facts.path}: {facts.error}",
                "fix the file so `docker compose config` accepts it",
            )
        ]
    services = _services(facts.document)
    if services is None:
        return [
            fail(
                "compose.file",
                f"{facts.path}: no `services:` mapping",
                "a Compose file has a services: mapping",
            )
        ]
    cf_name = _cloudflared(services)
    if cf_name is None:
        return [
            fail(
                "compose.cloudflared",
                f"{facts.path}: no cloudflared service (an image cloudflare/cloudflared or a "
                "`tunnel run` command)",
                "add the cloudflared service of the official layout (deploy/compose/*/docker-compose.yaml)",
            )
        ]
    cf = services[cf_name]
    network_mode = str(cf.get("network_mode") or "")
    proxy = _proxy_service(services, cf_name, network_mode)
    port = facts.listen_port
    want = f"http://127.0.0.1:{port}"  # the listener is bound to loopback in the shipped files
    proxy_label = proxy or "mcp-proxy"
    share = f'network_mode: "service:{proxy_label}"'
    assumed = "" if facts.port_known else f" (port {port} assumed: the config did not load)"
    checks = [ok("compose.cloudflared", f"service {cf_name!r}; proxy service {proxy_label!r}")]

    url = _url_arg(cf)
    url_host = ""
    if url is None:
        checks.append(
            fail(
                "compose.url",
                f"cloudflared ({cf_name}) has no --url: it has no local target, so callers get 500 "
                "and cloudflared logs `No ingress rules were defined` (or every request gets 503 in "
                "the manual flow)",
                f"add `--url {want}` to the cloudflared command and `{share}`, then docker compose up -d",
            )
        )
    elif "${" in url or "$" in url:
        checks.append(warn("compose.url", f"--url {url} uses a variable; cannot judge it here"))
    else:
        parts = urlsplit(url)
        url_host = (parts.hostname or "").lower()
        try:
            url_port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            url_port = -1
        if parts.scheme != "http":
            checks.append(
                fail(
                    "compose.url",
                    (
                        f"--url {url}: the proxy's listener is plain HTTP/WebSocket (TLS is inside the "
                        "WebSocket)"
                    ),
                    f"use --url {want}",
                )
            )
        elif url_port != port:
            checks.append(
                fail(
                    "compose.url",
                    f"--url {url} points at port {url_port} but the proxy listens on {port}{assumed}",
                    f"use --url {want} (the port of listen_addr)",
                )
            )
        elif url_host in _LOCAL_HOSTS or url_host == (proxy or "").lower():
            checks.append(ok("compose.url", f"--url {url}{assumed}"))
        else:
            checks.append(
                warn(
                    "compose.url",
                    f"--url {url} points at {url_host!r}, which is not the proxy service",
                    f"use --url {want} with {share}",
                )
            )
    checks.append(_judge_network_mode(network_mode, proxy, url_host, services, share))
    checks.append(_judge_token_env(cf, facts))
    return checks


def _judge_network_mode(
    network_mode: str, proxy: str | None, url_host: str, services: Mapping[str, Any], share: str
) -> Check:
    name = "compose.network_mode"
    target = network_mode.removeprefix("service:") if network_mode.startswith("service:") else None
    if target is not None and target in services and target == proxy:
        return ok(name, f"cloudflared shares the network namespace of {target!r}")
    if target is not None:
        return fail(
            name,
            f"network_mode {network_mode!r}: there is no proxy service {target!r} in this file",
            f"set {share} to the proxy's service name",
        )
    if proxy is not None and url_host == proxy.lower():
        return warn(
            name,
            f"no network_mode: cloudflared reaches {proxy!r} over the Compose network, not the shared "
            "namespace of the official layout",
            f"add {share} and use --url http://127.0.0.1:<port>",
        )
    shown = f"network_mode {network_mode!r}" if network_mode else "no network_mode"
    return fail(
        name,
        f"{shown}: localhost inside cloudflared's container is not the proxy, so --url cannot reach it",
        f"add {share} to the cloudflared service, then docker compose up -d",
    )


def _judge_token_env(cf: Mapping[str, Any], facts: ComposeFacts) -> Check:
    name = "compose.token"
    env = _environment(cf)
    command = _command(cf)
    if "--token" in command or any(a.startswith("--token=") for a in command):
        return ok(name, "cloudflared takes the token from its command line")
    if "TUNNEL_TOKEN" not in env:
        if cf.get("env_file"):
            return ok(name, "cloudflared reads its environment from env_file (TUNNEL_TOKEN not checked)")
        return fail(
            name,
            "cloudflared's environment does not pass TUNNEL_TOKEN: it cannot authenticate to the edge",
            "add `environment: [TUNNEL_TOKEN]` to the cloudflared service and export TUNNEL_TOKEN",
        )
    value = env["TUNNEL_TOKEN"]
    from_host = value is None or value.strip() in ("${TUNNEL_TOKEN}", "$TUNNEL_TOKEN")
    if from_host and not facts.token_available and not facts.dotenv_has_token:
        return warn(
            name,
            "TUNNEL_TOKEN is not set in this shell nor in .env beside the Compose file: "
            "`docker compose up` here would start cloudflared without a token",
            "export TUNNEL_TOKEN=$(sudo cat data/tunnel-token) (or put it in .env, mode 600), "
            "then docker compose up -d",
        )
    return ok(name, "cloudflared gets TUNNEL_TOKEN" + (" from the environment" if from_host else ""))


def _services(doc: object) -> dict[str, dict[str, Any]] | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        return None
    return {str(k): (v if isinstance(v, dict) else {}) for k, v in doc["services"].items()}


def _command(service: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, str):
            try:
                args += shlex.split(value)
            except ValueError:
                args += value.split()
        elif isinstance(value, list):
            args += [str(v) for v in value]
    return args


def _environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    env = service.get("environment")
    if isinstance(env, dict):
        return {str(k): (None if v is None else str(v)) for k, v in env.items()}
    out: dict[str, str | None] = {}
    if isinstance(env, list):
        for item in env:
            key, sep, value = str(item).partition("=")
            out[key.strip()] = value if sep else None
    return out


def _cloudflared(services: Mapping[str, Mapping[str, Any]]) -> str | None:
    for name, svc in services.items():
        if "cloudflared" in str(svc.get("image", "")):
            return name
    for name, svc in services.items():
        args = _command(svc)
        if "tunnel" in args and "run" in args:
            return name
    return "cloudflared" if "cloudflared" in services else None


def _proxy_service(services: Mapping[str, Mapping[str, Any]], cf_name: str, network_mode: str) -> str | None:
    if network_mode.startswith("service:") and network_mode[8:] in services:
        return network_mode[8:]
    if "mcp-proxy" in services:
        return "mcp-proxy"
    for name, svc in services.items():
        image = str(svc.get("image", ""))
        if name != cf_name and ("mcp-proxy" in image or "mcp-tunnel" in image) and "setup" not in name:
            return name
    return None


def _url_arg(service: Mapping[str, Any]) -> str | None:
    args = _command(service)
    for i, arg in enumerate(args):
        if arg == "--url" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--url="):
            return arg[6:]
    env_url = _environment(service).get("TUNNEL_URL")
    return env_url or None


def read_compose(path: str, listen_port: int | None, environ: Mapping[str, str]) -> ComposeFacts:
    """Gather: parse the Compose file (PyYAML) and look for a token in the shell or .env."""
    dotenv = Path(path).parent / ".env"
    dotenv_has = False
    with contextlib.suppress(OSError):
        dotenv_has = any(
            line.strip().startswith("TUNNEL_TOKEN=") and line.strip() != "TUNNEL_TOKEN="
            for line in dotenv.read_text(errors="replace").splitlines()
        )
    common: dict[str, Any] = {
        "listen_port": listen_port or DEFAULT_LISTEN_PORT,
        "port_known": listen_port is not None,
        "token_available": bool(environ.get("TUNNEL_TOKEN")),
        "dotenv_has_token": dotenv_has,
    }
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except OSError as exc:
        return ComposeFacts(path, error=f"cannot read: {exc.strerror or exc}", **common)
    except yaml.YAMLError as exc:
        return ComposeFacts(path, error="not valid YAML: " + " ".join(str(exc).split()), **common)
    return ComposeFacts(path, document=document, **common)


# --- the edge ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EdgeFacts:
    target: str  # host:port
    addresses: tuple[str, ...] = ()
    resolve_error: str | None = None
    connect: ConnectResult | None = None


def judge_edge(facts: Sequence[EdgeFacts], replaced: bool) -> list[Check]:
    """Resolving and reaching the edge on TCP 7844 (UDP/QUIC cannot be tested without cloudflared)."""
    fix = (
        f"allow outbound TCP and UDP 7844 to {EDGE_FIREWALL} (and DNS for argotunnel.com) "
        "from the cloudflared host"
    )
    checks: list[Check] = []
    for f in facts:
        if f.resolve_error is not None:
            checks.append(fail(f"edge.resolve:{f.target}", f"{f.target}: {f.resolve_error}", fix))
            checks.append(skip(f"edge.connect:{f.target}", "the edge host did not resolve"))
            continue
        checks.append(ok(f"edge.resolve:{f.target}", f"resolves to {', '.join(f.addresses)}"))
        c = f.connect
        if c is None or c.error is not None:
            why = c.error if c is not None else "no address"
            checks.append(fail(f"edge.connect:{f.target}", f"TCP to {f.target} failed: {why}", fix))
        else:
            note = "" if replaced else " (UDP 7844 for QUIC is not tested; cloudflared falls back to TCP)"
            checks.append(
                ok(f"edge.connect:{f.target}", f"TCP connect to {c.address} port {c.port} works{note}")
            )
    return checks


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


# --- the step -----------------------------------------------------------------------------------


async def run(ctx: Context) -> list[Check]:
    opts = ctx.options
    token, source, error = _read_token(ctx)
    saved = ctx.data_file("tunnel-token")
    hint = f"; setup wrote {saved}: pass --token-file {saved}" if saved else ""
    checks = [judge_token(token, source, error, hint)]
    if opts.compose:
        port = ctx.config.listen_port if ctx.config is not None else None
        checks += judge_compose(read_compose(opts.compose, port, opts.env))
    else:
        checks.append(skip("compose", "no --compose file given"))
    if not opts.edge and not opts.edge_host:
        checks.append(skip("edge", "off by default; --edge tests DNS and TCP 7844 to the tunnel edge"))
        return checks
    targets = [opts.edge_host] if opts.edge_host else list(EDGE_HOSTS)
    facts: list[EdgeFacts] = []
    for target in targets:
        host, port = split_host_port(target)
        addresses, result, error = await ctx.probes.edge(host, port)
        facts.append(EdgeFacts(target, tuple(addresses), error, result))
    checks += judge_edge(facts, replaced=opts.edge_host is not None)
    return checks


def _read_token(ctx: Context) -> tuple[str | None, str, str | None]:
    """(token, where it came from, why it could not be read)."""
    opts = ctx.options
    if opts.token_file:
        try:
            with open(opts.token_file, encoding="utf-8", errors="replace") as f:
                token = f.read()
        except OSError as exc:
            return None, opts.token_file, (exc.strerror or str(exc)).lower()
        redact.register(token)  # hidden from every line, the --debug traceback included
        return token, opts.token_file, None
    redact.register(opts.env.get("TUNNEL_TOKEN"))
    return opts.env.get("TUNNEL_TOKEN"), "TUNNEL_TOKEN", None
