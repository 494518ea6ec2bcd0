"""The Compose files: they parse, and they name what the official docs require (digest §8.1,
§6.7), hardened, with the admin port kept off the host's public interfaces."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose"
FLOWS = ("quickstart", "manual", "programmatic")
HARDENED = ("manual", "programmatic")
CLOUDFLARED = "cloudflare/cloudflared@sha256:6b599ca3e974349ead3286d178da61d291961182ec3fe9c505e1dd02c8ac31b0"


def compose(flow: str) -> dict[str, Any]:
    doc = yaml.safe_load((COMPOSE / flow / "docker-compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def proxy_config(flow: str) -> dict[str, Any]:
    doc = yaml.safe_load((COMPOSE / flow / "config" / "mcp-proxy.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def go_seconds(duration: str) -> int:
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert m and duration, duration
    h, mi, s = (int(x or 0) for x in m.groups())
    return h * 3600 + mi * 60 + s


@pytest.mark.parametrize("flow", FLOWS)
def test_layout(flow: str) -> None:
    assert (COMPOSE / flow / "docker-compose.yaml").is_file()
    assert (COMPOSE / flow / "config" / "mcp-proxy.yaml").is_file()
    services = compose(flow)["services"]
    assert {"mcp-proxy", "cloudflared"} <= set(services)


@pytest.mark.parametrize("flow", FLOWS)
def test_cloudflared_shares_the_proxy_netns(flow: str) -> None:
    cf = compose(flow)["services"]["cloudflared"]
    assert cf["network_mode"] == "service:mcp-proxy"
    assert cf["image"] == CLOUDFLARED
    command = cf["command"].split() if isinstance(cf["command"], str) else cf["command"]
    assert command[:2] == ["tunnel", "--no-autoupdate"] and "run" in command
    # loopback of the shared namespace (127.0.0.1: localhost may mean ::1 first)
    assert command[command.index("--url") + 1] == "http://127.0.0.1:8080"
    # cloudflared's metrics (also pprof and /config) stay on that loopback too
    assert command[command.index("--metrics") + 1].startswith("127.0.0.1:")
    assert cf["environment"] == ["TUNNEL_TOKEN"]  # from the host environment, never in the file
    assert "ports" not in cf


@pytest.mark.parametrize("flow", FLOWS)
def test_proxy_mounts_and_config(flow: str) -> None:
    proxy = compose(flow)["services"]["mcp-proxy"]
    # exactly the files it reads, read-only: never ./data whole (the CA key, the tunnel token)
    assert proxy["volumes"] == [
        "./config/mcp-proxy.yaml:/etc/mcp-gateway/config.yaml:ro",
        "./data/tls.crt:/data/tls.crt:ro",
        "./data/tls.key:/data/tls.key:ro",
    ]
    assert "TUNNEL_DOMAIN" in proxy["environment"]  # the config's ${TUNNEL_DOMAIN}
    cfg = proxy_config(flow)
    assert cfg["listen_addr"] == "127.0.0.1:8080"  # cloudflared's --url, in the shared namespace
    assert cfg["tls"] == {"cert_file": "/data/tls.crt", "key_file": "/data/tls.key"}
    assert cfg["tunnel_domain"] == "${TUNNEL_DOMAIN}"
    assert isinstance(cfg["routes"], dict) and cfg["routes"]  # a map, never a list


@pytest.mark.parametrize("flow", FLOWS)
def test_stop_grace_period_matches_shutdown_timeout(flow: str) -> None:
    shutdown = go_seconds(str(proxy_config(flow).get("shutdown_timeout", "30s")))  # default 30s
    for name, service in compose(flow)["services"].items():
        if name in ("mcp-proxy", "cloudflared"):
            assert go_seconds(service["stop_grace_period"]) == shutdown, name


@pytest.mark.parametrize("flow", FLOWS)
def test_no_port_is_published_on_a_public_interface(flow: str) -> None:
    cfg = proxy_config(flow)
    for name, service in compose(flow)["services"].items():
        for port in service.get("ports", []):
            spec = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
            assert spec.startswith(("127.0.0.1:", "[::1]:")), f"{flow}/{name} publishes {spec}"
    admin = cfg.get("admin_addr")
    if admin is not None:
        assert admin.startswith("127.0.0.1:"), "admin_addr must stay on loopback in the shared netns"


@pytest.mark.parametrize("flow", HARDENED)
def test_hardened_services(flow: str) -> None:
    services = compose(flow)["services"]
    for name, service in services.items():
        assert service["user"] == "65532:65532", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "privileged" not in service and "cap_add" not in service, name
    for name in ("mcp-proxy", "cloudflared"):
        assert services[name]["restart"] == "unless-stopped"
        assert services[name]["logging"]["options"] == {"max-size": "10m", "max-file": "3"}
    proxy = services["mcp-proxy"]
    assert proxy["image"].startswith("${MCP_TUNNEL_IMAGE")
    test = proxy["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1].endswith("/python") and test[-1].endswith("healthcheck.py")
    assert services["cloudflared"]["depends_on"]["mcp-proxy"]["condition"] == "service_healthy"
    assert proxy_config(flow)["admin_addr"] == "127.0.0.1:9090"


def test_programmatic_setup_service() -> None:
    services = compose("programmatic")["services"]
    setup = services["setup"]
    assert setup["entrypoint"] == ["/setup"]
    assert setup["profiles"] == ["setup"]  # `docker compose up -d` starts only the stack
    assert setup["command"][0] == "init"
    assert "--api-url=https://api.anthropic.com" in setup["command"]
    assert "--output=dir:/data" in setup["command"]
    assert "--token-version=1" in setup["command"]
    assert setup["volumes"][0] == "./data:/data"  # read-write for setup only
    assert setup["image"] == services["mcp-proxy"]["image"]
    assert {
        "TUNNEL_ID",
        "ANTHROPIC_FEDERATION_RULE_ID",
        "ANTHROPIC_ORGANIZATION_ID",
        "ANTHROPIC_WORKSPACE_ID",
        "ANTHROPIC_IDENTITY_TOKEN",
        "ANTHROPIC_IDENTITY_TOKEN_FILE",
        "API_TOKEN",
    } == set(setup["environment"])
    assert setup["healthcheck"] == {"disable": True}
    for name in ("mcp-proxy", "cloudflared"):
        assert "profiles" not in services[name]


def test_manual_flow_has_no_setup_service() -> None:
    assert set(compose("manual")["services"]) == {"mcp-proxy", "cloudflared"}


def test_quickstart_sample_server() -> None:
    services = compose("quickstart")["services"]
    hello = services["hello-mcp"]
    assert hello["image"].startswith("python:3.13-slim")
    assert "./hello_server.py:/app/hello_server.py:ro" in hello["volumes"]
    assert "mcp==" in hello["command"]  # pinned
    assert proxy_config("quickstart")["routes"] == {"echo": "http://hello-mcp:9000"}
    assert services["mcp-proxy"]["build"] == "../../.."
    assert (COMPOSE / "quickstart" / services["mcp-proxy"]["build"] / "Dockerfile").is_file()


def test_quickstart_sample_server_offers_hello() -> None:
    """The sample server file works with the pinned MCP SDK: it registers the `hello` tool."""
    import asyncio
    import importlib.util

    pytest.importorskip("mcp.server.mcpserver")
    spec = importlib.util.spec_from_file_location("hello_server", COMPOSE / "quickstart" / "hello_server.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tools = asyncio.run(module.mcp.list_tools())
    assert [t.name for t in tools] == ["hello"]
    assert tools[0].input_schema["properties"]["name"]["default"] == "world"


def test_secrets_are_git_ignored() -> None:
    ignore = (COMPOSE / ".gitignore").read_text().split()
    assert "*/data/" in ignore and "*/.env" in ignore


@pytest.mark.parametrize("flow", FLOWS)
def test_example_configs_load_in_the_proxy_loader(flow: str, tmp_path: Path) -> None:
    """Each example config is accepted by mcp-tunnel's own loader (with the pair it points at)."""
    config_mod = pytest.importorskip("mcp_tunnel.config")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("tls.crt", "tls.key"):
        (data / name).write_text("")
    text = (COMPOSE / flow / "config" / "mcp-proxy.yaml").read_text().replace("/data/", f"{data}/")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    try:
        cfg = config_mod.load_config(str(path), environ={"TUNNEL_DOMAIN": "abcd1234.tunnel.anthropic.com"})
    except NotImplementedError:
        pytest.skip("mcp_tunnel.config.load_config is not implemented yet")
    assert cfg.listen_port == 8080
    assert cfg.tunnel_domain == "abcd1234.tunnel.anthropic.com"
    assert cfg.shutdown_timeout == go_seconds(str(proxy_config(flow).get("shutdown_timeout", "30s")))


@pytest.mark.parametrize("flow", FLOWS)
def test_the_proxy_mounts_only_what_its_config_reads(flow: str) -> None:
    proxy = compose(flow)["services"]["mcp-proxy"]
    mounted = {v.split(":")[1] for v in proxy["volumes"]}
    tls = proxy_config(flow)["tls"]
    assert mounted == {"/etc/mcp-gateway/config.yaml", tls["cert_file"], tls["key_file"]}


@pytest.mark.parametrize("flow", FLOWS)
def test_the_doctor_accepts_the_shipped_compose_file(flow: str) -> None:
    """What `doctor` recommends and what the files ship agree: every compose.* check is ok."""
    from mcp_tunnel.doctor.model import Status
    from mcp_tunnel.doctor.outbound import ComposeFacts, judge_compose

    path = COMPOSE / flow / "docker-compose.yaml"
    facts = ComposeFacts(
        str(path), document=compose(flow), listen_port=8080, port_known=True, token_available=True
    )
    checks = {c.name: c for c in judge_compose(facts)}
    for name in ("compose.cloudflared", "compose.url", "compose.network_mode", "compose.token"):
        assert checks[name].status is Status.OK, (name, checks[name].message)
