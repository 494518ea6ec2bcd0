"""Every documented failure is one line with status, error type, message, request id and cause,
and no credential."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.anthropic import FakeAnthropic, Rule
from tests.fakes.oidc import FakeOIDCIssuer
from tests.setup.support import ORG, RULE_ID, SUBJECT, Result, Runner

from mcp_tunnel.setup.causes import exchange_cause, tunnels_cause


def error_line(r: Result) -> str:
    assert r.code == 1, r.text
    lines = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.err
    return lines[0]


def assert_no_secrets(r: Result, runner: Runner, anthropic: FakeAnthropic) -> None:
    secrets = [runner.token_file.read_text(), *anthropic.access_tokens]
    secrets += [t.token for t in anthropic.tunnels.values()]
    for s in secrets:
        assert s not in r.text


def test_audience_mismatch_console_vs_chart(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    anthropic.rules[RULE_ID].audience = "https://api.anthropic.com"  # the Console's suggestion
    r = setup_cli.init()  # the token carries the chart default, api.anthropic.com
    line = error_line(r)
    assert "POST /v1/oauth/token: HTTP 401 authentication_error: Authentication failed" in line
    assert "(request-id req_" in line
    assert (
        "likely cause" in line
        and "'api.anthropic.com' (no scheme" in line
        and "https://api.anthropic.com" in line
    )
    assert "aud='api.anthropic.com'" in line
    assert_no_secrets(r, setup_cli, anthropic)


def test_expired_identity_token(setup_cli: Runner, issuer: FakeOIDCIssuer, anthropic: FakeAnthropic) -> None:
    import time

    setup_cli.token_file.write_text(issuer.mint(SUBJECT, iat=time.time() - 7200, lifetime=600))
    line = error_line(setup_cli.init())
    assert "HTTP 401" in line and "EXPIRED" in line and "has expired" in line


def test_token_signed_by_an_unknown_key(setup_cli: Runner, issuer: FakeOIDCIssuer) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    setup_cli.token_file.write_text(issuer.mint(SUBJECT, key=ec.generate_private_key(ec.SECP256R1())))
    assert "HTTP 401 authentication_error" in error_line(setup_cli.init())


def test_wrong_issuer_and_subject(setup_cli: Runner, issuer: FakeOIDCIssuer) -> None:
    setup_cli.token_file.write_text(issuer.mint(SUBJECT, iss="https://elsewhere.example"))
    assert "iss='https://elsewhere.example'" in error_line(setup_cli.init())
    setup_cli.token_file.write_text(issuer.mint("system:serviceaccount:other:x"))
    assert "sub='system:serviceaccount:other:x'" in error_line(setup_cli.init())


def test_rule_over_several_workspaces_needs_workspace_id(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    anthropic.rules[RULE_ID].workspaces = ["wrkspc_a", "wrkspc_b"]
    line = error_line(setup_cli.init())
    assert "HTTP 401" in line and "set ANTHROPIC_WORKSPACE_ID" in line
    setup_cli.env["ANTHROPIC_WORKSPACE_ID"] = "wrkspc_b"
    r = setup_cli.init()
    assert r.code == 0, r.err
    assert anthropic.exchange_requests[-1].json()["workspace_id"] == "wrkspc_b"
    assert next(iter(anthropic.tunnels.values())).workspace_id == "wrkspc_b"


def test_malformed_rule_id(setup_cli: Runner) -> None:
    setup_cli.env["ANTHROPIC_FEDERATION_RULE_ID"] = "rule-1"
    line = error_line(setup_cli.init())
    assert "HTTP 400 invalid_request_error" in line and "fdrl_" in line


def test_unknown_rule(setup_cli: Runner) -> None:
    setup_cli.env["ANTHROPIC_FEDERATION_RULE_ID"] = "fdrl_nope"
    line = error_line(setup_cli.init())
    assert "HTTP 401" in line and "unknown rule id" in line


def test_missing_tunnels_scope(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    anthropic.rules[RULE_ID].scope = "org:manage_tunnels"
    r = setup_cli.init()
    line = error_line(r)
    assert "POST /v1/tunnels: HTTP 403 permission_error" in line
    assert "lacks workspace:manage_tunnels" in line and "(request-id req_" in line
    assert "without workspace:manage_tunnels" in r.err  # the early warning from the exchange
    assert_no_secrets(r, setup_cli, anthropic)


def test_service_account_not_in_workspace(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    anthropic.rules[RULE_ID].service_account_member = False
    line = error_line(setup_cli.init())
    assert "HTTP 403 permission_error" in line and "not a member of the tunnel's workspace" in line


def test_tunnel_cap_of_ten(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    for _ in range(10):
        anthropic.add_tunnel(ORG)
    line = error_line(setup_cli.init())
    assert (
        "HTTP 400 invalid_request_error: Organization already has the maximum of 10 non-archived Tunnels"
        in line
    )
    assert "archive unused tunnels" in line and "--tunnel-id" in line
    assert len(anthropic.tunnels) == 10


def test_certificate_cap_from_the_api(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    """A race (the slots filled between our list and our create) still gets the documented cause."""
    from tests.fakes.anthropic import Cert

    t = anthropic.add_tunnel(ORG)
    setup_cli.env["TUNNEL_ID"] = t.id
    original = anthropic._certs

    def fill_then_create(tunnel, rest, request):  # type: ignore[no-untyped-def]
        if request.method == "POST" and not rest:
            for i in range(2):
                tunnel.certs.append(
                    Cert(f"tcrt_race{i}", tunnel.id, f"{i:064x}", None, "2026-07-01T00:00:00Z")
                )
        return original(tunnel, rest, request)

    anthropic._certs = fill_then_create  # type: ignore[method-assign]
    line = error_line(setup_cli.init())
    assert "HTTP 409" in line and "maximum of 2 active certificates" in line and "two active" in line


def test_unknown_tunnel_id(setup_cli: Runner) -> None:
    setup_cli.env["TUNNEL_ID"] = "tnl_doesnotexist"
    line = error_line(setup_cli.init())
    assert "GET /v1/tunnels/tnl_doesnotexist: HTTP 404 not_found_error" in line and "TUNNEL_ID" in line


def test_revoked_api_key(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    key = "sk-ant-api-revoked-" + "x" * 20
    r = setup_cli(
        "init", f"--api-url={anthropic.url}", f"--output=dir:{setup_cli.out_dir}", env={"API_TOKEN": key}
    )
    line = error_line(r)
    assert (
        "HTTP 401 authentication_error" in line and "revoked, truncated, or from another organization" in line
    )
    assert key not in r.text


def test_unreachable_api(setup_cli: Runner, tmp_path: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = setup_cli("init", f"--api-url=http://127.0.0.1:{port}", f"--output=dir:{tmp_path / 'o'}")
    line = error_line(r)
    assert "cannot connect" in line and len(r.sleeps) == setup_cli.attempts - 1


def test_unreadable_token_file(setup_cli: Runner) -> None:
    setup_cli.env["ANTHROPIC_IDENTITY_TOKEN_FILE"] = "/nonexistent/token"
    assert "cannot read ANTHROPIC_IDENTITY_TOKEN_FILE /nonexistent/token" in error_line(setup_cli.init())


def test_cause_functions_pick_nothing_for_the_unknown() -> None:
    assert tunnels_cause("get_tunnel", 418, "x", "teapot", auth_kind="wif") == ""
    assert "re-run later" in tunnels_cause("get_tunnel", 503, "overloaded_error", "", auth_kind="wif")
    assert "fdrl_" in exchange_cause(400, "invalid_request_error", "")


def test_other_issuer_rule_is_not_accepted(
    anthropic: FakeAnthropic, issuer: FakeOIDCIssuer, tmp_path: Path
) -> None:
    """The fake really checks the issuer: a rule for another issuer denies our token."""
    other = FakeOIDCIssuer()
    try:
        anthropic.add_rule(Rule("fdrl_other", other.url, "api.anthropic.com", "system:", ORG, ["default"]))
        runner = Runner(anthropic, issuer, tmp_path)
        runner.env["ANTHROPIC_FEDERATION_RULE_ID"] = "fdrl_other"
        assert "HTTP 401" in error_line(runner.init())
    finally:
        other.close()
