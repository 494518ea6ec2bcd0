"""The pure decisions, branch by branch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mcp_tunnel.setup.api import TunnelCertificate
from mcp_tunnel.setup.plan import (
    new_display_name,
    plan_ca,
    plan_registration,
    plan_renewal,
    plan_token,
    plan_tunnel,
)
from mcp_tunnel.setup.state import State, Stored

NOW = datetime(2026, 8, 1, tzinfo=UTC)


def stored(**files: bytes) -> Stored:
    return Stored({k.replace("_", "-") if k.startswith("tunnel") else k: v for k, v in files.items()})


def with_state(s: State, **files: bytes) -> Stored:
    return Stored({**{k.replace("_", "-"): v for k, v in files.items()}, "setup-state.json": s.to_bytes()})


def cert(id_: str, fp: str, archived: bool = False) -> TunnelCertificate:
    return TunnelCertificate(
        id_, "tnl_1", fp, None, "2026-07-01T00:00:00Z", "2026-07-02T00:00:00Z" if archived else None
    )


def test_plan_tunnel() -> None:
    empty = Stored({})
    assert plan_tunnel(None, empty).action == "create"
    assert plan_tunnel("tnl_a", empty) == plan_tunnel("tnl_a", empty)
    p = plan_tunnel("tnl_a", empty)
    assert (p.action, p.tunnel_id, p.changed_from) == ("attach", "tnl_a", None)
    s = stored(tunnel_id=b"tnl_s\n")
    assert plan_tunnel(None, s).tunnel_id == "tnl_s"
    assert plan_tunnel("tnl_s", s).changed_from is None
    assert plan_tunnel("tnl_b", s).changed_from == "tnl_s"
    pending = with_state(State(pending_display_name="mcp-tunnel-setup-x"))
    p = plan_tunnel(None, pending)
    assert p.action == "create" and p.pending_display_name == "mcp-tunnel-setup-x"
    # the state remembers the tunnel even if the tunnel-id file went missing
    assert plan_tunnel(None, with_state(State(tunnel_id="tnl_st"))).tunnel_id == "tnl_st"


def test_display_names_are_unique() -> None:
    names = {new_display_name(NOW) for _ in range(50)}
    assert len(names) == 50 and all(
        n.startswith("mcp-tunnel-setup-20260801-") and len(n) <= 255 for n in names
    )


def test_plan_ca() -> None:
    ca = {"ca.crt": b"C", "ca.key": b"K"}
    assert plan_ca(Stored({}), "tnl_1").action == "generate"
    assert plan_ca(Stored({"ca.crt": b"C"}), "tnl_1").action == "generate"
    assert plan_ca(Stored(ca), "tnl_1").action == "reuse"  # bring your own CA
    assert plan_ca(Stored({**ca, "tunnel-id": b"tnl_1"}), "tnl_1").action == "reuse"
    other = plan_ca(Stored({**ca, "tunnel-id": b"tnl_0"}), "tnl_1")
    assert other.action == "generate" and "tnl_0" in other.reason
    # the state's record wins over the tunnel-id file (it is written with the CA)
    s = Stored({**ca, "tunnel-id": b"tnl_0", "setup-state.json": State(tunnel_id="tnl_1").to_bytes()})
    assert plan_ca(s, "tnl_1").action == "reuse"


def test_plan_registration() -> None:
    fp = "ab" * 32
    assert plan_registration("tnl_1", fp, []).action == "register"
    assert plan_registration("tnl_1", fp, [cert("tcrt_1", "cd" * 32)]).action == "register"
    already = plan_registration("tnl_1", fp, [cert("tcrt_x", "cd" * 32), cert("tcrt_1", fp)])
    assert (already.action, already.certificate_id) == ("already", "tcrt_1")
    # full slots do not matter when ours is one of them
    assert plan_registration("tnl_1", fp, [cert("tcrt_0", "cd" * 32), cert("tcrt_1", fp)]).action == "already"
    full = plan_registration("tnl_1", fp, [cert("tcrt_a", "01" * 32), cert("tcrt_b", "02" * 32)])
    assert full.action == "refuse" and "tcrt_a" in full.message and "tcrt_b" in full.message
    # archived ones do not take a slot
    assert plan_registration(
        "tnl_1", fp, [cert("tcrt_a", "01" * 32, True), cert("tcrt_b", "02" * 32)]
    ).action == ("register")
    revoked = plan_registration("tnl_1", fp, [cert("tcrt_1", fp, archived=True)])
    assert revoked.action == "refuse" and "revoked" in revoked.message
    # re-registered after a revocation by someone else: the active record counts
    assert (
        plan_registration("tnl_1", fp, [cert("tcrt_1", fp, True), cert("tcrt_2", fp)]).certificate_id
        == "tcrt_2"
    )


def test_plan_token() -> None:
    assert plan_token("1", None, fresh_tunnel=True).action == "reveal"
    assert plan_token("2", "1", fresh_tunnel=True).action == "reveal"  # a new tunnel's token is new anyway
    same = plan_token("1", "1", fresh_tunnel=False)
    assert same.action == "reveal" and "unchanged" in same.note and same.version == "1"
    rot = plan_token("2", "1", fresh_tunnel=False)
    assert rot.action == "rotate" and rot.version == "2"
    keep = plan_token(None, "3", fresh_tunnel=False)
    assert keep.action == "reveal" and keep.version == "3" and "no --token-version" in keep.note
    first = plan_token("1", None, fresh_tunnel=False)
    assert first.action == "reveal" and first.version == "1" and "without rotating" in first.note


def test_plan_renewal() -> None:
    day = timedelta(days=1)
    assert plan_renewal("no server certificate", None, NOW, day).renew
    assert plan_renewal(None, NOW + 60 * day, NOW, timedelta(0)).renew
    skip = plan_renewal(None, NOW + 60 * day, NOW, 30 * day)
    assert not skip.renew and "60d0h left" in skip.reason
    assert plan_renewal(None, NOW + 29 * day, NOW, 30 * day).renew
    assert plan_renewal(None, NOW - day, NOW, 30 * day).renew
    assert plan_renewal("wrong CA", NOW + 60 * day, NOW, 30 * day).renew


def test_state_round_trip_and_tolerance() -> None:
    s = State(tunnel_id="tnl_1", ca_certificate_id="tcrt_1", token_version="2", token_id="ttok_1")
    assert State.from_bytes(s.to_bytes()) == s
    assert State.from_bytes(b"{not json") == State()
    assert State.from_bytes(b"[1]") == State()
    assert State.from_bytes(b'{"tunnel_id": 5}') == State()
