"""CertificateWatcher: hot reload as SPEC §6 says. poll() is explicit, so tests call it instead
of sleeping: every state change below is followed by exactly the poll that should see it."""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from certs_support import Client, EchoServer, Pair, call_as, ec_key, make_ca, make_server

from mcp_tunnel.certs.files import CERT_MODE, KEY_MODE, write_atomic
from mcp_tunnel.certs.reload import CertificateWatcher, tls_alert_reason
from mcp_tunnel.errors import CertificateError
from mcp_tunnel.tls_session import make_server_context

StartServer = Callable[[Callable[[], ssl.SSLContext]], EchoServer]


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, /, **fields: Any) -> None:
        self.events.append((event, fields))

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


@pytest.fixture(scope="module")
def ca() -> Pair:
    return make_ca()


def install(directory: Path, server: Pair, *, cert: bool = True, key: bool = True) -> None:
    """Replace the files the way `certs issue` does: write a temp file, rename over."""
    if key:
        write_atomic(directory / "tls.key", server.key_pem, KEY_MODE)
    if cert:
        write_atomic(directory / "tls.crt", server.cert_pem, CERT_MODE)


def watcher_for(directory: Path, log: Log) -> CertificateWatcher:
    return CertificateWatcher(
        directory / "tls.crt", directory / "tls.key", build=make_server_context, log=log
    )


@pytest.fixture
def ca_file(tmp_path: Path, ca: Pair) -> Path:
    path = tmp_path / "ca.crt"
    path.write_bytes(ca.cert_pem)
    return path


def test_first_load_and_properties(tmp_path: Path, ca: Pair) -> None:
    first = make_server(ca)
    install(tmp_path, first)
    log = Log()
    w = watcher_for(tmp_path, log)
    ctx = w.load()
    assert w.context is ctx and isinstance(ctx, ssl.SSLContext)
    assert w.serial == first.cert.serial_number
    assert w.not_after == first.cert.not_valid_after_utc
    assert log.names() == ["certificate loaded"]
    assert log.events[0][1]["serial"] == format(first.cert.serial_number, "x")
    assert w.poll() is False  # nothing changed
    assert log.names() == ["certificate loaded"]


def test_replace_by_rename_keeps_open_connections_and_serves_the_new_pair(
    tmp_path: Path, ca: Pair, ca_file: Path, echo_server: StartServer
) -> None:
    old, new = make_server(ca), make_server(ca)
    install(tmp_path, old)
    log = Log()
    w = watcher_for(tmp_path, log)
    w.load()
    server = echo_server(lambda: w.context)
    with Client(server.port, ca_file) as kept:
        assert kept.echo("one") == "echo one" and kept.serial == old.cert.serial_number
        install(tmp_path, new)
        assert w.poll() is True
        assert log.names()[-1] == "certificate reloaded"
        assert log.events[-1][1]["serial"] == format(new.cert.serial_number, "x")
        assert kept.echo("two") == "echo two"  # the open connection keeps working
        assert kept.serial == old.cert.serial_number
        with Client(server.port, ca_file) as fresh:
            assert fresh.serial == new.cert.serial_number
            assert fresh.echo("three") == "echo three"


def _k8s_mount(mount: Path, version: str, server: Pair) -> None:
    """Do what the kubelet's atomic writer does: a new ..<timestamp> dir, then swap ..data."""
    data_dir = mount / f"..{version}"
    data_dir.mkdir()
    (data_dir / "tls.crt").write_bytes(server.cert_pem)
    (data_dir / "tls.key").write_bytes(server.key_pem)
    old_target = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    os.symlink(data_dir.name, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (mount / name).is_symlink():
            os.symlink(f"..data/{name}", mount / name)
    if old_target:
        shutil.rmtree(mount / old_target)


def test_kubernetes_secret_symlink_swap(
    tmp_path: Path, ca: Pair, ca_file: Path, echo_server: StartServer
) -> None:
    mount = tmp_path / "mount"
    mount.mkdir()
    old, new = make_server(ca), make_server(ca)
    _k8s_mount(mount, "2026_01_01", old)
    log = Log()
    w = watcher_for(mount, log)
    w.load()
    server = echo_server(lambda: w.context)
    with Client(server.port, ca_file) as kept:
        assert kept.serial == old.cert.serial_number
        _k8s_mount(mount, "2026_03_01", new)
        assert (mount / "tls.crt").is_symlink()  # the watched paths themselves never changed
        assert w.poll() is True
        assert kept.echo("still here") == "echo still here"
        with Client(server.port, ca_file) as fresh:
            assert fresh.serial == new.cert.serial_number
    assert log.names() == ["certificate loaded", "certificate reloaded"]


def test_mismatched_pair_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, ca: Pair, ca_file: Path, echo_server: StartServer
) -> None:
    old = make_server(ca)
    install(tmp_path, old)
    log = Log()
    w = watcher_for(tmp_path, log)
    w.load()
    server = echo_server(lambda: w.context)
    stranger = make_server(ca)  # a certificate whose key we never install
    install(tmp_path, stranger, key=False)
    assert w.poll() is False
    event, fields = log.events[-1]
    assert event == "certificate reload failed"
    assert "does not match" in fields["reason"] and str(tmp_path / "tls.key") in fields["reason"]
    assert fields["serving_serial"] == format(old.cert.serial_number, "x")
    assert w.serial == old.cert.serial_number
    with Client(server.port, ca_file) as client:
        assert client.serial == old.cert.serial_number
    # The same bad state is not retried (nor logged) on every poll.
    assert w.poll() is False
    assert log.names().count("certificate reload failed") == 1


@pytest.mark.parametrize("first", ["cert", "key"])
def test_two_step_renewal_ends_loaded(tmp_path: Path, ca: Pair, ca_file: Path, first: str) -> None:
    old, new = make_server(ca), make_server(ca)
    install(tmp_path, old)
    log = Log()
    w = watcher_for(tmp_path, log)
    w.load()
    install(tmp_path, new, cert=first == "cert", key=first == "key")
    assert w.poll() is False  # intermediate (mismatched) state refused
    assert w.serial == old.cert.serial_number
    install(tmp_path, new, cert=first != "cert", key=first != "key")
    assert w.poll() is True
    assert w.serial == new.cert.serial_number
    assert log.names() == ["certificate loaded", "certificate reload failed", "certificate reloaded"]


def test_garbage_and_missing_files_are_refused_with_a_reason(tmp_path: Path, ca: Pair) -> None:
    old = make_server(ca)
    install(tmp_path, old)
    log = Log()
    w = watcher_for(tmp_path, log)
    w.load()
    write_atomic(
        tmp_path / "tls.crt", b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n", 0o644
    )
    assert w.poll() is False
    assert "not a valid PEM certificate" in log.events[-1][1]["reason"]
    os.unlink(tmp_path / "tls.crt")
    assert w.poll() is False
    assert "no such file" in log.events[-1][1]["reason"]
    assert w.serial == old.cert.serial_number
    install(tmp_path, old)  # put the same pair back: a change, but nothing new to load
    assert w.poll() is False
    assert w.last_error is None


def test_rewrite_with_identical_content_is_not_a_reload(tmp_path: Path, ca: Pair) -> None:
    pair = make_server(ca)
    install(tmp_path, pair)
    log = Log()
    w = watcher_for(tmp_path, log)
    w.load()
    install(tmp_path, pair)  # new inodes, same bytes
    assert w.poll() is False
    assert log.names() == ["certificate loaded"]


def test_files_changing_during_the_load_are_retried_on_the_next_poll(tmp_path: Path, ca: Pair) -> None:
    old, mid, final = make_server(ca), make_server(ca), make_server(ca)
    install(tmp_path, old)
    log = Log()
    calls = {"n": 0}

    def racing_build(cert_file: str, key_file: str) -> ssl.SSLContext:
        # A writer lands `final` between our read and OpenSSL's: what we checked is not what
        # the context holds, so it must not be installed.
        calls["n"] += 1
        ctx = make_server_context(cert_file, key_file)
        if calls["n"] == 2:
            install(tmp_path, final)
        return ctx

    w = CertificateWatcher(tmp_path / "tls.crt", tmp_path / "tls.key", build=racing_build, log=log)
    w.load()
    install(tmp_path, mid)
    assert w.poll() is False  # unstable: nothing installed, nothing logged as a failure
    assert w.serial == old.cert.serial_number
    assert log.names() == ["certificate loaded"]
    assert w.poll() is True
    assert w.serial == final.cert.serial_number


def test_first_load_failures_are_one_line(tmp_path: Path, ca: Pair) -> None:
    w = watcher_for(tmp_path, Log())
    with pytest.raises(CertificateError, match="no such file") as missing:
        w.load()
    install(tmp_path, make_server(ca))
    write_atomic(tmp_path / "tls.key", make_server(ca).key_pem, 0o600)
    with pytest.raises(CertificateError, match="does not match") as mismatch:
        w.load()
    for e in (missing, mismatch):
        assert "\n" not in str(e.value)
    with pytest.raises(RuntimeError):
        _ = w.context


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another uid can traverse (pytest's tmp_path is under a 0700 directory)."""
    directory = Path(tempfile.mkdtemp(prefix="mcp-tunnel-reload-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load as another uid")
def test_unreadable_key_names_path_owner_mode_uid_and_fixes(shared_dir: Path, ca: Pair) -> None:
    install(shared_dir, make_server(ca))  # tls.key 0600 root

    def load() -> str:
        try:
            watcher_for(shared_dir, Log()).load()
        except CertificateError as exc:
            return str(exc)
        return "LOADED"

    line = call_as(65532, load)
    key = shared_dir / "tls.key"
    assert f"open {key}: permission denied" in line
    assert "owner uid 0" in line and "mode 0600" in line and "runs as uid 65532" in line
    assert f"chmod 644 {key}" in line and "run as uid 0" in line


def test_logs_never_carry_key_material(tmp_path: Path, ca: Pair) -> None:
    pair = make_server(ca, key=ec_key())
    install(tmp_path, pair)
    log = Log()
    w = watcher_for(tmp_path, log)
    w.load()
    install(tmp_path, make_server(ca), key=False)
    w.poll()
    text = repr(log.events)
    assert "PRIVATE KEY" not in text and pair.key_pem.decode().splitlines()[1] not in text


def _ssl_error(reason: str, cls: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    exc = cls(1, f"[SSL: {reason}] something (_ssl.c:1000)")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("TLSV1_ALERT_UNKNOWN_CA", "unknown ca (unknown certificate authority)"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "bad certificate"),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "certificate expired"),
        ("SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "unsupported certificate"),
        ("SSLV3_ALERT_CERTIFICATE_UNKNOWN", "certificate unknown"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", "handshake failure"),
        ("TLSV1_ALERT_PROTOCOL_VERSION", "protocol version"),
        ("UNSUPPORTED_PROTOCOL", "protocol version (unsupported protocol)"),
        ("NO_SHARED_CIPHER", "no shared cipher"),
        ("HTTP_REQUEST", "http request (plain HTTP sent to the TLS port)"),
        ("WRONG_VERSION_NUMBER", "wrong version number"),
        ("SSLV3_ALERT_ILLEGAL_PARAMETER", "illegal parameter"),
        ("SOME_FUTURE_REASON", "some future reason"),
    ],
)
def test_tls_alert_reason_words(reason: str, words: str) -> None:
    assert tls_alert_reason(_ssl_error(reason)) == words


def test_tls_alert_reason_without_a_reason() -> None:
    assert tls_alert_reason(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")).startswith(
        "unexpected eof"
    )
