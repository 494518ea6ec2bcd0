"""`mcp-tunnel setup init|renew-cert` (and the `setup` console script): flags and environment to
options, then one flow. Parsing is pure (`parse_init`, `parse_renew`) so every refusal is
tested without a network.

Precedence: a flag beats its environment variable; an empty TUNNEL_ID / API_URL / API_TOKEN
counts as unset (Compose and Helm pass empty values for "not given"). The identity-token
variables follow WIFR instead: an empty value still counts as set, so setting both is refused.
Flags take `--long=value`, `--long value` and, as Go's flag package does, `-long=value`.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NoReturn, TextIO

from mcp_tunnel import redact
from mcp_tunnel.certs.generate import KEY_TYPES
from mcp_tunnel.cli_common import add_debug_flag
from mcp_tunnel.duration import parse_duration
from mcp_tunnel.errors import MCPTunnelError, UsageError
from mcp_tunnel.setup.api import TunnelsAPI
from mcp_tunnel.setup.k8s import InClusterClient, running_in_pod
from mcp_tunnel.setup.outputs import Output, OutputSpec, open_output, parse_output_spec
from mcp_tunnel.setup.report import Reporter
from mcp_tunnel.setup.retry import RetryPolicy
from mcp_tunnel.setup.transport import HTTPTransport, Transport, is_loopback_host
from mcp_tunnel.setup.wif import BearerSource, StaticBearer, WIFExchange

DEFAULT_K8S_OUTPUT = "k8s-secret:mcp-tunnel"
DEFAULT_CERT_DURATION = "2160h"
DEFAULT_KEY_TYPE = "rsa4096"

USAGE = """usage: setup COMMAND [flags]

commands:
  init         create or attach to a tunnel, register a CA, fetch the token, write the output
  renew-cert   issue a new server certificate from the stored CA (no API calls)

run `setup COMMAND --help` for its flags"""


@dataclass(frozen=True)
class WIFCredentials:
    federation_rule_id: str
    organization_id: str
    workspace_id: str | None
    service_account_id: str | None
    token_file: str | None
    token_literal: str | None = field(repr=False)


@dataclass(frozen=True)
class APITokenCredentials:
    token: str = field(repr=False)


Credentials = WIFCredentials | APITokenCredentials


@dataclass(frozen=True)
class InitOptions:
    api_url: str
    tunnel_id: str | None
    output: OutputSpec
    output_defaulted: bool
    cert_duration: float
    token_version: str | None
    key_type: str
    credentials: Credentials


@dataclass(frozen=True)
class RenewOptions:
    output: OutputSpec
    output_defaulted: bool
    cert_duration: float
    renew_before: float
    key_type: str


class _Parser(argparse.ArgumentParser):
    """Errors as one UsageError line (exit 2), not argparse's usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"setup {self.prog.split()[-1]}: {message} (see --help)")


def _flag(p: argparse.ArgumentParser, name: str, help_: str, **kw: str) -> None:
    p.add_argument(f"--{name}", f"-{name}", dest=name.replace("-", "_"), help=help_, **kw)  # type: ignore[arg-type]


def _parser(command: str) -> _Parser:
    p = _Parser(prog=f"setup {command}", allow_abbrev=False)
    _flag(
        p,
        "output",
        "dir:PATH or k8s-secret:NAME (default k8s-secret:mcp-tunnel inside a pod)",
        metavar="DEST",
    )
    _flag(p, "cert-duration", "server certificate validity, Go duration (default 2160h)", metavar="DURATION")
    _flag(p, "key-type", f"server key type: {' or '.join(KEY_TYPES)} (default rsa4096)", metavar="TYPE")
    if command == "init":
        _flag(p, "api-url", "Claude API base URL (env API_URL); required", metavar="URL")
        _flag(
            p,
            "tunnel-id",
            "tunnel to attach to, tnl_... (env TUNNEL_ID); default: stored, else create",
            metavar="ID",
        )
        _flag(p, "token-version", "change-detection string; a new value rotates the token", metavar="V")
    else:
        _flag(
            p,
            "renew-before",
            "skip renewal while more than this is left (default 0: always)",
            metavar="DURATION",
        )
    add_debug_flag(p)
    return p


def check_credential(source: str, value: str) -> str:
    """A credential is one line of printable characters without spaces: anything else is a
    copy-and-paste accident that would otherwise surface as an HTTP library error quoting the
    whole header. Outer whitespace (a file's final newline) is removed; the value is never
    echoed, only where the first bad character is."""
    value = value.strip()
    problem = redact.credential_problem(value)
    if problem is not None:
        raise UsageError(
            f"{source} contains {problem}: a credential is one line without spaces; copy it again "
            "(the value is not shown)"
        )
    return value


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _duration(flag: str, text: str, *, allow_zero: bool) -> float:
    try:
        seconds = parse_duration(text.strip())
    except ValueError as exc:
        raise UsageError(f"--{flag}={text}: {exc}") from None
    if seconds < 0 or text.strip().startswith("-") or (seconds == 0 and not allow_zero):
        raise UsageError(f"--{flag}={text}: must be {'>= 0' if allow_zero else 'positive'}")
    return seconds


def _output(value: str | None, environ: Mapping[str, str]) -> tuple[OutputSpec, bool]:
    if value is None:
        if running_in_pod(environ):
            return parse_output_spec(DEFAULT_K8S_OUTPUT), True
        raise UsageError(
            "--output is required outside a Kubernetes pod: give --output=dir:PATH or k8s-secret:NAME"
        )
    try:
        return parse_output_spec(value), False
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _key_type(value: str | None) -> str:
    key_type = value or DEFAULT_KEY_TYPE
    if key_type not in KEY_TYPES:
        raise UsageError(f"--key-type={key_type}: expected one of {', '.join(KEY_TYPES)}")
    return key_type


def validate_api_url(raw: str) -> str:
    """https only, except on loopback (as the SDK allows): the bearer must not cross in clear."""
    parts = urllib.parse.urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--api-url {raw!r}: expected an https:// URL such as https://api.anthropic.com")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise UsageError(f"--api-url {raw!r}: must be https (plain http is allowed only for loopback)")
    if parts.query or parts.fragment or parts.username:
        raise UsageError(f"--api-url {raw!r}: must not carry a query, fragment or userinfo")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def resolve_credentials(environ: Mapping[str, str]) -> Credentials:
    api_token = _env(environ, "API_TOKEN")
    rule = _env(environ, "ANTHROPIC_FEDERATION_RULE_ID")
    has_file = "ANTHROPIC_IDENTITY_TOKEN_FILE" in environ
    has_literal = "ANTHROPIC_IDENTITY_TOKEN" in environ
    if api_token:
        if rule:
            raise UsageError(
                "both API_TOKEN (a Tunnels API key) and ANTHROPIC_FEDERATION_RULE_ID (Workload Identity "
                "Federation) are set; unset the one you do not mean to use"
            )
        return APITokenCredentials(check_credential("API_TOKEN", api_token))
    if not (rule or has_file or has_literal):
        raise UsageError(
            "no credentials: set ANTHROPIC_FEDERATION_RULE_ID, ANTHROPIC_ORGANIZATION_ID and one of "
            "ANTHROPIC_IDENTITY_TOKEN_FILE / ANTHROPIC_IDENTITY_TOKEN (Workload Identity Federation), "
            "or API_TOKEN (a claude.ai Tunnels API key)"
        )
    if has_file and has_literal:
        raise UsageError(
            "both ANTHROPIC_IDENTITY_TOKEN_FILE and ANTHROPIC_IDENTITY_TOKEN are set (an empty value still "
            "counts as set); unset one"
        )
    if not (has_file or has_literal):
        raise UsageError("one of ANTHROPIC_IDENTITY_TOKEN_FILE or ANTHROPIC_IDENTITY_TOKEN is required")
    if not rule:
        raise UsageError("ANTHROPIC_FEDERATION_RULE_ID (fdrl_...) is required with an identity token")
    org = _env(environ, "ANTHROPIC_ORGANIZATION_ID")
    if not org:
        raise UsageError("ANTHROPIC_ORGANIZATION_ID (the organization UUID) is required")
    token_file = environ.get("ANTHROPIC_IDENTITY_TOKEN_FILE") if has_file else None
    literal = environ.get("ANTHROPIC_IDENTITY_TOKEN") if has_literal else None
    if has_file and not (token_file or "").strip():
        raise UsageError("ANTHROPIC_IDENTITY_TOKEN_FILE is set but empty; unset it or give the path")
    if has_literal and not (literal or "").strip():
        raise UsageError(
            "ANTHROPIC_IDENTITY_TOKEN is set but empty (an empty value still counts as set); unset it"
        )
    return WIFCredentials(
        federation_rule_id=rule,
        organization_id=org,
        workspace_id=_env(environ, "ANTHROPIC_WORKSPACE_ID"),
        service_account_id=_env(environ, "ANTHROPIC_SERVICE_ACCOUNT_ID"),
        token_file=token_file.strip() if token_file else None,
        token_literal=None if literal is None else check_credential("ANTHROPIC_IDENTITY_TOKEN", literal),
    )


def parse_init(argv: Sequence[str], environ: Mapping[str, str]) -> InitOptions:
    ns = _parser("init").parse_args(list(argv))
    api_url = ns.api_url if ns.api_url is not None else _env(environ, "API_URL")
    if not api_url:
        raise UsageError("--api-url (or API_URL) is required, e.g. --api-url=https://api.anthropic.com")
    output, defaulted = _output(ns.output, environ)
    tunnel_id = (ns.tunnel_id or "").strip() or _env(environ, "TUNNEL_ID")
    token_version = (ns.token_version or "").strip() or None
    return InitOptions(
        api_url=validate_api_url(api_url),
        tunnel_id=tunnel_id,
        output=output,
        output_defaulted=defaulted,
        cert_duration=_duration("cert-duration", ns.cert_duration or DEFAULT_CERT_DURATION, allow_zero=False),
        token_version=token_version,
        key_type=_key_type(ns.key_type),
        credentials=resolve_credentials(environ),
    )


def parse_renew(argv: Sequence[str], environ: Mapping[str, str]) -> RenewOptions:
    ns = _parser("renew-cert").parse_args(list(argv))
    output, defaulted = _output(ns.output, environ)
    return RenewOptions(
        output=output,
        output_defaulted=defaulted,
        cert_duration=_duration("cert-duration", ns.cert_duration or DEFAULT_CERT_DURATION, allow_zero=False),
        renew_before=_duration("renew-before", ns.renew_before or "0", allow_zero=True),
        key_type=_key_type(ns.key_type),
    )


@dataclass
class Hooks:
    """Seams for tests: a tiny-backoff retry policy, a transport, a clock."""

    retry: RetryPolicy | None = None
    transport: Transport | None = None
    now: Callable[[], datetime] | None = None


def _bearer(opts: InitOptions, transport: Transport, reporter: Reporter, retry: RetryPolicy) -> BearerSource:
    creds = opts.credentials
    if isinstance(creds, APITokenCredentials):
        reporter.secret(creds.token)
        reporter.info("authenticating with API_TOKEN (Tunnels API key)")
        return StaticBearer(creds.token)
    if creds.token_literal:
        reporter.secret(creds.token_literal)
    reporter.info(
        f"authenticating with Workload Identity Federation (rule {creds.federation_rule_id}"
        + (f", workspace {creds.workspace_id}" if creds.workspace_id else "")
        + ")"
    )
    return WIFExchange(
        api_url=opts.api_url,
        federation_rule_id=creds.federation_rule_id,
        organization_id=creds.organization_id,
        transport=transport,
        reporter=reporter,
        retry=retry,
        workspace_id=creds.workspace_id,
        service_account_id=creds.service_account_id,
        token_file=creds.token_file,
        token_literal=creds.token_literal,
    )


def _open(
    spec: OutputSpec, defaulted: bool, environ: Mapping[str, str], retry: RetryPolicy, reporter: Reporter
) -> Output:
    if defaulted:
        reporter.info(f"running in a Kubernetes pod: --output defaults to {spec}")
    client = InClusterClient.from_environment(environ, retry=retry) if spec.kind == "k8s-secret" else None
    return open_output(spec, environ, client, warn=reporter.warn)


def run(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    hooks: Hooks | None = None,
) -> int:
    hooks = hooks or Hooks()
    reporter = Reporter(out, err)
    errors = err or sys.stderr
    try:
        return _dispatch(list(argv), environ, reporter, hooks, out)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except MCPTunnelError as exc:
        print(f"error: {reporter.scrub(str(exc))}", file=errors, flush=True)
        return exc.exit_code


def _dispatch(
    argv: list[str], environ: Mapping[str, str], reporter: Reporter, hooks: Hooks, out: TextIO | None
) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, file=out or sys.stdout)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    retry = hooks.retry or RetryPolicy()
    now_kw = {"now": hooks.now} if hooks.now else {}
    if command == "init":
        from mcp_tunnel.setup.init import run_init

        opts = parse_init(rest, environ)
        transport = hooks.transport or HTTPTransport()
        bearer = _bearer(opts, transport, reporter, retry)
        output = _open(opts.output, opts.output_defaulted, environ, retry, reporter)
        api = TunnelsAPI(opts.api_url, bearer, transport, reporter, retry)
        run_init(
            api=api,
            output=output,
            reporter=reporter,
            tunnel_id=opts.tunnel_id,
            token_version=opts.token_version,
            cert_duration=opts.cert_duration,
            key_type=opts.key_type,
            **now_kw,
        )
        return 0
    if command == "renew-cert":
        from mcp_tunnel.setup.renew import run_renew

        ropts = parse_renew(rest, environ)
        output = _open(ropts.output, ropts.output_defaulted, environ, retry, reporter)
        run_renew(
            output=output,
            reporter=reporter,
            cert_duration=ropts.cert_duration,
            renew_before=ropts.renew_before,
            key_type=ropts.key_type,
            **now_kw,
        )
        return 0
    raise UsageError(f"unknown setup command {command!r}: expected init or renew-cert")


def main(argv: list[str]) -> int:
    """Entry point used by `mcp-tunnel setup` and the `setup` console script."""
    return run(argv, os.environ)
