"""Flags and environment to options: defaults, precedence, and one-line refusals (exit 2)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mcp_tunnel.errors import UsageError
from mcp_tunnel.setup.cli import APITokenCredentials, WIFCredentials, parse_init, parse_renew, run

WIF = {
    "ANTHROPIC_FEDERATION_RULE_ID": "fdrl_1",
    "ANTHROPIC_ORGANIZATION_ID": "org-uuid",
    "ANTHROPIC_IDENTITY_TOKEN": "eyJhbGciOi.literal.jwt",
}
BASE = ["--api-url=https://api.anthropic.com", "--output=dir:/data"]


def refused(argv: list[str], env: dict[str, str], match: str, *, renew: bool = False) -> None:
    with pytest.raises(UsageError, match=match) as info:
        (parse_renew if renew else parse_init)(argv, env)
    assert "\n" not in str(info.value)


def test_documented_defaults() -> None:
    o = parse_init(BASE, WIF)
    assert o.api_url == "https://api.anthropic.com" and o.tunnel_id is None and o.token_version is None
    assert o.cert_duration == 2160 * 3600 and o.key_type == "rsa4096"
    assert str(o.output) == "dir:/data"
    assert (
        isinstance(o.credentials, WIFCredentials)
        and o.credentials.token_literal == WIF["ANTHROPIC_IDENTITY_TOKEN"]
    )
    r = parse_renew(["--output=dir:/data"], {})
    assert r.renew_before == 0 and r.cert_duration == 2160 * 3600


def test_flag_forms() -> None:
    for argv in (
        ["--api-url=https://a.example", "--tunnel-id=tnl_1", "--output=dir:/d", "--token-version=3"],
        [
            "--api-url",
            "https://a.example",
            "--tunnel-id",
            "tnl_1",
            "--output",
            "dir:/d",
            "--token-version",
            "3",
        ],
        ["-api-url=https://a.example", "-tunnel-id", "tnl_1", "-output=dir:/d", "-token-version=3"],
    ):
        o = parse_init(argv, WIF)
        assert (o.api_url, o.tunnel_id, o.output.target, o.token_version) == (
            "https://a.example",
            "tnl_1",
            "/d",
            "3",
        )
    r = parse_renew(
        ["--output", "k8s-secret:mcp-tunnel", "--renew-before=720h", "--cert-duration", "24h"], {}
    )
    assert r.renew_before == 720 * 3600 and r.cert_duration == 86400 and r.output.kind == "k8s-secret"


def test_flags_beat_environment_and_empty_env_is_unset() -> None:
    env = {**WIF, "API_URL": "https://env.example", "TUNNEL_ID": "tnl_env"}
    assert parse_init(["--output=dir:/d"], env).api_url == "https://env.example"
    assert parse_init(["--output=dir:/d"], env).tunnel_id == "tnl_env"
    o = parse_init(["--output=dir:/d", "--api-url=https://flag.example", "--tunnel-id=tnl_flag"], env)
    assert (o.api_url, o.tunnel_id) == ("https://flag.example", "tnl_flag")
    assert parse_init(BASE, {**WIF, "TUNNEL_ID": ""}).tunnel_id is None


def test_api_url_rules() -> None:
    refused(["--output=dir:/d"], WIF, r"--api-url \(or API_URL\) is required")
    refused(["--api-url=http://api.example.com", "--output=dir:/d"], WIF, "must be https")
    refused(["--api-url=api.anthropic.com", "--output=dir:/d"], WIF, "expected an https:// URL")
    assert (
        parse_init(["--api-url=http://127.0.0.1:9/", "--output=dir:/d"], WIF).api_url == "http://127.0.0.1:9"
    )
    assert parse_init(["--api-url=https://gw.example/anthropic/", "--output=dir:/d"], WIF).api_url == (
        "https://gw.example/anthropic"
    )


def test_credential_combinations() -> None:
    both = {**WIF, "ANTHROPIC_IDENTITY_TOKEN_FILE": "/t"}
    refused(BASE, both, "both ANTHROPIC_IDENTITY_TOKEN_FILE and ANTHROPIC_IDENTITY_TOKEN")
    refused(BASE, {**both, "ANTHROPIC_IDENTITY_TOKEN": ""}, "both .*empty value still counts")
    neither = {k: v for k, v in WIF.items() if k != "ANTHROPIC_IDENTITY_TOKEN"}
    refused(BASE, neither, "one of ANTHROPIC_IDENTITY_TOKEN_FILE or ANTHROPIC_IDENTITY_TOKEN is required")
    refused(BASE, {}, "no credentials")
    refused(BASE, {**WIF, "ANTHROPIC_IDENTITY_TOKEN": " "}, "set but empty")
    refused(
        BASE, {k: v for k, v in WIF.items() if k != "ANTHROPIC_ORGANIZATION_ID"}, "ANTHROPIC_ORGANIZATION_ID"
    )
    refused(BASE, {k: v for k, v in WIF.items() if k != "ANTHROPIC_FEDERATION_RULE_ID"}, "FEDERATION_RULE_ID")
    refused(BASE, {**WIF, "API_TOKEN": "sk-key"}, "both API_TOKEN")
    c = parse_init(BASE, {"API_TOKEN": "sk-key"}).credentials
    assert isinstance(c, APITokenCredentials) and c.token == "sk-key" and "sk-key" not in repr(c)
    # a token variable alone (e.g. a chart that always mounts one) does not fight API_TOKEN
    c = parse_init(BASE, {"API_TOKEN": "sk-key", "ANTHROPIC_IDENTITY_TOKEN_FILE": "/t"}).credentials
    assert isinstance(c, APITokenCredentials)
    c = parse_init(BASE, {**WIF, "ANTHROPIC_WORKSPACE_ID": "wrkspc_1", "API_TOKEN": ""}).credentials
    assert isinstance(c, WIFCredentials) and c.workspace_id == "wrkspc_1"


def test_output_rules(tmp_path: Path) -> None:
    refused(["--api-url=https://a.example"], WIF, "--output is required outside a Kubernetes pod")
    refused(
        ["--api-url=https://a.example", "--output=s3:bucket"], WIF, "expected dir:PATH or k8s-secret:NAME"
    )
    refused(["--api-url=https://a.example", "--output=dir:"], WIF, "path is empty")
    refused(["--api-url=https://a.example", "--output=k8s-secret:Bad_Name"], WIF, "not a valid Secret name")
    refused([], {}, "--output is required", renew=True)
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t")
    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "MCP_TUNNEL_SERVICEACCOUNT_DIR": str(sa)}
    o = parse_init(["--api-url=https://a.example"], {**WIF, **pod})
    assert str(o.output) == "k8s-secret:mcp-tunnel" and o.output_defaulted
    assert str(parse_renew([], pod).output) == "k8s-secret:mcp-tunnel"
    refused(
        [],
        {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "MCP_TUNNEL_SERVICEACCOUNT_DIR": str(tmp_path / "no")},
        "--output is required",
        renew=True,
    )


def test_durations_and_key_type() -> None:
    refused([*BASE, "--cert-duration=90d"], WIF, 'unknown unit "d"')
    refused([*BASE, "--cert-duration=0"], WIF, "must be positive")
    refused(["--output=dir:/d", "--renew-before=-1h"], {}, ">= 0", renew=True)
    refused([*BASE, "--key-type=dsa"], WIF, "expected one of rsa4096, ecdsa-p256")
    assert parse_renew(["--output=dir:/d", "--renew-before=0"], {}).renew_before == 0


def test_unknown_and_misplaced_flags() -> None:
    refused([*BASE, "--bogus=1"], WIF, "unrecognized arguments")
    refused(["--output=dir:/d", "--token-version=2"], {}, "unrecognized arguments", renew=True)
    refused([*BASE, "--api"], WIF, "unrecognized")  # no abbreviations


def test_run_prints_one_line_and_exits_2() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run(["init", "--output=dir:/d"], WIF, out=out, err=err) == 2
    assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("error: ")
    err = io.StringIO()
    assert run(["frobnicate"], {}, out=out, err=err) == 2 and "expected init or renew-cert" in err.getvalue()
    assert run(["init", "--help"], {}, out=out, err=err) == 0


def test_top_level_dispatcher_reaches_setup(capsys: pytest.CaptureFixture[str]) -> None:
    from mcp_tunnel.cli import main

    assert main(["setup", "renew-cert", "--output=nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --output 'nope'")
