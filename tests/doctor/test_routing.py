"""Step 4: resolution, the IP policy (never connecting to a refused address), connect, initialize."""

from __future__ import annotations

from pathlib import Path

import pytest
from doctor_support import Guard, doctor, failed_steps, make_pair, statuses

from mcp_tunnel.doctor.model import Status
from mcp_tunnel.ippolicy import covering_network
from support.procs import free_port
from support.proxy import start_proxy, write_config
from support.upstreams import RecordingUpstream, ScriptedResolver


@pytest.mark.parametrize(
    ("addresses", "cidr"),
    [
        (["8.8.8.8"], "8.8.8.8/32"),
        (["8.8.8.8", "8.8.4.4"], "8.8.0.0/20"),
        (["172.32.0.1", "172.32.0.2"], "172.32.0.0/30"),
        (["10.0.0.1", "192.168.0.1"], "0.0.0.0/0"),
    ],
)
def test_covering_network_is_the_narrowest(addresses: list[str], cidr: str) -> None:
    assert str(covering_network(addresses)) == cidr


async def test_ip_literal_public_upstream_fails_at_load_and_is_never_contacted(
    open_dir: Path, network_guard: Guard
) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"pub": "http://8.8.8.8:80"}, upstream=None)
    report, probes = await doctor(config)
    check = report.find("config", "load")
    assert check is not None and check.status is Status.FAIL
    assert "IP validation failed: 8.8.8.8 is not a private address" in check.message
    assert check.fix is not None and "add 8.8.8.8/32 to upstream.allowed_ips" in check.fix
    assert probes.connects == []
    assert not any(host == "8.8.8.8" for host, _ in network_guard.connects)


async def test_name_resolving_to_a_public_address_gets_the_exact_cidr_and_no_connection(
    open_dir: Path, network_guard: Guard
) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"docs": "http://docs.example.corp:8080"}, upstream=None)
    resolver = ScriptedResolver({"docs.example.corp": [["8.8.8.8"]]})
    report, probes = await doctor(config, resolver=resolver)
    check = report.find("routing", "allowed_ips:docs")
    assert check is not None and check.status is Status.FAIL
    assert "IP validation failed: 8.8.8.8 is not a private address" in check.message
    assert check.fix is not None
    assert "add 8.8.8.8/32 to upstream.allowed_ips" in check.fix
    assert "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 8.8.8.8/32" in check.fix  # it replaces the default
    assert "public address" in check.fix
    assert statuses(report, "routing")["connect:docs"] == "skip"
    assert probes.connects == []
    assert not any(host == "8.8.8.8" for host, _ in network_guard.connects)
    assert failed_steps(report) == ["routing"]


async def test_partly_refused_name_warns_and_connects_only_to_the_allowed_address(open_dir: Path) -> None:
    up = await RecordingUpstream().start()
    port = up.port
    try:
        pki = make_pair(open_dir / "data")
        config = write_config(open_dir, pki, {"docs": f"http://docs.internal:{port}"})
        resolver = ScriptedResolver({"docs.internal": [["172.32.0.1", "127.0.0.1"]]})
        report, probes = await doctor(config, resolver=resolver)
    finally:
        await up.close()
    check = report.find("routing", "allowed_ips:docs")
    assert check is not None and check.status is Status.WARN and check.fix and "172.32.0.1/32" in check.fix
    assert statuses(report, "routing")["connect:docs"] == "ok"
    assert probes.connects == [("127.0.0.1", port)]
    assert up.connections == 1


async def test_upstream_that_does_not_resolve(open_dir: Path) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"docs": "http://docs.internal:8080"})
    report, probes = await doctor(config, resolver=ScriptedResolver({}))
    check = report.find("routing", "resolve:docs")
    assert (
        check is not None
        and check.status is Status.FAIL
        and check.fix
        and "dig +short docs.internal" in check.fix
    )
    assert statuses(report, "routing")["connect:docs"] == "skip"
    assert probes.connects == []


async def test_upstream_down_fails_at_connect_with_the_fix(open_dir: Path) -> None:
    port = free_port()  # nothing listens here
    pki = make_pair(open_dir / "data")
    proxy = await start_proxy(open_dir, pki, {"echo": f"http://127.0.0.1:{port}"})
    try:
        report, _ = await doctor(proxy.config_path, proxy=proxy.url, paths={"": "/mcp"})
    finally:
        await proxy.stop()
    check = report.find("routing", "connect:echo")
    assert check is not None and check.status is Status.FAIL
    assert f"dial tcp 127.0.0.1:{port}: connect: connection refused" in check.message
    assert check.fix is not None and "start the upstream" in check.fix
    assert statuses(report, "tls")["handshake:echo.tunnel.test"] == "ok"
    # the initialize cannot succeed through a dead upstream: skipped with the reason, not failed twice
    init = report.find("routing", "mcp_initialize:echo")
    assert init is not None and init.status is Status.SKIP and "not reachable" in init.message
    assert failed_steps(report) == ["routing"]


async def test_initialize_against_a_non_mcp_path_fails_with_404_fix(open_dir: Path) -> None:
    async def not_found(req, writer):  # type: ignore[no-untyped-def]
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")

    up = await RecordingUpstream(handler=not_found).start()
    pki = make_pair(open_dir / "data")
    proxy = await start_proxy(open_dir, pki, {"echo": f"http://127.0.0.1:{up.port}"})
    try:
        report, _ = await doctor(proxy.config_path, proxy=proxy.url, paths={"echo": "/wrong"})
    finally:
        await proxy.stop()
        await up.close()
    check = report.find("routing", "mcp_initialize:echo")
    assert check is not None and check.status is Status.FAIL and "answered 404" in check.message
    assert check.fix is not None and "MCP path" in check.fix
    assert up.requests[0].method == "POST" and up.requests[0].target == "/wrong"
    assert '"method": "initialize"' in up.requests[0].body.decode()


async def test_route_specific_path_skips_the_other_routes(open_dir: Path, up_url: str) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": up_url, "auth": up_url})
    report, _ = await doctor(config, paths={"echo": "/mcp"})
    assert "no --path for this route" in report.find("routing", "mcp_initialize:auth").message  # type: ignore[union-attr]
