"""Test support for tests/certs: certificates that break one requirement at a time, and a
loopback TLS server.

The builders use `cryptography` directly rather than `mcp_tunnel.certs.generate`, so the policy
is tested against certificates the product did not make.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DOMAIN = "abcd1234.tunnel.anthropic.com"
NOW = datetime.now(UTC)
DEFAULT = object()

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, cert_sign: bool, digital_signature: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclasses.dataclass
class Pair:
    cert: x509.Certificate
    key: Key

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return pem_of(self.key)


def pem_of(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(
    *,
    key: Key | None = None,
    basic_constraints: tuple[bool, bool] | None = (True, True),  # (ca, critical)
    ski: bool = True,
    key_usage: x509.KeyUsage | object | None = DEFAULT,
    hash_: hashes.HashAlgorithm | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    cn: str = "test-ca",
    extra: list[x509.ExtensionType] | None = None,
) -> Pair:
    key = key or ec_key()
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=3650))
    )
    if basic_constraints is not None:
        b = b.add_extension(
            x509.BasicConstraints(ca=basic_constraints[0], path_length=None), basic_constraints[1]
        )
    if ski:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    ku = _key_usage(cert_sign=True) if key_usage is DEFAULT else key_usage
    if isinstance(ku, x509.KeyUsage):
        b = b.add_extension(ku, critical=True)
    for ext in extra or []:
        b = b.add_extension(ext, critical=False)
    return Pair(b.sign(key, hash_ or hashes.SHA256()), key)


def make_server(
    ca: Pair,
    *,
    key: Key | None = None,
    san: list[str] | object | None = DEFAULT,
    eku: list[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.SERVER_AUTH,),  # type: ignore[assignment]
    aki: bytes | object | None = DEFAULT,
    hash_: hashes.HashAlgorithm | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    sign_with: Key | None = None,
    serial: int | None = None,
) -> Pair:
    key = key or ec_key()
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(DOMAIN))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=90))
    )
    names = [f"*.{DOMAIN}", DOMAIN] if san is DEFAULT else san
    if isinstance(names, list):
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if aki is DEFAULT:
        # A CA without SKI still gets the AKI an issuer would compute from its public key.
        ski = x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    elif isinstance(aki, bytes):
        b = b.add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
    return Pair(b.sign(sign_with or ca.key, hash_ or hashes.SHA256()), key)


@pytest.fixture(scope="session")
def good_ca() -> Pair:
    return make_ca()


@pytest.fixture(scope="session")
def good_server(good_ca: Pair) -> Pair:
    return make_server(good_ca)


def write_pair(directory: Path, ca: Pair, server: Pair) -> tuple[Path, Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    (directory / "tls.crt").write_bytes(server.cert_pem)
    (directory / "tls.key").write_bytes(server.key_pem)
    return directory / "ca.crt", directory / "tls.crt", directory / "tls.key"


# -- the official openssl recipe (digest §4.4), in tests only ----------------------------------


def openssl_recipe(data: Path, domain: str = DOMAIN, *, extra_x509: list[str] | None = None) -> Path:
    """Run the docs' manual recipe verbatim (RSA 2048 CA and server, -extfile), into `data`."""
    data.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=data, check=True, capture_output=True)

    run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "3650", "-subj", "/CN=mcp-tunnel-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    (data / "tls.ext").write_text(
        f"subjectAltName = DNS:{domain},DNS:*.{domain}\n"
        "authorityKeyIdentifier = keyid,issuer\n"
        "extendedKeyUsage = serverAuth\n"
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "server.csr",
        "-subj",
        f"/CN={domain}",
    )
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "tls.crt", "-days", "90", "-extfile", "tls.ext", *(extra_x509 or []),
    )  # fmt: skip
    (data / "tls.key").chmod(0o644)
    return data


# -- a loopback TLS server that echoes lines ----------------------------------------------------


class EchoServer:
    """Accepts TLS on 127.0.0.1 with whatever context `get_context` returns *at accept time*
    (as the proxy does for each new tunnel), and echoes lines back. Handshake failures are queued
    so a test can see what the server side saw."""

    def __init__(self, get_context: Callable[[], ssl.SSLContext]) -> None:
        self.get_context = get_context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.failures: queue.Queue[ssl.SSLError] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            tls = self.get_context().wrap_socket(conn, server_side=True)
        except ssl.SSLError as exc:
            self.failures.put(exc)
            conn.close()
            return
        except OSError:
            conn.close()
            return
        try:
            with tls, tls.makefile("rwb") as f:
                for line in f:
                    f.write(b"echo " + line)
                    f.flush()
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()


@pytest.fixture
def echo_server() -> Iterator[Callable[[Callable[[], ssl.SSLContext]], EchoServer]]:
    servers: list[EchoServer] = []

    def start(get_context: Callable[[], ssl.SSLContext]) -> EchoServer:
        s = EchoServer(get_context)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


class Client:
    """A TLS client that trusts only `ca_file` and checks the host name, as Anthropic's does."""

    def __init__(self, port: int, ca_file: Path, host: str = f"echo.{DOMAIN}") -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            self.tls = ctx.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        self.file = self.tls.makefile("rwb")

    @property
    def serial(self) -> int:
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    def echo(self, text: str) -> str:
        self.file.write(text.encode() + b"\n")
        self.file.flush()
        return self.file.readline().decode().rstrip("\n")

    def close(self) -> None:
        self.file.close()
        self.tls.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- running a check as another uid ---------------------------------------------------------------


def call_as(uid: int, fn: Callable[[], str]) -> str:
    """Run `fn` in a forked child that dropped to `uid` (we run as root in CI); return its text.

    A fork rather than a subprocess: the venv's interpreter may live under a directory another uid
    cannot enter.
    """
    import os

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        status = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(w, fn().encode())
            status = 0
        except BaseException as exc:
            os.write(w, f"child raised {type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        out = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out
