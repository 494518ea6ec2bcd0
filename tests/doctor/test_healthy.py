"""A healthy stack passes end to end (real proxy, real MCP server, the CLI as operators run it),
and the output contract: one line per check, the exact --json document, the exit codes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import yaml
from doctor_support import Guard, doctor, make_pair, run_doctor_cli, tunnel_token

from mcp_tunnel.doctor.model import STEPS
from support.mcp_server import running_mcp_server
from support.proxy import start_proxy, write_config

COMPOSE = {
    "services": {
        "cloudflared": {
            "image": "cloudflare/cloudflared:2025.1.0",
            "command": "tunnel --no-autoupdate run --url http://localhost:8080",
            "environment": ["TUNNEL_TOKEN"],
            "network_mode": "service:mcp-proxy",
        },
        "mcp-proxy": {"image": "mcp-tunnel:local"},
    }
}


@pytest.mark.parametrize("json_response", [True, False], ids=["json", "sse"])
async def test_healthy_stack_passes(open_dir: Path, json_response: bool) -> None:
    pki = make_pair(open_dir / "data")
    host = pki.host("echo")
    os.chown(pki.key_file, 65532, 65532)
    pki.key_file.chmod(0o600)  # the hardened layout: the proxy's user owns its key
    compose = open_dir / "docker-compose.yaml"
    compose.write_text(yaml.safe_dump(COMPOSE))
    async with running_mcp_server(json_response=json_response, allowed_hosts=[host]) as port:
        proxy = await start_proxy(open_dir, pki, {"echo": f"http://127.0.0.1:{port}"})
        try:
            result = await run_doctor_cli(
                "--config", str(proxy.config_path), "--compose", str(compose), "--ca", str(pki.ca_file),
                "--proxy", proxy.url, "--path", "/mcp", "--json", env={"TUNNEL_TOKEN": tunnel_token()},
            )  # fmt: skip
        finally:
            await proxy.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    doc = result.json()
    assert doc["ok"] is True
    assert [s["step"] for s in doc["steps"]] == list(STEPS)
    by_name = {(s["step"], c["name"]): c for s in doc["steps"] for c in s["checks"]}
    assert not [c for c in by_name.values() if c["status"] == "fail"]
    # the only warning is the loopback allow-list a test stack needs
    assert [n for n, c in by_name.items() if c["status"] == "warn"] == [("config", "allowed_ips")]
    init = by_name[("routing", "mcp_initialize:echo")]
    assert init["status"] == "ok" and f"initialize via https://{host}/mcp: server mcp-" in init["message"]
    assert by_name[("tls", f"handshake:{host}")]["status"] == "ok"
    assert by_name[("tls", "key_readable")]["status"] == "ok"
    assert by_name[("outbound", "tunnel_token")]["status"] == "ok"
    assert by_name[("outbound", "compose.url")]["status"] == "ok"
    for step in ("outbound", "config", "tls", "routing"):
        assert any(c["status"] == "ok" for (s, _), c in by_name.items() if s == step)
    assert proxy.log_has('msg="request started" method=POST host=echo.tunnel.test path=/mcp')


async def test_json_document_has_exactly_the_documented_shape(open_dir: Path, up_url: str) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": up_url})
    result = await run_doctor_cli("--config", str(config), "--json")
    doc = result.json()
    assert set(doc) == {"ok", "steps"} and isinstance(doc["ok"], bool)
    assert [set(s) for s in doc["steps"]] == [{"step", "checks"}] * 5
    for step in doc["steps"]:
        assert step["step"] in STEPS and step["checks"]
        for check in step["checks"]:
            assert set(check) == {"name", "status", "message", "fix"}
            assert check["status"] in ("ok", "warn", "fail", "skip")
            assert isinstance(check["name"], str) and isinstance(check["message"], str)
            assert check["fix"] is None or isinstance(check["fix"], str)
            if check["status"] == "fail":
                assert check["fix"]
    assert result.returncode == (0 if doc["ok"] else 1)


async def test_text_output_is_one_line_per_check_and_failure_exits_1(open_dir: Path) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, ["echo: http://127.0.0.1:9"])
    text = await run_doctor_cli("--config", str(config))
    as_json = (await run_doctor_cli("--config", str(config), "--json")).json()
    n_checks = sum(len(s["checks"]) for s in as_json["steps"])
    lines = text.stdout.splitlines()
    assert len(lines) == n_checks + 1
    assert lines[-1].startswith("doctor: FAILED at config")
    failing = next(line for line in lines if line.startswith("config    fail  load:"))
    assert "-- fix: write routes as a mapping" in failing
    assert text.returncode == 1 and as_json["ok"] is False


@pytest.mark.parametrize(
    "args",
    [[], ["--config", "c.yaml", "--proxy", "http://x/"], ["--config", "c.yaml", "--edge-host", "nope"]],
)
async def test_usage_errors_exit_2(args: list[str]) -> None:
    result = await run_doctor_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


async def test_the_network_guard_refuses_other_machines(network_guard: Guard) -> None:
    """The guard every doctor test runs under really refuses a connection off this machine."""
    with pytest.raises(AssertionError):
        await asyncio.open_connection("192.0.2.1", 7844)
    assert network_guard.violations == ["connect 192.0.2.1:7844"]
    network_guard.violations.clear()


async def test_a_step_that_crashes_is_a_finding_and_the_walk_goes_on(
    open_dir: Path, up_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_tunnel.doctor import tls

    async def boom(ctx: object) -> list[object]:
        raise RuntimeError("boom")

    monkeypatch.setattr(tls, "run", boom)
    pki = make_pair(open_dir / "data")
    report, _ = await doctor(write_config(open_dir, pki, {"echo": up_url}))
    assert [s.step for s in report.steps] == list(STEPS)
    check = report.find("tls", "internal_error")
    assert check is not None and "RuntimeError: boom" in check.message and not report.ok


def test_path_flag_for_every_route_or_one() -> None:
    from mcp_tunnel.doctor.cli import parse_paths
    from mcp_tunnel.doctor.context import Options
    from mcp_tunnel.errors import UsageError

    options = Options(paths=parse_paths(["/mcp", "Auth=/oauth/mcp"]))
    assert options.path_for("echo") == "/mcp" and options.path_for("auth") == "/oauth/mcp"
    assert Options(paths=parse_paths(["echo=/mcp"])).path_for("other") is None
    with pytest.raises(UsageError):
        parse_paths(["mcp"])
