"""No `setup` output ever shows a credential (issue #19): a marker secret planted in every
credential input (environment, token file, output files) never appears on stdout or stderr,
on success and on each failure; credentials with whitespace or control characters are refused
without echo; output files are read without following symlinks and never echoed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.fakes.anthropic import FakeAnthropic
from tests.setup.support import ORG, Runner

from mcp_tunnel import cli

MARKER = "sk-ant-MARKER-7c1d9e3f5a2b"
PIECES = (MARKER, "MARKER-7c1d", "7c1d9e3f5a2b")  # neither whole nor in part


def clean(text: str) -> None:
    for piece in PIECES:
        assert piece not in text, text


def top_level(
    argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """`mcp-tunnel ...` in-process, through the top-level handler, with exactly `env`."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("API_TOKEN", MARKER[:10] + "\n" + MARKER[10:]),
        ("API_TOKEN", MARKER + " trailing-part"),
        ("API_TOKEN", MARKER[:10] + "\x07" + MARKER[10:]),
        ("ANTHROPIC_IDENTITY_TOKEN", MARKER[:10] + "\r\n" + MARKER[10:]),
    ],
)
def test_a_credential_with_a_line_break_is_refused_without_echo(
    variable: str,
    value: str,
    anthropic: FakeAnthropic,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {variable: value}
    if variable != "API_TOKEN":
        env |= {"ANTHROPIC_FEDERATION_RULE_ID": "fdrl_x", "ANTHROPIC_ORGANIZATION_ID": ORG}
    argv = ["setup", "init", f"--api-url={anthropic.url}", f"--output=dir:{tmp_path / 'data'}"]
    code, out, err = top_level(argv, env, capsys, monkeypatch)
    assert code == 2, err
    assert err.startswith(f"error: {variable} contains ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    clean(out + err)
    assert anthropic.tunnel_requests == [] and anthropic.exchange_requests == []  # nothing was sent


def test_an_identity_token_file_with_a_line_break_inside_is_refused(setup_cli: Runner) -> None:
    setup_cli.token_file.write_text(MARKER[:12] + "\n" + MARKER[12:] + "\n")
    r = setup_cli.init()
    assert r.code == 1
    assert "contains a line break" in r.err and "not shown" in r.err
    clean(r.text)


def test_success_and_api_failures_never_show_the_key(setup_cli: Runner, anthropic: FakeAnthropic) -> None:
    argv = (
        "init",
        f"--api-url={anthropic.url}",
        f"--output=dir:{setup_cli.out_dir}",
        "--key-type=ecdsa-p256",
    )
    refused = setup_cli(*argv, env={"API_TOKEN": MARKER})  # not a key the fake knows: 401
    assert refused.code == 1 and "HTTP 401" in refused.err
    clean(refused.text)
    anthropic.add_api_key(MARKER, ORG)
    ok = setup_cli(*argv, env={"API_TOKEN": MARKER})
    assert ok.code == 0, ok.err
    clean(ok.text)
    token = (setup_cli.out_dir / "tunnel-token").read_text()
    assert token and token not in ok.text  # the tunnel token it wrote is not printed either


def test_an_internal_error_is_one_line_and_debug_scrubs_the_traceback(
    anthropic: FakeAnthropic,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shape of the original report: http.client refusing a header that holds the key."""
    from mcp_tunnel.setup import transport

    def explode(self: object, method: str, url: str, *, headers: dict[str, str], **kw: object) -> object:
        raise ValueError(f"Invalid header value {headers['Authorization'].encode()!r}")

    argv = ["init", f"--api-url={anthropic.url}", f"--output=dir:{tmp_path / 'data'}"]
    for debug in ([], ["--debug"]):
        monkeypatch.setattr(transport.HTTPTransport, "request", explode)
        code, out, err = top_level(["setup", *argv, *debug], {"API_TOKEN": MARKER}, capsys, monkeypatch)
        assert code == 1
        assert err.splitlines()[-1].startswith("error: internal error (ValueError)")
        clean(out + err)
        if debug:
            assert "Traceback" in err and "Invalid header value" in err and "[REDACTED]" in err
        else:
            assert err.count("\n") == 1 and "--debug" in err


def test_debug_before_the_command_works_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mcp_tunnel.certs.cli as certs_cli

    def boom(argv: list[str]) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(certs_cli, "main", boom)
    code, _, err = top_level(["--debug", "certs", "check"], {}, capsys, monkeypatch)
    assert code == 1 and "Traceback" in err and err.splitlines()[-1] == "error: internal error (RuntimeError)"


# --- the dir: output ---------------------------------------------------------------------------


def test_output_files_are_not_read_through_symlinks(setup_cli: Runner, tmp_path: Path) -> None:
    assert setup_cli.init().code == 0
    secret = tmp_path / "elsewhere"
    secret.write_text(MARKER + "\n")
    domain = setup_cli.out_dir / "tunnel-domain"
    domain.unlink()
    domain.symlink_to(secret)
    r = setup_cli("renew-cert", f"--output=dir:{setup_cli.out_dir}", env={})
    assert r.code == 1 and "tunnel-domain is a symbolic link" in r.err
    clean(r.text)
    assert domain.is_symlink() and secret.read_text() == MARKER + "\n"  # nothing written through it


def test_output_files_must_be_regular_files(setup_cli: Runner) -> None:
    assert setup_cli.init().code == 0
    key = setup_cli.out_dir / "tls.key"
    key.unlink()
    os.mkfifo(key)  # a FIFO would block a plain read forever
    r = setup_cli("renew-cert", f"--output=dir:{setup_cli.out_dir}", env={})
    assert r.code == 1 and "tls.key is not a regular file" in r.err


def test_a_bad_tunnel_domain_file_is_not_echoed(setup_cli: Runner) -> None:
    assert setup_cli.init().code == 0
    (setup_cli.out_dir / "tunnel-domain").write_text(MARKER + " not a domain\n")
    r = setup_cli("renew-cert", f"--output=dir:{setup_cli.out_dir}", env={})
    assert r.code == 1 and "tunnel-domain does not hold a domain name" in r.err
    clean(r.text)


def test_a_group_or_world_writable_output_directory_is_warned_about(setup_cli: Runner) -> None:
    setup_cli.out_dir.mkdir(mode=0o700)
    setup_cli.out_dir.chmod(0o777)
    r = setup_cli.init()
    assert r.code == 0, r.err
    assert "the directory is writable by everyone (mode 0777)" in r.err and "chmod go-w" in r.err
    setup_cli.out_dir.chmod(0o700)
    quiet = setup_cli("renew-cert", f"--output=dir:{setup_cli.out_dir}", env={})
    assert "writable by" not in quiet.err
