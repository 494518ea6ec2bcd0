"""`setup renew-cert`: a new server certificate from the stored CA. No API call (digest §6.4).

Safe on a fixed schedule: with --renew-before it is a no-op while the current certificate has
more time left than that, and it writes nothing at all in that case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mcp_tunnel.certs.generate import normalize_domain
from mcp_tunnel.setup.errors import SetupError
from mcp_tunnel.setup.material import load_ca, new_server_pair, server_cert_problem, server_not_after
from mcp_tunnel.setup.outputs import Output
from mcp_tunnel.setup.plan import plan_renewal
from mcp_tunnel.setup.report import Reporter
from mcp_tunnel.setup.state import TUNNEL_DOMAIN, Stored


@dataclass(frozen=True)
class RenewResult:
    renewed: bool
    reason: str


def run_renew(
    *,
    output: Output,
    reporter: Reporter,
    cert_duration: float,
    renew_before: float,
    key_type: str,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RenewResult:
    files = output.load()
    stored = Stored(files)
    if stored.empty:
        raise SetupError(f"output {output.description} is empty: run `setup init` first")
    if not stored.has_ca:
        raise SetupError(
            f"output {output.description} holds no CA (ca.crt and ca.key): run `setup init` first"
        )
    domain = stored.tunnel_domain
    if not domain:
        raise SetupError(f"output {output.description} holds no tunnel-domain: run `setup init` first")
    try:
        domain = normalize_domain(domain)
    except ValueError:
        size = len(files.get(TUNNEL_DOMAIN, b""))
        raise SetupError(  # never the content: the file may be anything (a key, a token)
            f"output {output.description}: tunnel-domain does not hold a domain name ({size} bytes); "
            "run `setup init` again to rewrite it"
        ) from None
    ca_cert, ca_key = load_ca(stored)
    current = now()
    decision = plan_renewal(
        server_cert_problem(stored, domain, current),
        server_not_after(stored),
        current,
        timedelta(seconds=renew_before),
    )
    if not decision.renew:
        reporter.info(decision.reason)
        return RenewResult(False, decision.reason)
    files.update(new_server_pair(ca_cert, ca_key, domain, cert_duration, key_type))
    output.save(files)
    reporter.info(
        f"renewed the server certificate for *.{domain} ({decision.reason}); wrote {output.description}"
    )
    return RenewResult(True, decision.reason)
