"""Operational decisions of the proxy, pure (no I/O, no clock): readiness, config reload, and
how often timeouts are checked.

Kept apart from the servers so each rule is a plain function of its inputs and is tested as
such; `server.py` (readiness, the deadline sweep), `forward.py` (the upstream response
timeout) and `reload.py` only gather the inputs and act on the answer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from mcp_tunnel.config import Config

# --- timeouts ----------------------------------------------------------------------------------


def check_interval(timeout: float) -> float:
    """How often a periodic check enforces `timeout`: 1/8 of it, between 20 ms and 1 s.

    Timeouts are checked by periodic passes, not one timer per connection or request, so one
    fires at most this much late.
    """
    return max(0.02, min(1.0, timeout / 8))


# --- readiness ---------------------------------------------------------------------------------


def readiness_problem(
    *, listening: bool, draining: bool, cert_not_after: datetime | None, now: datetime
) -> str | None:
    """Why the proxy must not get new tunnels now (the /readyz 503 body), or None when ready.

    Draining comes first: a load balancer must stop sending the moment shutdown starts. An
    expired certificate makes every handshake fail at the client, so the proxy is not ready
    with one even though it still serves it (a renewal that lands makes it ready again).
    """
    if draining:
        return "draining: shutting down, not accepting new tunnel connections"
    if not listening:
        return "starting: the tunnel listener is not up yet"
    if cert_not_after is None:
        return "no certificate loaded"
    if cert_not_after <= now:
        return f"certificate expired at {cert_not_after.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return None


# --- config reload -------------------------------------------------------------------------------

# Config fields an operator thinks of as one setting, under the name the file uses.
_APPLIED_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("log_level", ("log_level",)),
    ("log_format", ("log_format",)),
    ("shutdown_timeout", ("shutdown_timeout",)),
    ("tunnel_domain", ("tunnel_domain",)),
    ("tls", ("cert_file", "key_file", "cert_reload_interval")),
    ("upstream", ("upstream",)),
    ("limits", ("limits",)),
)


def _addr(host: str | None, port: int | None) -> str:
    if port is None:
        return "off"
    if host and ":" in host:
        return f"[{host}]:{port}"
    return f"{host or ''}:{port}"


@dataclass(frozen=True, slots=True)
class RestartNeeded:
    """A changed field the running process cannot apply (its socket is already bound)."""

    field: str
    running: str
    configured: str


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a valid new config changes, and what to apply.

    `effective` is the new config with the fields that need a restart kept at their running
    values, so the next reload compares against what is really bound and reports them again.
    """

    effective: Config
    changed: tuple[str, ...]
    needs_restart: tuple[RestartNeeded, ...]
    new_certificates: bool
    routes_added: tuple[str, ...]
    routes_changed: tuple[str, ...]
    routes_removed: tuple[str, ...]


def plan_reload(running: Config, new: Config) -> ReloadPlan:
    """Compare the running config with a freshly loaded, valid one."""
    restart: list[RestartNeeded] = []
    now_listen = _addr(running.listen_host, running.listen_port)
    new_listen = _addr(new.listen_host, new.listen_port)
    if now_listen != new_listen:
        restart.append(RestartNeeded("listen_addr", now_listen, new_listen))
    now_admin = _addr(running.admin_host, running.admin_port)
    new_admin = _addr(new.admin_host, new.admin_port)
    if now_admin != new_admin:
        restart.append(RestartNeeded("admin_addr", now_admin, new_admin))
    if running.workers != new.workers:  # the supervisor starts them; a reload reaches each one
        restart.append(RestartNeeded("workers", str(running.workers), str(new.workers)))
    effective = dataclasses.replace(
        new,
        workers=running.workers,
        listen_host=running.listen_host,
        listen_port=running.listen_port,
        admin_host=running.admin_host,
        admin_port=running.admin_port,
    )
    changed = [
        name
        for name, attrs in _APPLIED_FIELDS
        if any(getattr(running, a) != getattr(effective, a) for a in attrs)
    ]
    old_routes, new_routes = dict(running.routes), dict(effective.routes)
    added = tuple(k for k in new_routes if k not in old_routes)
    removed = tuple(k for k in old_routes if k not in new_routes)
    modified = tuple(k for k in new_routes if k in old_routes and new_routes[k] != old_routes[k])
    if added or removed or modified:
        changed.insert(0, "routes")
    return ReloadPlan(
        effective=effective,
        changed=tuple(changed),
        needs_restart=tuple(restart),
        new_certificates=(running.cert_file, running.key_file) != (effective.cert_file, effective.key_file),
        routes_added=added,
        routes_changed=modified,
        routes_removed=removed,
    )
