"""Atomic writes with fixed modes, and the one-line permission error of SPEC §3."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from certs_support import call_as

from mcp_tunnel.certs import files
from mcp_tunnel.certs.files import permission_denied_message, read_bytes, write_atomic
from mcp_tunnel.errors import CertificateError

NOBODY = 65534


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_modes_key_0600_cert_0644(tmp_path: Path) -> None:
    os.umask(0o022)
    write_atomic(tmp_path / "tls.key", b"k", 0o600)
    write_atomic(tmp_path / "tls.crt", b"c", 0o644)
    assert mode(tmp_path / "tls.key") == 0o600
    assert mode(tmp_path / "tls.crt") == 0o644


def test_replace_is_a_rename_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "tls.crt"
    target.write_bytes(b"old")
    old_inode = os.stat(target).st_ino
    with open(target, "rb") as reader:  # a reader that opened the old file keeps the old content
        write_atomic(target, b"new", 0o644)
        assert target.read_bytes() == b"new"
        assert os.stat(target).st_ino != old_inode
        assert reader.read() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tls.crt"]


def test_failed_write_keeps_the_old_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "tls.key"
    target.write_bytes(b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tls.key"]


def test_permission_message_has_path_owner_mode_uid_and_both_fixes() -> None:
    msg = permission_denied_message("/data/tls.key", owner_uid=0, owner_name="root", mode=0o100600, uid=65532)
    assert "open /data/tls.key: permission denied" in msg
    assert "uid 0 (root)" in msg and "mode 0600" in msg and "uid 65532" in msg
    assert "chmod 644 /data/tls.key" in msg and "run as uid 0" in msg
    assert "\n" not in msg


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read as another uid")
def test_unreadable_key_gives_the_spec_error_for_a_real_other_uid() -> None:
    # pytest's tmp_path is under a 0700 directory, so use one every uid can traverse.
    directory = Path(tempfile.mkdtemp(prefix="mcp-tunnel-perm-"))
    try:
        directory.chmod(0o755)
        key = directory / "tls.key"
        write_atomic(key, b"secret", 0o600)
        line = _read_as(NOBODY, key)
    finally:
        shutil.rmtree(directory)
    assert f"open {key}: permission denied" in line
    assert "owner uid 0" in line and "mode 0600" in line and f"runs as uid {NOBODY}" in line
    assert f"chmod 644 {key}" in line and "run as uid 0" in line
    assert "secret" not in line


def _read_as(uid: int, path: Path) -> str:
    def read() -> str:
        try:
            read_bytes(path, "server key")
        except CertificateError as exc:
            return str(exc)
        return "READ SUCCEEDED"

    return call_as(uid, read)


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(
        CertificateError, match=r"open .*nope\.key: no such file or directory \(the server key\)"
    ):
        read_bytes(tmp_path / "nope.key", "server key")
