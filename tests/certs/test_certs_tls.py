"""Real TLS handshakes on loopback: generated certificates work with a client that trusts only the
CA and checks ``echo.<domain>``; broken ones fail with the reason the operator greps for."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from certs_support import DOMAIN, NOW, Client, EchoServer, make_ca, make_server, write_pair

from mcp_tunnel.certs.generate import generate_ca, issue_server_cert, pem_cert, pem_key
from mcp_tunnel.certs.reload import tls_alert_reason
from mcp_tunnel.tls_session import make_server_context

StartServer = Callable[[Callable[[], ssl.SSLContext]], EchoServer]


def server_failure(server: EchoServer) -> ssl.SSLError:
    return server.failures.get(timeout=10)


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "rsa4096"])
def test_generated_pair_completes_a_real_handshake(
    key_type: str, tmp_path: Path, echo_server: StartServer
) -> None:
    ca_cert, ca_key = generate_ca()
    cert, key = issue_server_cert(ca_cert, ca_key, DOMAIN, key_type=key_type)
    (tmp_path / "ca.crt").write_bytes(pem_cert(ca_cert))
    (tmp_path / "tls.crt").write_bytes(pem_cert(cert))
    (tmp_path / "tls.key").write_bytes(pem_key(key))
    ctx = make_server_context(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    server = echo_server(lambda: ctx)
    with Client(server.port, tmp_path / "ca.crt", host=f"echo.{DOMAIN}") as client:
        assert client.echo("hello") == "echo hello"
        assert client.serial == cert.serial_number
        assert client.tls.selected_alpn_protocol() is None  # the client offered none
    # The bare domain is in the SAN too (a route on the tunnel domain itself).
    with Client(server.port, tmp_path / "ca.crt", host=DOMAIN) as client:
        assert client.echo("bare") == "echo bare"


def test_expired_server_certificate_fails_the_handshake_and_the_server_sees_why(
    tmp_path: Path, echo_server: StartServer
) -> None:
    ca = make_ca()
    expired = make_server(ca, not_before=NOW - timedelta(days=91), not_after=NOW - timedelta(days=1))
    ca_file, cert_file, key_file = write_pair(tmp_path, ca, expired)
    ctx = make_server_context(str(cert_file), str(key_file))
    server = echo_server(lambda: ctx)
    with pytest.raises(ssl.SSLCertVerificationError) as client_side:
        Client(server.port, ca_file)
    # The client's view: OpenSSL's verify message.
    assert tls_alert_reason(client_side.value) == "certificate verify failed (certificate has expired)"
    # The server's view (what the proxy logs in `tls handshake failed`): the alert the client sent.
    seen = server_failure(server)
    assert seen.reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED"
    assert tls_alert_reason(seen) == "certificate expired"


def test_unregistered_ca_is_unknown_ca_on_the_server(tmp_path: Path, echo_server: StartServer) -> None:
    ca, other_ca = make_ca(), make_ca(cn="not-registered")
    _, cert_file, key_file = write_pair(tmp_path, other_ca, make_server(other_ca))
    (tmp_path / "registered.crt").write_bytes(ca.cert_pem)
    ctx = make_server_context(str(cert_file), str(key_file))
    server = echo_server(lambda: ctx)
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(server.port, tmp_path / "registered.crt")
    reason = tls_alert_reason(server_failure(server))
    assert "unknown ca" in reason and "unknown certificate authority" in reason


def test_san_not_covering_the_host_is_reported(tmp_path: Path, echo_server: StartServer) -> None:
    ca = make_ca()
    ca_file, cert_file, key_file = write_pair(tmp_path, ca, make_server(ca, san=["*.other.example"]))
    ctx = make_server_context(str(cert_file), str(key_file))
    server = echo_server(lambda: ctx)
    with pytest.raises(ssl.SSLCertVerificationError) as client_side:
        Client(server.port, ca_file)
    assert "hostname mismatch" in tls_alert_reason(client_side.value).lower()
    # An OpenSSL client answers a name mismatch with bad_certificate (as Go's does): the
    # plugin's "bad certificate = SAN mismatch" reading holds.
    assert tls_alert_reason(server_failure(server)) == "bad certificate"


def test_plain_http_on_the_tls_port_is_named(tmp_path: Path, echo_server: StartServer) -> None:
    import socket

    ca = make_ca()
    _, cert_file, key_file = write_pair(tmp_path, ca, make_server(ca))
    ctx = make_server_context(str(cert_file), str(key_file))
    server = echo_server(lambda: ctx)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert tls_alert_reason(server_failure(server)).startswith("http request")
