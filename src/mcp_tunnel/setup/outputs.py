"""Where `init` and `renew-cert` keep their results: `dir:PATH` or `k8s-secret:NAME`.

Both backends expose the same two operations on the same key names (state.ALL_KEYS): `load`
everything, and `save` the complete desired content. A directory is written file by file, each
atomically (the proxy polls tls.crt/tls.key and must never read half a file); a Secret is
replaced in one call guarded by resourceVersion, so a concurrent writer is detected, not
overwritten.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mcp_tunnel.certs.files import CERT_MODE, KEY_MODE, write_atomic
from mcp_tunnel.setup.errors import SetupError
from mcp_tunnel.setup.k8s import InClusterClient
from mcp_tunnel.setup.state import ALL_KEYS, SECRET_KEYS, STATE

DIR_MODE = 0o700
# Written last: it vouches for the rest (certificate id, token version).
WRITE_ORDER = (*(k for k in ALL_KEYS if k != STATE), STATE)
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass(frozen=True)
class OutputSpec:
    kind: str  # "dir" or "k8s-secret"
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_output_spec(text: str) -> OutputSpec:
    """`dir:PATH` or `k8s-secret:NAME`; raises ValueError with the reason."""
    kind, sep, target = text.partition(":")
    if not sep or kind not in ("dir", "k8s-secret"):
        raise ValueError(f"--output {text!r}: expected dir:PATH or k8s-secret:NAME")
    if not target:
        raise ValueError(f"--output {text!r}: the {'path' if kind == 'dir' else 'Secret name'} is empty")
    if kind == "k8s-secret" and (len(target) > 253 or not _SECRET_NAME.match(target)):
        raise ValueError(
            f"--output {text!r}: {target!r} is not a valid Secret name (lowercase letters, digits, "
            "'-' and '.')"
        )
    return OutputSpec(kind, target)


class Output(Protocol):
    description: str

    def load(self) -> dict[str, bytes]: ...

    def save(self, files: Mapping[str, bytes]) -> None: ...


def mode_for(key: str) -> int:
    return KEY_MODE if key in SECRET_KEYS else CERT_MODE


MAX_FILE_BYTES = 1 << 20  # the largest output file (a PEM chain) is a few KiB
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO can't stall


class DirOutput:
    """A directory of regular files. Reads never follow a symlink (O_NOFOLLOW) and accept only
    regular files, so a planted link cannot make setup read (or print) some other file; no
    message ever shows a file's content. Writes replace the name (rename), never a link target."""

    def __init__(self, path: str, warn: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.description = f"dir:{path}"
        self._warn = warn

    def load(self) -> dict[str, bytes]:
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SetupError(f"output {self.description}: cannot inspect it: {exc.strerror}") from None
        if not stat.S_ISDIR(mode):
            raise SetupError(f"output {self.description}: {self.path} exists and is not a directory")
        self._check_directory(mode)
        files: dict[str, bytes] = {}
        for key in ALL_KEYS:
            data = self._read(key)
            if data is not None:
                files[key] = data
        return files

    def _check_directory(self, mode: int) -> None:
        """Warn when others could plant or swap the files setup reads and writes."""
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and self._warn is not None:
            who = "everyone" if mode & stat.S_IWOTH else "its group"
            self._warn(
                f"output {self.description}: the directory is writable by {who} (mode "
                f"{stat.S_IMODE(mode):04o}): anyone who can write there can replace the key or the "
                f"token; chmod go-w {self.path}"
            )

    def _read(self, key: str) -> bytes | None:
        p = self.path / key
        where = f"output {self.description}: {key}"
        try:
            fd = os.open(p, _READ_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SetupError(
                    f"{where} is a symbolic link: setup reads and writes only regular files there "
                    "(remove the link)"
                ) from None
            raise SetupError(f"{where}: cannot open it: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SetupError(f"{where} is not a regular file: setup reads and writes only regular files")
            if st.st_size > MAX_FILE_BYTES:
                raise SetupError(f"{where} is {st.st_size} bytes, more than any output file can be")
            chunks: list[bytes] = []
            size = 0
            while chunk := os.read(fd, 65536):
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    raise SetupError(f"{where} is more than {MAX_FILE_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise SetupError(f"{where}: cannot read it: {exc.strerror or exc}") from None
        finally:
            os.close(fd)

    def save(self, files: Mapping[str, bytes]) -> None:
        try:
            self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            for key in WRITE_ORDER:
                p = self.path / key
                if key in files:
                    write_atomic(p, files[key], mode_for(key))
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)  # stale: belonged to another tunnel
        except OSError as exc:
            raise SetupError(
                f"output {self.description}: cannot write {exc.filename or self.path}: {exc.strerror or exc} "
                f"(the directory must be writable by uid {os.getuid()})"
            ) from exc


class K8sSecretOutput:
    """One Opaque Secret; keys of ours are replaced, anything else in it is kept."""

    def __init__(self, name: str, client: InClusterClient) -> None:
        self.name = name
        self.client = client
        self.description = f"k8s-secret:{name} (namespace {client.namespace})"
        self._existing: dict[str, Any] | None = None

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.client.namespace}/secrets/{self.name}"

    def load(self) -> dict[str, bytes]:
        status, doc = self.client.request("GET", self._path)
        if status == 404:
            self._existing = None
            return {}
        if status != 200 or not isinstance(doc, dict):
            raise self.client.error("GET", self._path, status, doc, self.name)
        self._existing = doc
        data = doc.get("data") or {}
        files: dict[str, bytes] = {}
        for key in ALL_KEYS:
            if key in data:
                try:
                    files[key] = base64.b64decode(data[key], validate=True)
                except ValueError as exc:
                    raise SetupError(f"Secret {self.name}: key {key} is not valid base64") from exc
        return files

    def save(self, files: Mapping[str, bytes]) -> None:
        data = {k: base64.b64encode(v).decode() for k, v in files.items() if k in ALL_KEYS}
        if self._existing is None:
            body: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": self.name,
                    "namespace": self.client.namespace,
                    "labels": {"app.kubernetes.io/managed-by": "mcp-tunnel-setup"},
                },
                "data": data,
            }
            path = f"/api/v1/namespaces/{self.client.namespace}/secrets"
            status, doc = self.client.request("POST", path, body)
            if status != 201 and status != 200:
                raise self.client.error("POST", path, status, doc, self.name)
        else:
            body = dict(self._existing)
            metadata = dict(body.get("metadata") or {})
            metadata.pop("managedFields", None)
            body["metadata"] = metadata
            kept = {k: v for k, v in (body.get("data") or {}).items() if k not in ALL_KEYS}
            body["data"] = {**kept, **data}
            status, doc = self.client.request("PUT", self._path, body)
            if status != 200:
                raise self.client.error("PUT", self._path, status, doc, self.name)
        if isinstance(doc, dict):
            self._existing = doc


def open_output(
    spec: OutputSpec,
    environ: Mapping[str, str],
    client: InClusterClient | None = None,
    warn: Callable[[str], None] | None = None,
) -> Output:
    if spec.kind == "dir":
        return DirOutput(spec.target, warn)
    return K8sSecretOutput(spec.target, client or InClusterClient.from_environment(environ))
