"""Certificate hot reload through the real proxy: new handshakes get the new pair, live ones keep theirs."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mcp_tunnel.certs.files import write_atomic
from mcp_tunnel.certs.generate import generate_ca, issue_server_cert, load_cert, load_key, pem_cert, pem_key
from mcp_tunnel.client.tunnel_client import TunnelConnection
from mcp_tunnel.errors import TunnelClientError
from support.pki import PKI, make_pki
from support.proxy import RunningProxy, start_proxy
from support.upstreams import RecordingUpstream

HOST = "echo.tunnel.test"


def _serial(conn: TunnelConnection) -> int:
    der = conn.peer_certificate_der()
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def _serial_of_new_connection(proxy: RunningProxy) -> int:
    conn = await proxy.client().connect(HOST)
    serial = _serial(conn)
    await conn.close()
    return serial


async def _wait_for_serial(proxy: RunningProxy, serial: int) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while await _serial_of_new_connection(proxy) != serial:
        assert asyncio.get_running_loop().time() < deadline, proxy.logs.getvalue()
        await asyncio.sleep(0.05)


async def test_renewed_pair_served_to_new_connections(tmp: Path, upstream: RecordingUpstream) -> None:
    pki = make_pki(tmp / "pki")
    proxy = await start_proxy(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, tls={"reload_interval": "50ms"}
    )
    live = await proxy.client().connect(HOST)
    old_serial = _serial(live)
    ca, ca_key = load_cert(pki.ca_file), load_key(tmp / "pki" / "ca.key")
    cert, key = issue_server_cert(ca, ca_key, pki.domain, duration=timedelta(days=1), key_type="ecdsa-p256")  # type: ignore[arg-type]
    # A renewal that lands one file after the other (key first: briefly a mismatched pair).
    write_atomic(pki.key_file, pem_key(key), 0o600)
    write_atomic(pki.cert_file, pem_cert(cert), 0o644)
    await _wait_for_serial(proxy, cert.serial_number)
    assert cert.serial_number != old_serial
    resp = await live.request("GET", "/still", host=HOST)  # the open session is untouched
    assert resp.status == 200
    await resp.read()
    await live.close()
    assert proxy.log_has("certificate reloaded")
    await proxy.stop()


async def test_kubernetes_symlink_swap(tmp: Path, upstream: RecordingUpstream) -> None:
    """A Secret mount: tls.crt -> ..data/tls.crt, and ..data is a symlink swapped atomically."""
    mount = tmp / "mount"
    first = make_pki(tmp / "gen1")
    ca, ca_key = load_cert(first.ca_file), load_key(tmp / "gen1" / "ca.key")
    cert2, key2 = issue_server_cert(
        ca, ca_key, first.domain, duration=timedelta(days=1), key_type="ecdsa-p256"
    )  # type: ignore[arg-type]
    (mount / "v1").mkdir(parents=True)
    (mount / "v2").mkdir()
    (mount / "v1" / "tls.crt").write_bytes(first.cert_file.read_bytes())
    (mount / "v1" / "tls.key").write_bytes(first.key_file.read_bytes())
    (mount / "v2" / "tls.crt").write_bytes(pem_cert(cert2))
    (mount / "v2" / "tls.key").write_bytes(pem_key(key2))
    os.symlink("v1", mount / "..data")
    os.symlink("..data/tls.crt", mount / "tls.crt")
    os.symlink("..data/tls.key", mount / "tls.key")
    pki = PKI(first.domain, first.ca_file, mount / "tls.crt", mount / "tls.key")
    proxy = await start_proxy(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, tls={"reload_interval": "50ms"}
    )
    live = await proxy.client().connect(HOST)
    os.symlink("v2", mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    await _wait_for_serial(proxy, cert2.serial_number)
    resp = await live.request("GET", "/", host=HOST)
    assert resp.status == 200
    await resp.read()
    await proxy.stop()


async def test_mismatched_pair_refused_old_still_served(tmp: Path, upstream: RecordingUpstream) -> None:
    pki = make_pki(tmp / "pki")
    proxy = await start_proxy(
        tmp, pki, {"echo": f"http://127.0.0.1:{upstream.port}"}, tls={"reload_interval": "50ms"}
    )
    old = await _serial_of_new_connection(proxy)
    stranger = ec.generate_private_key(ec.SECP256R1())
    write_atomic(pki.key_file, pem_key(stranger), 0o600)
    deadline = asyncio.get_running_loop().time() + 10
    while not proxy.log_has("certificate reload failed"):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert await _serial_of_new_connection(proxy) == old
    await proxy.stop()


async def test_expired_certificate_fails_handshake_and_is_logged(tmp: Path, pki: PKI) -> None:
    ca, ca_key = generate_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, pki.domain)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=10))
        .not_valid_after(now - timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"*.{pki.domain}")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    d = tmp / "expired"
    d.mkdir()
    write_atomic(d / "ca.crt", pem_cert(ca), 0o644)
    write_atomic(d / "tls.crt", pem_cert(cert), 0o644)
    write_atomic(d / "tls.key", pem_key(key), 0o600)
    expired = PKI(pki.domain, d / "ca.crt", d / "tls.crt", d / "tls.key")
    proxy = await start_proxy(tmp, expired, {"echo": "http://127.0.0.1:9"})
    try:
        await proxy.client().connect(HOST)
    except TunnelClientError as exc:
        assert exc.stage == "tls"
        assert "expired" in str(exc)
    else:
        raise AssertionError("handshake with an expired certificate succeeded")
    deadline = asyncio.get_running_loop().time() + 5
    while not proxy.log_has("tls handshake failed: certificate expired"):
        assert asyncio.get_running_loop().time() < deadline, proxy.logs.getvalue()
        await asyncio.sleep(0.02)
    await proxy.stop()
