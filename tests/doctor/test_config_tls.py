"""Steps 2 and 3: a broken config, and every inner-TLS row of the troubleshooting table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from doctor_support import doctor, failed_steps, make_pair, statuses

from mcp_tunnel.doctor.model import STEPS, Status
from mcp_tunnel.doctor.tls import Access, FileStat, access, judge_readable
from support.proxy import start_proxy, write_config

# --- config ------------------------------------------------------------------------------------


async def test_routes_as_a_list_fails_at_config_and_the_walk_goes_on(open_dir: Path) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, ["echo: http://127.0.0.1:9"])
    report, probes = await doctor(config, proxy="ws://127.0.0.1:9/", paths={"": "/mcp"})
    assert [s.step for s in report.steps] == list(STEPS)  # every step, in order
    assert failed_steps(report) == ["config"]
    check = report.find("config", "load")
    assert check is not None and check.status is Status.FAIL
    assert "cannot unmarshal !!seq into map[string]string" in check.message
    assert check.fix is not None and "routes: { echo: http://hello-mcp:9000 }" in check.fix
    for step in ("tls", "routing", "oauth"):
        assert {c.status for c in report.steps[STEPS.index(step)].checks} == {Status.SKIP}
        assert "config did not load" in report.steps[STEPS.index(step)].checks[0].message
    assert probes.connects == []


async def test_upstream_with_a_path_gets_the_official_fix(open_dir: Path) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": "http://127.0.0.1:9000/mcp"})
    report, _ = await doctor(config)
    check = report.find("config", "load")
    assert check is not None and check.status is Status.FAIL
    assert "invalid upstream (must be scheme://host:port)" in check.message
    assert check.fix is not None and "connector URL" in check.fix


@pytest.mark.parametrize(
    ("upstream", "needle"),
    [
        ({"allowed_ips": ["0.0.0.0/0"]}, "allows every address"),
        ({"allowed_ips": None, "disable_ip_validation": True}, "disable_ip_validation is true"),
        ({"allowed_ips": ["127.0.0.0/8"]}, "allows loopback"),
        ({"allowed_ips": ["169.254.0.0/16"]}, "cloud metadata"),
    ],
)
async def test_dangerous_settings_warn(open_dir: Path, upstream: dict[str, object], needle: str) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": "http://echo.internal:9"}, upstream=upstream)
    report, _ = await doctor(config, resolver=_NoDNS())
    warns = [c for s, c in report.checks() if s == "config" and c.name == "allowed_ips"]
    assert [c.status for c in warns] == [Status.WARN]
    assert needle in warns[0].message and warns[0].fix


async def test_default_allow_list_is_ok(open_dir: Path) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": "http://10.1.2.3:9"}, upstream=None)
    report, _ = await doctor(config, resolver=_NoDNS())
    assert statuses(report, "config") == {"load": "ok", "tunnel_domain": "ok", "allowed_ips": "ok"}


class _NoDNS:
    """These config tests never need the routing step to reach anything."""

    async def resolve(self, host: str, port: int) -> list[str]:
        raise OSError("no DNS in this test")


# --- tunnel_domain and the SAN -----------------------------------------------------------------


async def test_wrong_tunnel_domain_with_setup_output(open_dir: Path, up_url: str) -> None:
    """setup writes data/tunnel-domain: the doctor knows the assigned domain and says which is wrong."""
    pki = make_pair(open_dir / "data", "abcd.tunnel.test")
    (open_dir / "data" / "tunnel-domain").write_text("abcd.tunnel.test\n")
    config = write_config(open_dir, pki, {"echo": up_url}, tunnel_domain="wxyz.tunnel.test")
    report, _ = await doctor(config)
    check = report.find("config", "tunnel_domain")
    assert check is not None and check.status is Status.FAIL
    assert "No route configured for host" in check.message
    assert check.fix is not None and "set tunnel_domain: abcd.tunnel.test" in check.fix
    san = report.find("tls", "server.san")
    assert san is not None and san.status is Status.FAIL
    assert san.fix is not None and "set tunnel_domain: abcd.tunnel.test" in san.fix
    assert failed_steps(report) == ["config", "tls"]


async def test_wrong_tunnel_domain_without_setup_output_names_both_ways(open_dir: Path, up_url: str) -> None:
    pki = make_pair(open_dir / "data", "abcd.tunnel.test")
    config = write_config(open_dir, pki, {"echo": up_url}, tunnel_domain="wxyz.tunnel.test")
    report, _ = await doctor(config)
    san = report.find("tls", "server.san")
    assert san is not None and san.status is Status.FAIL
    assert san.fix is not None
    assert "set tunnel_domain: abcd.tunnel.test" in san.fix and "--domain wxyz.tunnel.test" in san.fix


async def test_san_for_another_domain_fails_offline_and_live(open_dir: Path, up_url: str) -> None:
    """The certificate is for another domain than the tunnel's (setup output says which is right)."""
    pki = make_pair(open_dir / "data", "other.test")
    (open_dir / "data" / "tunnel-domain").write_text("tunnel.test\n")
    proxy = await start_proxy(open_dir, pki, {"echo": up_url}, tunnel_domain="tunnel.test")
    try:
        report, _ = await doctor(proxy.config_path, proxy=proxy.url, ca=str(pki.ca_file))
    finally:
        await proxy.stop()
    san = report.find("tls", "server.san")
    assert san is not None and san.status is Status.FAIL
    assert "*.tunnel.test" in san.message and "*.other.test" in san.message
    assert san.fix is not None and "certs issue" in san.fix and "--domain tunnel.test" in san.fix
    live = report.find("tls", "handshake:echo.tunnel.test")
    assert live is not None and live.status is Status.FAIL
    assert "tls handshake failed" in live.message and "hostname mismatch" in live.message.lower()
    assert report.find("config", "tunnel_domain").status is Status.OK  # type: ignore[union-attr]
    assert failed_steps(report) == ["tls"]


async def test_expired_certificate(open_dir: Path, up_url: str) -> None:
    pki = make_pair(open_dir / "data", expired=True)
    proxy = await start_proxy(open_dir, pki, {"echo": up_url})
    try:
        report, _ = await doctor(proxy.config_path, proxy=proxy.url)
    finally:
        await proxy.stop()
    check = report.find("tls", "server.validity")
    assert check is not None and check.status is Status.FAIL and "expired" in check.message
    assert check.fix is not None and "certs issue" in check.fix and "--reuse-key" in check.fix
    live = report.find("tls", "handshake:echo.tunnel.test")
    assert live is not None and live.status is Status.FAIL and "expired" in live.message
    assert proxy.log_has("tls handshake failed")


async def test_ca_not_the_issuer(open_dir: Path, up_url: str) -> None:
    pki = make_pair(open_dir / "data")
    other = make_pair(open_dir / "other")
    proxy = await start_proxy(open_dir, pki, {"echo": up_url})
    try:
        report, _ = await doctor(proxy.config_path, proxy=proxy.url, ca=str(other.ca_file))
    finally:
        await proxy.stop()
    check = report.find("tls", "server.signed_by_ca")
    assert check is not None and check.status is Status.FAIL
    assert check.fix is not None and "--ca" in check.fix and "unknown ca" in check.fix
    live = report.find("tls", "handshake:echo.tunnel.test")
    assert live is not None and live.status is Status.FAIL
    assert "unable to get local issuer certificate" in live.message
    assert proxy.log_has("unknown ca")
    # what is certainly wrong is named once; what depends on it is skipped, not failed again
    assert statuses(report, "routing")["mcp_initialize:echo"] == "skip"


async def test_ca_defaults_to_the_one_beside_the_certificate(open_dir: Path, up_url: str) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"echo": up_url})
    report, _ = await doctor(config)
    check = report.find("tls", "ca")
    assert check is not None and check.status is Status.OK and str(pki.ca_file) in check.message
    (open_dir / "data" / "ca.crt").unlink()
    report, _ = await doctor(config)
    assert statuses(report, "tls")["ca"] == "skip"
    assert statuses(report, "tls")["server.validity"] == "ok"  # the server side is still judged
    assert statuses(report, "tls")["server.signed_by_ca"] == "skip"


async def test_route_key_two_labels_deep_is_not_covered_by_the_wildcard(open_dir: Path, up_url: str) -> None:
    pki = make_pair(open_dir / "data")
    config = write_config(open_dir, pki, {"a.b": up_url})
    report, _ = await doctor(config)
    check = report.find("tls", "route_hosts")
    assert check is not None and check.status is Status.FAIL and "a.b.tunnel.test" in check.message


# --- the key, as the proxy's user sees it -----------------------------------------------------


async def test_key_0600_owned_by_root_is_unreadable_by_65532(open_dir: Path, up_url: str) -> None:
    pki = make_pair(open_dir / "data")
    os.chown(pki.key_file, 0, 0)
    pki.key_file.chmod(0o600)
    config = write_config(open_dir, pki, {"echo": up_url})
    report, _ = await doctor(config)
    check = report.find("tls", "key_readable")
    assert check is not None and check.status is Status.FAIL
    assert "mode 0600" in check.message and "uid 65532" in check.message
    assert f"open {pki.key_file}: permission denied" in check.message
    assert check.fix is not None and f"chmod 644 {pki.key_file}" in check.fix and "chown 65532" in check.fix
    # the safe fix first; the official chmod 644 (world-readable key) as the documented alternative
    assert check.fix.index("chown 65532") < check.fix.index("chmod 644")
    assert "official" in check.fix[check.fix.index("chmod 644") :]
    assert failed_steps(report) == ["tls"]


async def test_key_0600_owned_by_the_proxy_user(open_dir: Path, up_url: str) -> None:
    pki = make_pair(open_dir / "data")
    os.chown(pki.key_file, 65532, 65532)
    pki.key_file.chmod(0o600)
    config = write_config(open_dir, pki, {"echo": up_url})
    report, _ = await doctor(config)
    assert statuses(report, "tls")["key_readable"] == "ok"
    report, _ = await doctor(config, proxy_uid=1000)  # another user now runs the proxy
    check = report.find("tls", "key_readable")
    assert check is not None and check.status is Status.FAIL and "uid 1000" in check.message


async def test_directory_that_blocks_the_proxy_user(tmp_path: Path, up_url: str) -> None:
    pki = make_pair(tmp_path / "data")
    tmp_path.chmod(0o700)
    config = write_config(tmp_path, pki, {"echo": up_url})
    report, _ = await doctor(config)
    check = report.find("tls", "key_readable")
    assert check is not None and check.status is Status.FAIL
    assert check.fix is not None and "chmod o+x" in check.fix


@pytest.mark.parametrize(
    ("uid", "gid", "mode", "proxy_uid", "expected"),
    [
        (0, 0, 0o600, 65532, Access.NO),
        (0, 0, 0o644, 65532, Access.YES),
        (65532, 0, 0o600, 65532, Access.YES),
        (65532, 0, 0o044, 65532, Access.NO),  # the owner's own bits decide for the owner
        (0, 65532, 0o640, 65532, Access.YES),  # the images run as 65532:65532
        (0, 4242, 0o640, 65532, Access.GROUP),  # supplementary groups are unknowable
        (0, 0, 0o600, 0, Access.YES),
    ],
)
def test_access_from_owner_and_mode_bits(
    uid: int, gid: int, mode: int, proxy_uid: int, expected: Access
) -> None:
    assert access(FileStat("/data/tls.key", uid, gid, mode), proxy_uid) is expected


def test_group_only_access_is_a_warning_that_says_why() -> None:
    check = judge_readable("key", [FileStat("/data/tls.key", 0, 4242, 0o640)], 65532)
    assert check.status is Status.WARN and "supplementary groups cannot be known" in check.message


def test_load_error_permission_denied_fix_puts_the_safe_option_first() -> None:
    from mcp_tunnel.doctor.configstep import config_fix
    from mcp_tunnel.errors import ConfigError

    exc = ConfigError("cannot read", detail="open /data/tls.key: permission denied")
    fix = config_fix(exc, 65532)
    assert fix.index("chown 65532 /data/tls.key") < fix.index("chmod 644 /data/tls.key")
    assert "docker compose restart mcp-proxy" in fix
