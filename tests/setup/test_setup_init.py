"""`setup init` end to end against the fake Anthropic API and OIDC issuer, on loopback."""

from __future__ import annotations

import json
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from tests.fakes.anthropic import Cert, FakeAnthropic
from tests.setup.support import ORG, Runner

from mcp_tunnel.certs.check import all_passed, check_pair
from mcp_tunnel.setup.errors import SetupError
from mcp_tunnel.setup.outputs import DirOutput

FILES = (
    "tunnel-id",
    "tunnel-domain",
    "tunnel-token",
    "tls.crt",
    "tls.key",
    "ca.crt",
    "ca.key",
    "setup-state.json",
)


def read(d: Path, name: str) -> str:
    return (d / name).read_text()


def state(d: Path) -> dict[str, str]:
    doc: dict[str, str] = json.loads(read(d, "setup-state.json"))
    return doc


def only_tunnel(fake: FakeAnthropic):  # type: ignore[no-untyped-def]
    assert len(fake.tunnels) == 1, fake.tunnels
    return next(iter(fake.tunnels.values()))


def handshake(d: Path, host: str) -> None:
    """A real TLS handshake: the proxy's side with tls.crt/tls.key, Anthropic's side trusting ca.crt."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "tls.crt", d / "tls.key")
    client = ssl.create_default_context(cafile=str(d / "ca.crt"))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=host)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not complete")


def test_first_run_writes_a_working_set(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    r = setup_cli.init("--token-version=1")
    assert r.code == 0, r.err
    d = setup_cli.out_dir
    t = only_tunnel(anthropic)
    assert t.display_name and t.display_name.startswith("mcp-tunnel-setup-")
    assert read(d, "tunnel-id") == t.id
    assert read(d, "tunnel-domain") == t.domain
    assert read(d, "tunnel-token") == t.token
    # the CA registered is the one written, and the state says so
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    assert [c.fingerprint for c in t.certs] == [ca.fingerprint(hashes.SHA256()).hex()]
    st = state(d)
    assert st["ca_certificate_id"] == t.certs[0].id and st["tunnel_id"] == t.id
    assert st["token_version"] == "1" and st["token_id"] == t.token_id
    assert "pending_display_name" not in st
    # modes: secrets 0600, the rest 0644
    for name in FILES:
        mode = stat.S_IMODE((d / name).stat().st_mode)
        assert mode == (0o600 if name in ("tunnel-token", "tls.key", "ca.key") else 0o644), name
    # a valid pair for the returned domain, by every requirement and by a real handshake
    findings = check_pair(
        (d / "ca.crt").read_bytes(),
        (d / "tls.crt").read_bytes(),
        key_pem=(d / "tls.key").read_bytes(),
        domain=t.domain,
    )
    assert all_passed(findings), [f.line() for f in findings]
    handshake(d, f"echo.{t.domain}")
    # no secret in any output
    for secret in (t.token, setup_cli.token_file.read_text(), *anthropic.access_tokens):
        assert secret not in r.text
    assert "PRIVATE KEY" not in r.text
    # the documented headers and exchange body
    ex = anthropic.exchange_requests[0]
    body = ex.json()
    assert body["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert body["federation_rule_id"] == "fdrl_test01" and body["organization_id"] == ORG
    assert "workspace_id" not in body and "service_account_id" not in body
    assert "oidc-federation-2026-04-01" in ex.headers["anthropic-beta"]
    for req in anthropic.tunnel_requests:
        assert req.headers["anthropic-version"] == "2023-06-01"
        assert req.headers["anthropic-beta"] == "mcp-tunnels-2026-06-22"
        assert req.headers["authorization"].startswith("Bearer sk-ant-oat01-")


def test_default_server_key_is_rsa_4096(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    r = setup_cli(
        "init", f"--api-url={anthropic.url}", "--output", f"dir:{setup_cli.out_dir}"
    )  # also: `--long value`
    assert r.code == 0, r.err
    key = load_pem_private_key((setup_cli.out_dir / "tls.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 4096


def test_rerun_changing_nothing_writes_nothing(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    assert setup_cli.init("--token-version=1").code == 0
    d = setup_cli.out_dir
    before = {n: ((d / n).read_bytes(), (d / n).stat().st_ino) for n in FILES}
    writes = list(anthropic.writes())
    r = setup_cli.init("--token-version=1")
    assert r.code == 0, r.err
    assert anthropic.writes() == writes  # no create, no registration, no rotation
    assert {n: ((d / n).read_bytes(), (d / n).stat().st_ino) for n in FILES} == before
    assert "token version '1' unchanged: token not rotated" in r.out
    assert "already up to date" in r.out
    assert len(anthropic.tunnels) == 1


def test_token_rotation_only_on_a_new_version(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    assert setup_cli.init("--token-version=1").code == 0
    t = only_tunnel(anthropic)
    old = t.token
    r = setup_cli.init("--token-version=2")
    assert r.code == 0, r.err
    assert t.token != old
    assert read(setup_cli.out_dir, "tunnel-token") == t.token
    assert state(setup_cli.out_dir)["token_version"] == "2"
    assert [p for _, p in anthropic.writes()].count(f"/v1/tunnels/{t.id}/rotate_token") == 1
    assert "'1' -> '2'" in r.out
    rotate = next(q for q in anthropic.tunnel_requests if q.path.endswith("/rotate_token"))
    assert "1 -> 2" in rotate.json()["reason"]
    # and the same version again: no rotation
    r = setup_cli.init("--token-version=2")
    assert [p for _, p in anthropic.writes()].count(f"/v1/tunnels/{t.id}/rotate_token") == 1
    assert "unchanged" in r.out
    # no version given: no rotation, and it says so
    r = setup_cli.init()
    assert r.code == 0 and "no --token-version given: token not rotated" in r.out
    assert len(t.certs) == 1 and len(anthropic.tunnels) == 1


def test_lost_create_response_finds_the_tunnel(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    anthropic.fault("POST", "/v1/tunnels", "drop_after")
    r = setup_cli.init()
    assert r.code == 0, r.err
    t = only_tunnel(anthropic)
    assert read(setup_cli.out_dir, "tunnel-id") == t.id
    assert anthropic.writes().count(("POST", "/v1/tunnels")) == 1
    assert "looking for a tunnel named" in r.err


def test_lost_create_then_crash_is_finished_by_the_next_run(
    setup_cli: Runner, anthropic: FakeAnthropic
) -> None:
    anthropic.fault("POST", "/v1/tunnels", "drop_after")
    anthropic.fault("GET", "/v1/tunnels", "500", times=100)  # the lookup cannot happen either
    r = setup_cli.init()
    assert r.code == 1
    pending = state(setup_cli.out_dir)["pending_display_name"]
    anthropic.faults.clear()
    r = setup_cli.init()
    assert r.code == 0, r.err
    t = only_tunnel(anthropic)
    assert t.display_name == pending and read(setup_cli.out_dir, "tunnel-id") == t.id
    assert "interrupted earlier run" in r.out


def test_create_that_never_reached_the_server_is_retried(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    anthropic.fault("POST", "/v1/tunnels", "drop_before")
    anthropic.fault("POST", "/v1/tunnels", "503")
    assert setup_cli.init().code == 0
    only_tunnel(anthropic)


def test_429_storm_is_ridden_out_honouring_retry_after(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    anthropic.fault("POST", "/v1/oauth/token", "429", times=2, retry_after="3")
    anthropic.fault("POST", "/v1/tunnels", "429", times=2, retry_after="7")
    anthropic.fault("GET", "/v1/tunnels/.*/certificates", "429", times=2)
    anthropic.fault("POST", "/v1/tunnels/.*/reveal_token", "429", times=3, retry_after="2")
    r = setup_cli.init()
    assert r.code == 0, r.err
    only_tunnel(anthropic)  # 429 = not processed: the create was repeated, yet one tunnel
    assert sum(1 for s in r.sleeps if s >= 7) == 2
    assert sum(1 for s in r.sleeps if 3 <= s < 7) == 2
    assert len(r.sleeps) == 9


def test_endless_429_fails_with_the_cause(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    anthropic.fault("GET", "/v1/tunnels/.*/certificates", "429", times=1000)
    r = setup_cli.init()
    assert r.code == 1
    assert "HTTP 429 rate_limit_error" in r.err and "request-id req_" in r.err and "rate limited" in r.err
    assert len(r.sleeps) == setup_cli.attempts - 1
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == r.err.splitlines()[-1]


def test_transient_failures_of_idempotent_calls_are_retried(
    setup_cli: Runner, anthropic: FakeAnthropic
) -> None:
    anthropic.fault("GET", "/v1/tunnels/.*/certificates", "drop_after", times=2)
    anthropic.fault("POST", "/v1/tunnels/.*/reveal_token", "500", times=2)
    assert setup_cli.init().code == 0


def test_lost_registration_response_does_not_register_twice(
    setup_cli: Runner, anthropic: FakeAnthropic
) -> None:
    anthropic.fault("POST", "/v1/tunnels/.*/certificates", "drop_after")
    r = setup_cli.init()
    assert r.code == 0, r.err
    t = only_tunnel(anthropic)
    assert len(t.certs) == 1
    assert state(setup_cli.out_dir)["ca_certificate_id"] == t.certs[0].id


def test_failure_after_registration_is_recovered_without_an_orphan(
    setup_cli: Runner, anthropic: FakeAnthropic
) -> None:
    anthropic.fault("POST", "/v1/tunnels/.*/reveal_token", "500", times=1000)
    assert setup_cli.init().code == 1
    t = only_tunnel(anthropic)
    assert len(t.certs) == 1
    ca_before = (setup_cli.out_dir / "ca.crt").read_bytes()  # saved before registering
    anthropic.faults.clear()
    r = setup_cli.init()
    assert r.code == 0, r.err
    assert len(t.certs) == 1 and len(anthropic.tunnels) == 1
    assert (setup_cli.out_dir / "ca.crt").read_bytes() == ca_before
    assert state(setup_cli.out_dir)["ca_certificate_id"] == t.certs[0].id


def test_final_write_failure_is_recovered_without_an_orphan(
    setup_cli: Runner, anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = DirOutput.save
    saves = []

    def flaky_save(self: DirOutput, files: dict[str, bytes]) -> None:
        saves.append(1)
        if "tunnel-token" in files:
            raise SetupError("disk full (injected)")
        real_save(self, files)

    monkeypatch.setattr(DirOutput, "save", flaky_save)
    r = setup_cli.init()
    assert r.code == 1 and "disk full" in r.err
    monkeypatch.setattr(DirOutput, "save", real_save)
    r = setup_cli.init()
    assert r.code == 0, r.err
    t = only_tunnel(anthropic)
    assert len(t.certs) == 1
    assert "the CA is registered on the tunnel as" in r.out


def test_certificate_cap_is_a_clear_refusal_then_recovers(
    setup_cli: Runner, anthropic: FakeAnthropic
) -> None:
    t = anthropic.add_tunnel(ORG)
    for i in range(2):
        t.certs.append(Cert(f"tcrt_old{i}", t.id, f"{i:064x}", None, f"2026-07-0{i + 1}T00:00:00Z"))
    setup_cli.env["TUNNEL_ID"] = t.id
    r = setup_cli.init()
    assert r.code == 1
    assert "already has 2 active CA certificates" in r.err and "tcrt_old0" in r.err and "archive" in r.err
    assert anthropic.writes() == []  # refused before asking the API to break its cap
    assert (setup_cli.out_dir / "ca.crt").exists()
    t.certs[0].archived_at = "2026-07-09T00:00:00Z"
    r = setup_cli.init()
    assert r.code == 0, r.err
    assert sum(1 for c in t.certs if c.archived_at is None) == 2 and len(t.certs) == 3


def test_attach_then_switch_tunnel_makes_a_new_ca(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    a = anthropic.add_tunnel(ORG)
    b = anthropic.add_tunnel(ORG)
    setup_cli.env["TUNNEL_ID"] = a.id
    assert setup_cli.init().code == 0
    ca_a = (setup_cli.out_dir / "ca.crt").read_bytes()
    setup_cli.env["TUNNEL_ID"] = b.id
    r = setup_cli.init("--token-version=5")
    assert r.code == 0, r.err
    assert "switching" in r.err
    assert read(setup_cli.out_dir, "tunnel-id") == b.id and read(setup_cli.out_dir, "tunnel-token") == b.token
    assert (setup_cli.out_dir / "ca.crt").read_bytes() != ca_a
    assert len(a.certs) == 1 and len(b.certs) == 1 and len(anthropic.tunnels) == 2
    assert not any(p.endswith("rotate_token") for _, p in anthropic.writes())
    # and the stored tunnel is reused without TUNNEL_ID
    del setup_cli.env["TUNNEL_ID"]
    assert setup_cli.init("--token-version=5").code == 0
    assert read(setup_cli.out_dir, "tunnel-id") == b.id and len(anthropic.tunnels) == 2


def test_archived_tunnel_is_refused(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    assert setup_cli.init().code == 0
    only_tunnel(anthropic).archived_at = "2026-08-01T00:00:00Z"
    r = setup_cli.init()
    assert r.code == 1 and "archived" in r.err and "cannot be used again" in r.err
    assert len(anthropic.tunnels) == 1


def test_revoked_ca_is_not_re_registered(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    assert setup_cli.init().code == 0
    t = only_tunnel(anthropic)
    t.certs[0].archived_at = "2026-08-01T00:00:00Z"
    r = setup_cli.init()
    assert r.code == 1 and "revoked" in r.err
    assert len(t.certs) == 1


def test_token_rotated_elsewhere_is_picked_up(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    assert setup_cli.init("--token-version=1").code == 0
    t = only_tunnel(anthropic)
    anthropic._new_token(t)
    r = setup_cli.init("--token-version=1")
    assert r.code == 0
    assert read(setup_cli.out_dir, "tunnel-token") == t.token
    assert "rotated elsewhere" in r.err


def test_api_token_is_used_as_the_bearer_without_exchange(
    setup_cli: Runner, anthropic: FakeAnthropic
) -> None:
    key = "sk-ant-api-tunnels-" + "k" * 20
    anthropic.add_api_key(key, ORG)
    r = setup_cli(
        "init",
        f"--api-url={anthropic.url}",
        f"--output=dir:{setup_cli.out_dir}",
        "--key-type=ecdsa-p256",
        env={"API_TOKEN": key},
    )
    assert r.code == 0, r.err
    assert anthropic.exchange_requests == []
    assert all(q.headers["authorization"] == f"Bearer {key}" for q in anthropic.tunnel_requests)
    assert key not in r.text


def test_bring_your_own_ca_is_registered(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    from mcp_tunnel.certs.generate import generate_ca, pem_cert, pem_key

    ca, key = generate_ca(common_name="operator-ca")
    setup_cli.out_dir.mkdir()
    (setup_cli.out_dir / "ca.crt").write_bytes(pem_cert(ca))
    (setup_cli.out_dir / "ca.key").write_bytes(pem_key(key))
    assert setup_cli.init().code == 0
    t = only_tunnel(anthropic)
    assert t.certs[0].fingerprint == ca.fingerprint(hashes.SHA256()).hex()


def test_written_credentials_pass_proxy_check(
    setup_cli: Runner, anthropic: FakeAnthropic, capsys: pytest.CaptureFixture[str]
) -> None:
    from mcp_tunnel.cli import main

    assert setup_cli.init().code == 0
    d = setup_cli.out_dir
    domain = read(d, "tunnel-domain")
    config = setup_cli.tmp_path / "config.yaml"
    config.write_text(
        'listen_addr: "127.0.0.1:0"\n'
        f"tls:\n  cert_file: {d / 'tls.crt'}\n  key_file: {d / 'tls.key'}\n"
        "routes:\n  echo: http://10.0.0.5:8080\n"
    )
    assert main(["proxy", "-config", str(config), "-check", "-tunnel-domain", domain]) == 0
    assert f"echo.{domain}" in capsys.readouterr().out
    (d / "tls.key").write_bytes((d / "ca.key").read_bytes())  # and it does notice a wrong pair
    assert main(["proxy", "-config", str(config), "-check", "-tunnel-domain", domain]) == 2
