"""`mcp-tunnel certs init|issue|check` through the real dispatcher (exit codes, one-line errors)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from certs_support import DOMAIN, make_ca, make_server, openssl_recipe, write_pair
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mcp_tunnel.certs.generate import load_cert, load_key
from mcp_tunnel.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["certs", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `certs init` (RSA 4096 is slow to make) shared by the read-only tests."""
    out = tmp_path_factory.mktemp("init") / "data"
    assert main(["certs", "init", "--domain", DOMAIN, "--out", str(out)]) == 0
    return out


def test_init_writes_four_files_with_modes(initialized: Path) -> None:
    assert sorted(p.name for p in initialized.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert mode(initialized / "ca.key") == 0o600 and mode(initialized / "tls.key") == 0o600
    assert mode(initialized / "ca.crt") == 0o644 and mode(initialized / "tls.crt") == 0o644
    key = load_key(initialized / "tls.key")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 4096
    assert isinstance(load_key(initialized / "ca.key"), ec.EllipticCurvePrivateKey)


def test_init_output_passes_check(initialized: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "check",
        "--ca", str(initialized / "ca.crt"),
        "--cert", str(initialized / "tls.crt"),
        "--key", str(initialized / "tls.key"),
        "--domain", DOMAIN,
    )  # fmt: skip
    assert code == 0, out
    lines = out.splitlines()
    assert len([ln for ln in lines if ln.startswith("PASS ")]) == 17
    assert not [ln for ln in lines if ln.startswith("FAIL ")]
    assert lines[-1].startswith("OK: all 17")


def test_init_refuses_to_overwrite_a_ca(initialized: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (initialized / "ca.crt").read_bytes()
    code, _out, err = run(capsys, "init", "--domain", DOMAIN, "--out", str(initialized))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "already exists" in err and "--force" in err and "certs issue" in err
    assert (initialized / "ca.crt").read_bytes() == before


def test_init_force_replaces_the_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d"
    assert run(capsys, "init", "--domain", DOMAIN, "--out", str(out), "--key-type", "ecdsa-p256")[0] == 0
    first = load_cert(out / "ca.crt")
    assert isinstance(load_key(out / "tls.key"), ec.EllipticCurvePrivateKey)
    assert (
        run(capsys, "init", "--domain", DOMAIN, "--out", str(out), "--key-type", "ecdsa-p256", "--force")[0]
        == 0
    )
    assert load_cert(out / "ca.crt") != first


def test_issue_reuse_key_renews_with_the_same_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    run(capsys, "init", "--domain", DOMAIN, "--out", str(d), "--key-type", "ecdsa-p256")
    old_cert, key_bytes = load_cert(d / "tls.crt"), (d / "tls.key").read_bytes()
    key_inode = os.stat(d / "tls.key").st_ino
    code, out, _ = run(
        capsys, "issue", "--ca-dir", str(d), "--domain", DOMAIN, "--duration", "720h", "--reuse-key"
    )
    assert code == 0, out
    new_cert = load_cert(d / "tls.crt")
    assert new_cert.serial_number != old_cert.serial_number
    assert new_cert.public_key() == old_cert.public_key()
    assert (d / "tls.key").read_bytes() == key_bytes and os.stat(d / "tls.key").st_ino == key_inode
    days = (new_cert.not_valid_after_utc - new_cert.not_valid_before_utc).days
    assert days == 30  # 720h, plus the few minutes of backdating
    assert (
        run(
            capsys,
            "check",
            "--ca",
            str(d / "ca.crt"),
            "--cert",
            str(d / "tls.crt"),
            "--key",
            str(d / "tls.key"),
        )[0]
        == 0
    )


def test_issue_new_key_into_another_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d, out = tmp_path / "ca", tmp_path / "srv"
    run(capsys, "init", "--domain", DOMAIN, "--out", str(d), "--key-type", "ecdsa-p256")
    code, _, err = run(
        capsys, "issue", "--ca-dir", str(d), "--domain", DOMAIN, "--out", str(out), "--key-type", "ecdsa-p256"
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["tls.crt", "tls.key"]
    assert mode(out / "tls.key") == 0o600
    load_cert(out / "tls.crt").verify_directly_issued_by(load_cert(d / "ca.crt"))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["issue", "--domain", DOMAIN, "--duration", "90d"], 'unknown unit "d"'),
        (["issue", "--domain", DOMAIN, "--duration=-1h"], "must be positive"),
        (["issue", "--domain", DOMAIN, "--duration", "0s"], "must be positive"),
        (["issue", "--domain", "*.x.example"], "wildcard"),
        (["init", "--domain", DOMAIN, "--out", "x", "--key-type", "dsa"], "invalid choice"),
        (["check", "--ca", "ca.crt"], "--cert"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_in_one_line(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if argv[0] == "issue":
        argv = [*argv, "--ca-dir", str(tmp_path)]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and err.count("\n") == 1


def test_issue_without_a_ca_is_a_runtime_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "issue", "--ca-dir", str(tmp_path), "--domain", DOMAIN)
    assert code == 1 and "ca.crt: no such file" in err


def test_reuse_key_without_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = make_ca()
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "ca.key").write_bytes(ca.key_pem)
    code, _, err = run(capsys, "issue", "--ca-dir", str(tmp_path), "--domain", DOMAIN, "--reuse-key")
    assert code == 1 and "--reuse-key" in err and "tls.key does not exist" in err


def test_check_names_the_failure_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = make_ca()
    ca_file, cert_file, key_file = write_pair(tmp_path, ca, make_server(ca, san=["*.other.example"]))
    code, out, _ = run(
        capsys,
        "check",
        "--ca",
        str(ca_file),
        "--cert",
        str(cert_file),
        "--key",
        str(key_file),
        "--domain",
        DOMAIN,
    )
    assert code == 1
    fails = [ln for ln in out.splitlines() if ln.startswith("FAIL ")]
    assert fails == [f"FAIL server SAN covers *.{DOMAIN}: *.other.example"]
    assert out.splitlines()[-1] == "FAILED: 1 requirement(s) not met: server.san"


def test_check_accepts_the_official_openssl_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = openssl_recipe(tmp_path / "data")
    code, out, _ = run(
        capsys,
        "check",
        "--ca", str(data / "ca.crt"),
        "--cert", str(data / "tls.crt"),
        "--key", str(data / "tls.key"),
        "--domain", DOMAIN,
    )  # fmt: skip
    assert code == 0, out
    assert "PASS CA key type and size: RSA 2048" in out


def test_issue_signs_with_an_openssl_made_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = openssl_recipe(tmp_path / "data")
    code, _, err = run(capsys, "issue", "--ca-dir", str(data), "--domain", DOMAIN, "--reuse-key")
    assert code == 0, err
    cert = load_cert(data / "tls.crt")
    assert cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == (
        load_cert(data / "ca.crt").extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
