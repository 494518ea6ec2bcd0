"""`setup init`: attach to or create a tunnel, make and register a CA, fetch the token, write.

Order (digest §6.2, with our recovery points):
1. read the output; decide the tunnel (flag/env > stored > create);
2. create: first record a unique display name in the output, then create; a lost answer is
   found again by that name, now or on the next run;
3. CA: reuse the stored one unless the output has none or it belongs to another tunnel; a new
   CA is saved to the output *before* it is registered, and registration is matched by
   fingerprint, so a failure anywhere after registering leaves nothing orphaned;
4. server certificate: keep a valid one for this CA and domain, else issue;
5. token: reveal, or rotate when --token-version changed against the recorded one;
6. write everything (skipped when nothing changed, so the proxy sees no churn).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from mcp_tunnel.certs.generate import generate_ca, pem_cert, pem_key
from mcp_tunnel.setup import plan
from mcp_tunnel.setup.api import Tunnel, TunnelsAPI
from mcp_tunnel.setup.errors import SetupError
from mcp_tunnel.setup.material import fingerprint, load_ca, new_server_pair, server_cert_problem
from mcp_tunnel.setup.outputs import Output
from mcp_tunnel.setup.report import Reporter
from mcp_tunnel.setup.state import (
    CA_CRT,
    CA_KEY,
    STATE,
    TUNNEL_DOMAIN,
    TUNNEL_ID,
    TUNNEL_TOKEN,
    State,
    Stored,
)


@dataclass(frozen=True)
class InitResult:
    tunnel_id: str
    domain: str
    created: bool
    registered_certificate: bool
    rotated: bool
    wrote: bool


def run_init(
    *,
    api: TunnelsAPI,
    output: Output,
    reporter: Reporter,
    tunnel_id: str | None,
    token_version: str | None,
    cert_duration: float,
    key_type: str,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> InitResult:
    original = output.load()
    stored = Stored(original)
    reporter.info(f"output {output.description}: " + ("empty" if stored.empty else "found a previous run"))
    state = stored.state
    files = dict(original)

    def save(new_files: Mapping[str, bytes]) -> None:
        output.save(new_files)
        original.clear()
        original.update(new_files)

    # 1-2. The tunnel.
    tplan = plan.plan_tunnel(tunnel_id, stored)
    created = False
    if tplan.action == "attach":
        assert tplan.tunnel_id is not None
        if tplan.changed_from:
            reporter.warn(
                f"the output belongs to tunnel {tplan.changed_from} but {tplan.tunnel_id} was requested "
                "(--tunnel-id / TUNNEL_ID): switching; a new CA will be made and registered for it"
            )
        tunnel = api.get_tunnel(tplan.tunnel_id)
        reporter.info(f"attached to tunnel {tunnel.id} ({tunnel.domain})")
    else:
        tunnel, created = _create(api, reporter, state, files, save, now)
    if tunnel.archived_at:
        raise SetupError(
            f"tunnel {tunnel.id} was archived at {tunnel.archived_at}; archived tunnels cannot be "
            "used again: "
            "pass another --tunnel-id, or empty the output to create a new tunnel"
        )
    fresh_tunnel = created or tplan.changed_from is not None or stored.tunnel_id != tunnel.id
    if tplan.changed_from:
        files = {}  # everything stored belongs to the other tunnel
        state = State()

    # 3. The CA, saved before registering.
    ca_plan = plan.plan_ca(Stored(files), tunnel.id)
    if ca_plan.action == "reuse":
        ca_cert, ca_key = load_ca(Stored(files))
        reporter.info("reusing the CA stored in the output")
    else:
        ca_cert, ca_key = generate_ca()
        files[CA_CRT], files[CA_KEY] = pem_cert(ca_cert), pem_key(ca_key)
        files.pop("tls.crt", None)
        files.pop("tls.key", None)
        reporter.info(f"generated a new CA ({ca_plan.reason})")
    fp = fingerprint(ca_cert)
    state = state.with_(
        tunnel_id=tunnel.id,
        ca_fingerprint=fp,
        pending_display_name=None,
        ca_certificate_id=state.ca_certificate_id if state.ca_fingerprint == fp else None,
    )
    files[TUNNEL_ID] = tunnel.id.encode()
    files[TUNNEL_DOMAIN] = tunnel.domain.encode()
    files[STATE] = state.to_bytes()
    if ca_plan.action == "generate" or files != original:
        save(files)

    # Registration, matched by fingerprint.
    certs = api.list_certificates(tunnel.id, include_archived=True)
    reg = plan.plan_registration(tunnel.id, fp, certs)
    registered = False
    if reg.action == "refuse":
        raise SetupError(reg.message)
    if reg.action == "already":
        certificate_id = reg.certificate_id
        reporter.info(f"the CA is registered on the tunnel as {certificate_id}")
    else:
        cert = api.register_certificate_safely(tunnel.id, files[CA_CRT].decode(), fp)
        certificate_id = cert.id
        registered = True
        reporter.info(f"registered the CA on tunnel {tunnel.id} as {certificate_id}")
    state = state.with_(ca_certificate_id=certificate_id)

    # 4. The server certificate.
    problem = server_cert_problem(Stored(files), tunnel.domain, now())
    if problem is None:
        reporter.info("keeping the server certificate in the output (valid for this CA and domain)")
    else:
        files.update(new_server_pair(ca_cert, ca_key, tunnel.domain, cert_duration, key_type))
        reporter.info(f"issued a server certificate for *.{tunnel.domain} ({key_type})")

    # 5. The token.
    tok = plan.plan_token(
        token_version, state.token_version, fresh_tunnel=fresh_tunnel or not stored.has_token
    )
    rotated = False
    if tok.action == "rotate":
        token = api.rotate_token_safely(
            tunnel.id,
            state.token_id,
            reason=f"mcp-tunnel setup: token version {state.token_version} -> {token_version}",
        )
        rotated = True
    else:
        token = api.reveal_token(tunnel.id)
        if (
            state.token_id
            and token.id
            and token.id != state.token_id
            and stored.has_token
            and not fresh_tunnel
        ):
            reporter.warn(
                "the tunnel token was rotated elsewhere since the last run; writing the current one"
            )
    reporter.info(tok.note)
    state = state.with_(token_version=tok.version, token_id=token.id or None)
    files[TUNNEL_TOKEN] = token.tunnel_token.encode()
    files[STATE] = state.to_bytes()

    # 6. Write.
    wrote = files != original
    if wrote:
        save(files)
        reporter.info(
            f"wrote tunnel-id, tunnel-domain, tunnel-token, tls.crt, tls.key, ca.crt, ca.key to "
            f"{output.description}"
        )
    else:
        reporter.info(f"{output.description} is already up to date; nothing written")
    reporter.info(f"tunnel {tunnel.id} domain {tunnel.domain}")
    return InitResult(tunnel.id, tunnel.domain, created, registered, rotated, wrote)


def _create(
    api: TunnelsAPI,
    reporter: Reporter,
    state: State,
    files: dict[str, bytes],
    save: Callable[[Mapping[str, bytes]], None],
    now: Callable[[], datetime],
) -> tuple[Tunnel, bool]:
    """Create a tunnel under a unique name recorded first, or find the one an earlier run made."""
    name = state.pending_display_name
    if name:
        found = api.find_tunnel_by_display_name(name)
        if found is not None:
            reporter.info(f"found tunnel {found.id} created by an interrupted earlier run ({name})")
            return found, True
    name = name or plan.new_display_name(now())
    files[STATE] = state.with_(pending_display_name=name).to_bytes()
    save(files)
    tunnel = api.create_tunnel_safely(name)
    reporter.info(f"created tunnel {tunnel.id} ({tunnel.domain}), display name {name}")
    return tunnel, True
