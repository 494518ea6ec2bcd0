"""The HTTP layer and the exchange in isolation: retry-after, proxies, token re-reads, 401 refresh."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.kubernetes import FakeKubernetes
from tests.fakes.oidc import FakeOIDCIssuer
from tests.setup.support import ORG, RULE_ID, SUBJECT

from mcp_tunnel.setup.api import TunnelsAPI
from mcp_tunnel.setup.errors import NetworkError
from mcp_tunnel.setup.report import REDACTED, Reporter
from mcp_tunnel.setup.retry import RetryPolicy, parse_retry_after
from mcp_tunnel.setup.transport import HTTPTransport, _bypass
from mcp_tunnel.setup.wif import WIFExchange


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "7"}) == 7
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_is_bounded_and_jittered() -> None:
    p = RetryPolicy(base_delay=1, max_delay=8, max_retry_after=30, rng=lambda: 1.0)
    assert [p.delay(n) for n in range(1, 6)] == [1, 2, 4, 8, 8]
    assert RetryPolicy(rng=lambda: 0.0).delay(3) == 0
    assert p.delay(1, retry_after=600) == 30.1  # a huge retry-after is capped


def test_no_proxy_rules() -> None:
    assert _bypass("api.anthropic.com", "localhost,.anthropic.com")
    assert _bypass("api.anthropic.com", "anthropic.com")
    assert not _bypass("api.anthropic.com", "example.com")
    assert _bypass("10.1.2.3", "10.0.0.0/8")
    assert _bypass("x.y", "*")


class ConnectProxy:
    """A CONNECT-only forward proxy that records the targets it was asked for."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.auth: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        lines = head.decode().split("\r\n")
        target = lines[0].split()[1]
        self.targets.append(target)
        self.auth += [line for line in lines if line.lower().startswith("proxy-authorization")]
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
        pipe(conn, upstream)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes(tmp_path / "k8s")
    yield fake
    fake.close()


def test_https_through_a_connect_proxy(kube: FakeKubernetes) -> None:
    proxy = ConnectProxy()
    try:
        ctx = ssl.create_default_context(cafile=str(kube.sa_dir / "ca.crt"))
        env = {"HTTPS_PROXY": f"http://user:p%40ss@127.0.0.1:{proxy.port}"}
        t = HTTPTransport(ssl_context=ctx, _environ=env)
        port = kube.environ()["KUBERNETES_SERVICE_PORT"]
        resp = t.request(
            "GET", f"https://localhost:{port}/api/v1/namespaces/mcp-tunnel/secrets/x", headers={}
        )
        assert resp.status == 401  # reached the server (no token sent), TLS verified end to end
        assert proxy.targets == [f"localhost:{port}"]
        assert proxy.auth == ["Proxy-Authorization: Basic dXNlcjpwQHNz"]
        # NO_PROXY skips it
        t = HTTPTransport(ssl_context=ctx, _environ={**env, "NO_PROXY": "localhost"})
        assert t.request("GET", f"https://localhost:{port}/", headers={}).status == 401
        assert len(proxy.targets) == 1
    finally:
        proxy.close()


def test_network_errors_say_whether_the_request_was_sent() -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(NetworkError) as info:
        HTTPTransport(timeout=2).request("GET", f"http://127.0.0.1:{port}/", headers={})
    assert info.value.sent is False


@pytest.fixture
def fakes() -> Iterator[tuple[FakeAnthropic, FakeOIDCIssuer]]:
    from tests.fakes.anthropic import Rule

    issuer = FakeOIDCIssuer()
    api = FakeAnthropic()
    api.add_rule(Rule(RULE_ID, issuer.url, "api.anthropic.com", "system:serviceaccount:", ORG, ["default"]))
    yield api, issuer
    api.close()
    issuer.close()


def exchanger(api: FakeAnthropic, token_file: Path, reporter: Reporter) -> WIFExchange:
    return WIFExchange(
        api_url=api.url,
        federation_rule_id=RULE_ID,
        organization_id=ORG,
        transport=HTTPTransport(),
        reporter=reporter,
        retry=RetryPolicy(sleep=lambda s: None),
        token_file=str(token_file),
    )


def test_token_file_is_read_on_every_exchange(
    fakes: tuple[FakeAnthropic, FakeOIDCIssuer], tmp_path: Path
) -> None:
    api, issuer = fakes
    f = tmp_path / "token"
    f.write_text(issuer.mint(SUBJECT, jti="one"))
    reporter = Reporter()
    wif = exchanger(api, f, reporter)
    wif.exchange()
    f.write_text(issuer.mint(SUBJECT, jti="two") + "\n")  # a rotated projected token
    wif.exchange()
    assertions = [r.json()["assertion"] for r in api.exchange_requests]
    assert len(assertions) == 2 and assertions[0] != assertions[1]
    assert assertions[1] == f.read_text().strip()
    assert reporter.scrub(f"x {assertions[0]} y {assertions[1]}") == f"x {REDACTED} y {REDACTED}"


def test_expired_access_token_is_exchanged_again_once(
    fakes: tuple[FakeAnthropic, FakeOIDCIssuer], tmp_path: Path
) -> None:
    api, issuer = fakes
    f = tmp_path / "token"
    f.write_text(issuer.mint(SUBJECT))
    reporter = Reporter()
    client = TunnelsAPI(api.url, exchanger(api, f, reporter), HTTPTransport(), reporter, RetryPolicy())
    t = api.add_tunnel(ORG)
    assert client.get_tunnel(t.id).domain == t.domain
    api.access_tokens.clear()  # the access token expired server-side
    assert client.get_tunnel(t.id).domain == t.domain
    assert len(api.exchange_requests) == 2
    assert [tok for tok in api.access_tokens] and all(
        tok not in repr(client.auth) for tok in api.access_tokens
    )


def test_pagination_walks_every_page(fakes: tuple[FakeAnthropic, FakeOIDCIssuer], tmp_path: Path) -> None:
    import mcp_tunnel.setup.api as api_mod

    api, issuer = fakes
    f = tmp_path / "token"
    f.write_text(issuer.mint(SUBJECT))
    reporter = Reporter()
    client = TunnelsAPI(api.url, exchanger(api, f, reporter), HTTPTransport(), reporter, RetryPolicy())
    made = [api.add_tunnel(ORG, name=f"t{i}") for i in range(7)]
    made[0].archived_at = "2026-07-01T00:00:00Z"
    old = api_mod.PAGE_LIMIT
    api_mod.PAGE_LIMIT = 2
    try:
        live = list(client.list_tunnels())
        everything = list(client.list_tunnels(include_archived=True))
        assert client.find_tunnel_by_display_name("t3") is not None
        assert client.find_tunnel_by_display_name("t0") is None  # archived: not a live match
    finally:
        api_mod.PAGE_LIMIT = old
    assert [t.id for t in live] == [t.id for t in reversed(made[1:])]  # newest first
    assert len(everything) == 7
    assert sum(1 for m, p in api.calls if m == "GET" and p == "/v1/tunnels") >= 8
