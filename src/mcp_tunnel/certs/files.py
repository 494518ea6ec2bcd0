"""File I/O for certificates and keys: atomic writes with fixed modes, and reads whose errors
say what an operator must do.

The proxy polls ``tls.crt``/``tls.key``; a writer that truncates and rewrites in place would let
it read half a file. Everything here is written to a temporary file in the same directory,
fsynced, given its final mode and then renamed over the target, so a reader sees the old file or
the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from mcp_tunnel.errors import CertificateError

KEY_MODE = 0o600
CERT_MODE = 0o644

StrPath = str | os.PathLike[str]


def write_atomic(path: StrPath, data: bytes, mode: int) -> None:
    """Replace `path` with `data` in one rename, with `mode` set before the name appears.

    The temporary file is created 0600 by mkstemp and only widened (chmod) once written, so a
    private key is never readable by others, not even for a moment.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some filesystems (and platforms) cannot open a directory."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def permission_denied_message(
    path: str, *, owner_uid: int, owner_name: str | None, mode: int, uid: int
) -> str:
    """SPEC §3: the one line for an unreadable key: path, owner, mode, our uid and both fixes.

    It contains Go's ``open <path>: permission denied`` so the official troubleshooting matches.
    """
    owner = f"uid {owner_uid}" + (f" ({owner_name})" if owner_name else "")
    return (
        f"open {path}: permission denied (owner {owner}, mode {stat.S_IMODE(mode):04o}, "
        f"this process runs as uid {uid}); fix: chmod 644 {path}, or run as uid {owner_uid}"
    )


def _owner_name(uid: int) -> str | None:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return None


def read_bytes(path: StrPath, what: str) -> bytes:
    """Read a certificate or key file; failures become one-line `CertificateError`s.

    `what` names the role (``server key``, ``CA certificate``) so the message says which file of
    the pair is the problem.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            return fh.read()
    except PermissionError:
        try:
            st = os.stat(name)
        except OSError:
            raise CertificateError(f"open {name}: permission denied (reading the {what})") from None
        raise CertificateError(
            permission_denied_message(
                name, owner_uid=st.st_uid, owner_name=_owner_name(st.st_uid), mode=st.st_mode, uid=os.getuid()
            )
        ) from None
    except FileNotFoundError:
        raise CertificateError(f"open {name}: no such file or directory (the {what})") from None
    except IsADirectoryError:
        raise CertificateError(f"read {name}: is a directory, expected the {what} file") from None
    except OSError as exc:
        raise CertificateError(f"open {name}: {exc.strerror or exc} (the {what})") from None
