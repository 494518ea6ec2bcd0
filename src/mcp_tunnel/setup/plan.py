"""Pure decisions of `init` and `renew-cert`: given what the output holds and what the API
says, what to do. No I/O here, so every branch is tested directly (tests/setup/test_plan.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from mcp_tunnel.setup.api import TunnelCertificate
from mcp_tunnel.setup.state import Stored

MAX_ACTIVE_CERTIFICATES = 2
DISPLAY_NAME_PREFIX = "mcp-tunnel-setup"


@dataclass(frozen=True)
class TunnelPlan:
    action: Literal["attach", "create"]
    tunnel_id: str | None = None
    changed_from: str | None = None  # the output held this other tunnel
    pending_display_name: str | None = None  # an earlier create may exist under this name


def plan_tunnel(requested: str | None, stored: Stored) -> TunnelPlan:
    """Flag/env wins; else the tunnel stored in the output; else create (or finish a create)."""
    state = stored.state
    current = stored.tunnel_id or state.tunnel_id
    if requested:
        changed = current if current and current != requested else None
        return TunnelPlan("attach", requested, changed_from=changed)
    if current:
        return TunnelPlan("attach", current)
    return TunnelPlan("create", pending_display_name=state.pending_display_name)


def new_display_name(now: datetime) -> str:
    """Unique per create attempt, so a lost create answer can be found by listing."""
    return f"{DISPLAY_NAME_PREFIX}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def ca_owner(stored: Stored) -> str | None:
    return stored.state.tunnel_id or stored.tunnel_id


@dataclass(frozen=True)
class CAPlan:
    action: Literal["reuse", "generate"]
    reason: str


def plan_ca(stored: Stored, tunnel_id: str) -> CAPlan:
    """Reuse the stored CA unless the output is empty of one or it belongs to another tunnel.

    A CA with no recorded tunnel (put there by the operator) is reused: bring-your-own CA.
    """
    if not stored.has_ca:
        return CAPlan("generate", "the output holds no CA")
    owner = ca_owner(stored)
    if owner is not None and owner != tunnel_id:
        return CAPlan("generate", f"the stored CA belongs to tunnel {owner}, not {tunnel_id}")
    return CAPlan("reuse", "the output's CA belongs to this tunnel")


@dataclass(frozen=True)
class RegistrationPlan:
    action: Literal["already", "register", "refuse"]
    certificate_id: str | None = None
    message: str = ""


def _describe(certs: Sequence[TunnelCertificate]) -> str:
    return ", ".join(
        f"{c.id} (sha256 {c.fingerprint[:16]}..., expires {c.expires_at or 'never'})" for c in certs
    )


def plan_registration(
    tunnel_id: str, fingerprint: str, certs: Sequence[TunnelCertificate]
) -> RegistrationPlan:
    """Match the CA by fingerprint (this is what recovers a registration whose answer or
    following write was lost), respect a revocation, and respect the two-slot cap."""
    mine = [c for c in certs if c.fingerprint == fingerprint]
    active_mine = [c for c in mine if c.active]
    if active_mine:
        return RegistrationPlan("already", active_mine[0].id)
    if mine:
        return RegistrationPlan(
            "refuse",
            message=(
                f"the output's CA (sha256 {fingerprint[:16]}...) was registered on tunnel "
                f"{tunnel_id} as {mine[0].id} "
                "and has since been archived (revoked); setup will not re-register a revoked CA: "
                "to start over with "
                "a new CA, remove ca.crt and ca.key from the output and re-run"
            ),
        )
    active = [c for c in certs if c.active]
    if len(active) >= MAX_ACTIVE_CERTIFICATES:
        return RegistrationPlan(
            "refuse",
            message=(
                f"tunnel {tunnel_id} already has {len(active)} active CA certificates, the maximum: "
                f"{_describe(active)}; archive one that is no longer in use (Console: Revoke, or "
                f"POST /v1/tunnels/{tunnel_id}/certificates/<id>/archive), then re-run: the new CA "
                "is saved in "
                "the output and will be registered then"
            ),
        )
    return RegistrationPlan("register")


@dataclass(frozen=True)
class TokenPlan:
    action: Literal["reveal", "rotate"]
    note: str
    version: str | None  # the version to record


def plan_token(
    requested: str | None,
    recorded: str | None,
    *,
    fresh_tunnel: bool,
) -> TokenPlan:
    """Rotate only on a real change of `--token-version` against a recorded value.

    `fresh_tunnel`: created or newly attached in this run; its current token is simply fetched.
    A missing recorded version (first run, or an output from elsewhere) is recorded, never
    treated as a change: rotation cuts off new connections using the old token.
    """
    if fresh_tunnel:
        return TokenPlan("reveal", "fetched the tunnel token" + _v(requested), requested)
    if requested is None:
        return TokenPlan(
            "reveal", "no --token-version given: token not rotated" + _v(recorded, "recorded"), recorded
        )
    if recorded is None:
        return TokenPlan(
            "reveal", f"no token version recorded before; recording {requested!r} without rotating", requested
        )
    if requested == recorded:
        return TokenPlan(
            "reveal",
            f"token version {requested!r} unchanged: token not rotated (change --token-version to rotate)",
            requested,
        )
    return TokenPlan(
        "rotate", f"token version {recorded!r} -> {requested!r}: rotating the tunnel token", requested
    )


def _v(version: str | None, word: str = "version") -> str:
    return f" ({word} {version!r})" if version else ""


@dataclass(frozen=True)
class RenewPlan:
    renew: bool
    reason: str


def plan_renewal(
    problem: str | None, not_after: datetime | None, now: datetime, renew_before: timedelta
) -> RenewPlan:
    """`problem` is why the stored server certificate cannot be kept at all (missing, wrong CA,
    wrong domain, key mismatch); otherwise renew-before decides (0 = always renew)."""
    if problem is not None or not_after is None:
        return RenewPlan(True, problem or "no server certificate")
    left = not_after - now
    if renew_before <= timedelta(0):
        return RenewPlan(True, "--renew-before is 0: always renew")
    if left <= renew_before:
        return RenewPlan(
            True, f"the certificate expires {not_after:%Y-%m-%dT%H:%M:%SZ}, within --renew-before"
        )
    return RenewPlan(
        False,
        f"the certificate is valid until {not_after:%Y-%m-%dT%H:%M:%SZ} ({_human(left)} left), more than "
        f"--renew-before ({_human(renew_before)}): not renewed",
    )


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d{(seconds % 86400) // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60}m"
    return f"{seconds}s"
