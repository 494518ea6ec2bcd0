"""Step 1: the tunnel token, the Compose wiring, the edge (a local listener stands in for it)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import yaml
from doctor_support import doctor, make_pair, statuses, tunnel_token

from mcp_tunnel.doctor.model import Status
from mcp_tunnel.doctor.outbound import ComposeFacts, judge_compose, judge_token
from support.procs import free_port
from support.proxy import write_config

REPO = Path(__file__).resolve().parents[2]

# --- the token -----------------------------------------------------------------------------


def test_token_console_shape_is_ok() -> None:
    check = judge_token(tunnel_token(), "TUNNEL_TOKEN")
    assert check.status is Status.OK
    assert "5f0c1e9a-1234-4cde-8f00-0123456789ab" in check.message


def test_token_url_safe_without_padding_is_ok() -> None:
    raw = json.dumps({"a": "x", "t": "5f0c1e9a-1234-4cde-8f00-0123456789ab", "s": "??>>"}).encode()
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert judge_token(token + "\n", "file").status is Status.OK


@pytest.mark.parametrize("cut", [10, 40, 77])
def test_truncated_token_fails_with_the_fix(cut: int) -> None:
    token = tunnel_token()
    check = judge_token(token[:cut], "TUNNEL_TOKEN")
    assert check.status is Status.FAIL
    assert "truncated" in check.message
    assert check.fix is not None and "copy the whole token" in check.fix
    assert token[:cut] not in check.message + check.fix  # the secret is never echoed


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("", "empty"),
        ("'eyJhIjoieCJ9'", "quotes"),
        ("eyJh Ijoi", "whitespace"),
        ("not!base64", "not base64"),
        (base64.b64encode(b"[1, 2]").decode(), "not an object"),
    ],
)
def test_malformed_tokens_fail(token: str, words: str) -> None:
    check = judge_token(token, "TUNNEL_TOKEN")
    assert check.status is Status.FAIL
    assert words in check.message


def test_json_without_tunnel_keys_warns() -> None:
    token = base64.b64encode(json.dumps({"hello": "world"}).encode()).decode()
    check = judge_token(token, "TUNNEL_TOKEN")
    assert check.status is Status.WARN and "a, t, s" in check.message


def test_no_token_is_a_skip_with_the_reason() -> None:
    check = judge_token(None, "TUNNEL_TOKEN")
    assert check.status is Status.SKIP and "--token-file" in check.message


async def test_token_file_and_environment(open_dir: Path) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": "http://127.0.0.1:9"})
    bad = open_dir / "tunnel-token"
    bad.write_text(tunnel_token()[:50])
    report, _ = await doctor(config, token_file=str(bad), environ={"TUNNEL_TOKEN": tunnel_token()})
    assert statuses(report, "outbound")["tunnel_token"] == "fail"  # the file wins over the environment
    report, _ = await doctor(config, environ={"TUNNEL_TOKEN": tunnel_token()})
    assert statuses(report, "outbound")["tunnel_token"] == "ok"
    report, _ = await doctor(config, token_file=str(open_dir / "missing"))
    check = report.find("outbound", "tunnel_token")
    assert check is not None and check.status is Status.FAIL and "cannot read" in check.message


# --- Compose ---------------------------------------------------------------------------------


def _compose(cloudflared: dict[str, object]) -> dict[str, object]:
    return {
        "services": {
            "cloudflared": {"image": "cloudflare/cloudflared:2025.1.0", **cloudflared},
            "mcp-proxy": {"image": "mcp-tunnel:local"},
        }
    }


def _judge(doc: object, port: int = 8080, **kw: bool) -> dict[str, tuple[str, str | None]]:
    facts = ComposeFacts("docker-compose.yaml", document=doc, listen_port=port, port_known=True, **kw)
    return {c.name: (c.status.value, c.fix) for c in judge_compose(facts)}


GOOD = {
    "command": "tunnel --no-autoupdate run --url http://localhost:8080",
    "environment": ["TUNNEL_TOKEN"],
    "network_mode": "service:mcp-proxy",
}


def test_official_layout_passes() -> None:
    result = _judge(_compose(GOOD), token_available=True)
    assert {k: v[0] for k, v in result.items()} == {
        "compose.cloudflared": "ok",
        "compose.url": "ok",
        "compose.network_mode": "ok",
        "compose.token": "ok",
    }


@pytest.mark.parametrize("flow", ["quickstart", "manual", "programmatic"])
def test_the_shipped_compose_files_pass(flow: str) -> None:
    path = REPO / "deploy" / "compose" / flow / "docker-compose.yaml"
    if not path.exists():
        pytest.skip(f"{path} not in this tree")
    result = _judge(yaml.safe_load(path.read_text()), token_available=True)
    assert all(status == "ok" for status, _ in result.values()), result


def test_missing_url_fails_with_the_troubleshooting_fix() -> None:
    result = _judge(_compose({**GOOD, "command": "tunnel --no-autoupdate run"}), token_available=True)
    status, fix = result["compose.url"]
    assert status == "fail"
    assert fix is not None
    assert "--url http://127.0.0.1:8080" in fix and 'network_mode: "service:mcp-proxy"' in fix


def test_missing_network_mode_fails() -> None:
    cf = {k: v for k, v in GOOD.items() if k != "network_mode"}
    status, fix = _judge(_compose(cf), token_available=True)["compose.network_mode"]
    assert status == "fail" and fix is not None and 'network_mode: "service:mcp-proxy"' in fix


def test_url_must_match_the_proxy_listen_port_and_be_plain_http() -> None:
    status, fix = _judge(_compose(GOOD), port=9090, token_available=True)["compose.url"]
    assert status == "fail" and fix is not None and "http://127.0.0.1:9090" in fix
    https = {**GOOD, "command": ["tunnel", "run", "--url=https://localhost:8080"]}
    status, _ = _judge(_compose(https), token_available=True)["compose.url"]
    assert status == "fail"


def test_tunnel_url_environment_counts_as_url() -> None:
    cf = {
        **GOOD,
        "command": "tunnel run",
        "environment": {"TUNNEL_TOKEN": None, "TUNNEL_URL": "http://localhost:8080"},
    }
    assert _judge(_compose(cf), token_available=True)["compose.url"][0] == "ok"


def test_token_not_exported_warns_and_dotenv_satisfies() -> None:
    status, fix = _judge(_compose(GOOD))["compose.token"]
    assert status == "warn" and fix is not None and "export TUNNEL_TOKEN" in fix
    assert _judge(_compose(GOOD), dotenv_has_token=True)["compose.token"][0] == "ok"
    no_env = {k: v for k, v in GOOD.items() if k != "environment"}
    assert _judge(_compose(no_env), token_available=True)["compose.token"][0] == "fail"


async def test_compose_file_through_the_doctor_uses_the_config_port(open_dir: Path) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": "http://127.0.0.1:9"}, listen_addr=":9000")
    compose = open_dir / "docker-compose.yaml"
    compose.write_text(yaml.safe_dump(_compose({**GOOD, "command": "tunnel --no-autoupdate run"})))
    report, _ = await doctor(config, compose=str(compose), environ={"TUNNEL_TOKEN": tunnel_token()})
    check = report.find("outbound", "compose.url")
    assert check is not None and check.status is Status.FAIL
    assert check.fix is not None and "--url http://127.0.0.1:9000" in check.fix
    assert "No ingress rules were defined" in check.message
    assert report.steps[0].failed and not report.ok


async def test_unparsable_compose_file_fails(open_dir: Path) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": "http://127.0.0.1:9"})
    compose = open_dir / "docker-compose.yaml"
    compose.write_text("services: [\n")
    report, _ = await doctor(config, compose=str(compose))
    assert statuses(report, "outbound")["compose.file"] == "fail"


# --- the edge --------------------------------------------------------------------------------


async def test_edge_is_off_by_default(open_dir: Path) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": "http://127.0.0.1:9"})
    report, probes = await doctor(config)
    assert statuses(report, "outbound")["edge"] == "skip"
    assert all(port != 7844 for _, port in probes.connects)


async def test_edge_reachable_through_a_local_listener(open_dir: Path) -> None:
    accepted = asyncio.Event()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": "http://127.0.0.1:9"})
    try:
        report, _ = await doctor(config, edge=True, edge_host=f"127.0.0.1:{port}")
        await asyncio.wait_for(accepted.wait(), 5)
    finally:
        server.close()
    assert statuses(report, "outbound")[f"edge.connect:127.0.0.1:{port}"] == "ok"


async def test_edge_blocked_fails_with_the_firewall_fix(open_dir: Path) -> None:
    port = free_port()
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": "http://127.0.0.1:9"})
    report, _ = await doctor(config, edge=True, edge_host=f"127.0.0.1:{port}")
    check = report.find("outbound", f"edge.connect:127.0.0.1:{port}")
    assert check is not None and check.status is Status.FAIL
    assert check.fix is not None and "7844" in check.fix and "198.41.192.0/19" in check.fix
