"""The documented likely cause of an API failure (digest §6.5, §7.5, §10). Pure functions.

The API's error texts are not contractual, so matching is by status first and by message
keywords only to pick between documented causes; an unrecognised failure gets no guess rather
than a wrong one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

AUDIENCE_CHART_DEFAULT = "api.anthropic.com"
AUDIENCE_CONSOLE_DEFAULT = "https://api.anthropic.com"
AUTH_HISTORY_URL = "https://platform.claude.com/settings/workload-identity-federation?tab=history"
TUNNELS_SCOPE = "workspace:manage_tunnels"


def _claims_summary(claims: Mapping[str, Any] | None, now: float) -> str:
    if not claims:
        return ""
    parts = []
    for name in ("iss", "aud", "sub"):
        if name in claims:
            parts.append(f"{name}={claims[name]!r}")
    exp = claims.get("exp")
    if isinstance(exp, int | float):
        left = exp - now
        parts.append(f"exp in {int(left)}s" if left > 0 else f"EXPIRED {int(-left)}s ago")
    return "the identity token has " + ", ".join(parts) if parts else ""


def _audience_note(claims: Mapping[str, Any] | None) -> str:
    aud = claims.get("aud") if claims else None
    auds = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []
    if AUDIENCE_CHART_DEFAULT in auds:
        return (
            f"audience is {AUDIENCE_CHART_DEFAULT!r} (no scheme, the Helm chart default): the "
            "rule's audience "
            f"must be exactly that, not {AUDIENCE_CONSOLE_DEFAULT!r} (or set api.wif.audience to "
            "match the rule)"
        )
    if AUDIENCE_CONSOLE_DEFAULT in auds:
        return (
            f"audience is {AUDIENCE_CONSOLE_DEFAULT!r}: the rule's audience must match byte for byte "
            f"(a rule set to {AUDIENCE_CHART_DEFAULT!r} will not match)"
        )
    return (
        f"audience mismatch is the usual cause: {AUDIENCE_CHART_DEFAULT!r} (chart default) vs "
        f"{AUDIENCE_CONSOLE_DEFAULT!r} (Console suggestion) must match byte for byte"
    )


def exchange_cause(
    status: int,
    error_type: str,
    message: str,
    *,
    claims: Mapping[str, Any] | None = None,
    workspace_id_set: bool = False,
    now: float | None = None,
) -> str:
    """Why `POST /v1/oauth/token` failed (WIFR error table)."""
    current = time.time() if now is None else now
    if status == 400:
        return (
            "malformed request: check ANTHROPIC_FEDERATION_RULE_ID (fdrl_...), ANTHROPIC_ORGANIZATION_ID "
            "(organization UUID) and ANTHROPIC_WORKSPACE_ID (wrkspc_... or 'default')"
        )
    if status == 401:
        parts = ["the identity token does not satisfy the federation rule"]
        summary = _claims_summary(claims, current)
        if summary:
            parts.append(summary)
        exp = claims.get("exp") if claims else None
        if isinstance(exp, int | float) and exp + 30 < current:
            parts.append(
                "the token has expired: mint a fresh one (a projected token file is re-read each run)"
            )
        parts.append(_audience_note(claims))
        parts.append(
            "also check iss (byte-equal to the rule's issuer URL), sub against the rule's subject prefix, "
            "and that the issuer's JWKS is reachable"
        )
        if not workspace_id_set:
            parts.append("if the rule spans several workspaces set ANTHROPIC_WORKSPACE_ID")
        parts.append(
            f"an unknown rule id gives the same 401; the deny reason is in the authentication history at "
            f"{AUTH_HISTORY_URL}"
        )
        return "; ".join(parts)
    return _generic(status)


def _generic(status: int) -> str:
    if status == 429:
        return "rate limited and retries exhausted: wait a minute and re-run (init is safe to re-run)"
    if status >= 500 or status == 408:
        return "Anthropic's API is unavailable or timed out: re-run later (init is safe to re-run)"
    return ""


def tunnels_cause(op: str, status: int, error_type: str, message: str, *, auth_kind: str) -> str:
    """Why a Tunnels API call failed (digest §5, §6.5, §10). `auth_kind` is "wif" or "api_token"."""
    text = message.lower()
    if op == "create_tunnel" and (("maximum" in text or "limit" in text) and "tunnel" in text):
        return (
            "the organization already has the maximum of 10 non-archived tunnels: archive unused "
            "tunnels, or pass "
            "--tunnel-id / TUNNEL_ID to attach to an existing one (each run without a tunnel id "
            "or stored output "
            "creates a tunnel)"
        )
    if op == "create_certificate" and (
        status in (409, 412)
        or "maximum" in text
        or "limit" in text
        or "two" in text
        or "active certificates" in text
    ):
        return (
            "the tunnel already has two active (non-archived) CA certificates: archive (Console: "
            "Revoke) one that is "
            "no longer used, then re-run"
        )
    if status == 401:
        if auth_kind == "api_token":
            return (
                "the Tunnels API key (API_TOKEN) was rejected: revoked, truncated, or from "
                "another organization; "
                "create a new one under Organization settings > Tunnels > Tunnels API"
            )
        return "the exchanged access token was rejected (expired or revoked): re-run to exchange a fresh one"
    if status == 403:
        if auth_kind == "api_token":
            return (
                "the Tunnels API key (API_TOKEN) is not allowed here: revoked, truncated, or from another "
                "organization"
            )
        return (
            f"the federation rule's scope lacks {TUNNELS_SCOPE} (the generation-1 scope "
            "org:manage_tunnels is not "
            "enough), or the rule's service account is not a member of the tunnel's workspace "
            "(add it, or set "
            "ANTHROPIC_WORKSPACE_ID to that workspace)"
        )
    if status == 404 and op in (
        "get_tunnel",
        "reveal_token",
        "rotate_token",
        "create_certificate",
        "list_certificates",
        "archive_certificate",
    ):
        return (
            "no such tunnel for these credentials: check --tunnel-id / TUNNEL_ID (tnl_...) and "
            "that the tunnel is in "
            "the workspace the credentials act on (ANTHROPIC_WORKSPACE_ID)"
        )
    if op == "create_certificate" and status == 400:
        return (
            "the CA certificate was rejected: it must be one PEM CA certificate (basicConstraints "
            "CA:TRUE critical, "
            "subjectKeyIdentifier, keyUsage keyCertSign, RSA>=2048 or ECDSA>=P-256, SHA-256+, "
            "within validity, "
            "at most 8 KiB)"
        )
    if status == 409 and op in ("reveal_token", "rotate_token", "create_certificate"):
        return (
            "the tunnel is archived: archived tunnels cannot be used again; attach to or create "
            "another tunnel"
        )
    return _generic(status)
