"""`setup renew-cert`: local only, honours --renew-before and --cert-duration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from tests.fakes.anthropic import FakeAnthropic
from tests.setup.support import Runner

from mcp_tunnel.certs.check import all_passed, check_pair


def leaf(runner: Runner) -> x509.Certificate:
    return x509.load_pem_x509_certificate((runner.out_dir / "tls.crt").read_bytes())


def renew(runner: Runner, *extra: str):  # type: ignore[no-untyped-def]
    # no credentials and no API URL at all: renew-cert must not need them
    return runner("renew-cert", f"--output=dir:{runner.out_dir}", "--key-type=ecdsa-p256", *extra, env={})


def test_renew_cert_makes_no_api_call_and_honours_renew_before(
    setup_cli: Runner, anthropic: FakeAnthropic
) -> None:
    assert setup_cli.init().code == 0
    calls = len(anthropic.calls)
    first = leaf(setup_cli)
    d = setup_cli.out_dir
    key_before = (d / "tls.key").read_bytes()
    others = {
        n: (d / n).read_bytes() for n in ("ca.crt", "ca.key", "tunnel-token", "tunnel-id", "setup-state.json")
    }

    r = renew(setup_cli, "--renew-before=720h")  # 90 days left > 30: nothing to do
    assert r.code == 0, r.err
    assert "not renewed" in r.out and leaf(setup_cli).serial_number == first.serial_number

    r = renew(setup_cli)  # default 0: always renew
    assert r.code == 0, r.err
    second = leaf(setup_cli)
    assert second.serial_number != first.serial_number
    assert (d / "tls.key").read_bytes() != key_before  # re-keyed
    assert {n: (d / n).read_bytes() for n in others} == others
    domain = (d / "tunnel-domain").read_text()
    assert all_passed(
        check_pair(
            (d / "ca.crt").read_bytes(),
            (d / "tls.crt").read_bytes(),
            key_pem=(d / "tls.key").read_bytes(),
            domain=domain,
        )
    )

    r = renew(setup_cli, "--cert-duration=48h")
    left = leaf(setup_cli).not_valid_after_utc - datetime.now(UTC)
    assert timedelta(hours=47) < left <= timedelta(hours=48)
    r = renew(setup_cli, "--renew-before=72h")  # 48h left <= 72h: renew, back to 2160h
    assert r.code == 0 and "within --renew-before" in r.out
    assert leaf(setup_cli).not_valid_after_utc - datetime.now(UTC) > timedelta(days=89)
    assert len(anthropic.calls) == calls
    assert "PRIVATE KEY" not in r.text


def test_renew_replaces_a_certificate_for_the_wrong_ca(setup_cli: Runner) -> None:
    from mcp_tunnel.certs.generate import generate_ca, issue_server_cert, pem_cert, pem_key

    assert setup_cli.init().code == 0
    d = setup_cli.out_dir
    other_ca, other_key = generate_ca()
    cert, key = issue_server_cert(
        other_ca, other_key, (d / "tunnel-domain").read_text(), key_type="ecdsa-p256"
    )
    (d / "tls.crt").write_bytes(pem_cert(cert))
    (d / "tls.key").write_bytes(pem_key(key))
    r = renew(setup_cli, "--renew-before=720h")
    assert r.code == 0 and "signed directly by the CA" in r.out
    assert all_passed(check_pair((d / "ca.crt").read_bytes(), (d / "tls.crt").read_bytes()))


def test_init_keeps_a_valid_certificate_and_replaces_a_broken_one(setup_cli: Runner) -> None:
    assert setup_cli.init().code == 0
    serial = leaf(setup_cli).serial_number
    assert setup_cli.init().code == 0
    assert leaf(setup_cli).serial_number == serial
    (setup_cli.out_dir / "tls.key").unlink()
    r = setup_cli.init()
    assert r.code == 0 and leaf(setup_cli).serial_number != serial and "issued a server certificate" in r.out


def test_renew_on_an_empty_or_incomplete_output(setup_cli: Runner) -> None:
    r = renew(setup_cli)
    assert r.code == 1 and "is empty: run `setup init` first" in r.err
    setup_cli.out_dir.mkdir()
    (setup_cli.out_dir / "tunnel-id").write_text("tnl_1")
    r = renew(setup_cli)
    assert r.code == 1 and "holds no CA" in r.err
