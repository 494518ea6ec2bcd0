"""`k8s-secret:` output against a fake Kubernetes API over HTTPS with a bearer-token check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.kubernetes import FakeKubernetes
from tests.setup.support import Runner

from mcp_tunnel.setup.errors import APIError
from mcp_tunnel.setup.k8s import InClusterClient
from mcp_tunnel.setup.outputs import K8sSecretOutput

KEYS = {
    "tunnel-id",
    "tunnel-domain",
    "tunnel-token",
    "tls.crt",
    "tls.key",
    "ca.crt",
    "ca.key",
    "setup-state.json",
}


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes(tmp_path / "k8s")
    yield fake
    fake.close()


def init(runner: Runner, kube: FakeKubernetes, *extra: str):  # type: ignore[no-untyped-def]
    env = {**runner.env, **kube.environ()}
    return runner("init", f"--api-url={runner.anthropic.url}", "--key-type=ecdsa-p256", *extra, env=env)


def test_init_creates_then_leaves_the_secret_alone(
    setup_cli: Runner, anthropic: FakeAnthropic, kube: FakeKubernetes
) -> None:
    r = init(setup_cli, kube)  # no --output: running "in a pod", the default applies
    assert r.code == 0, r.err
    assert "--output defaults to k8s-secret:mcp-tunnel" in r.out
    data = kube.secret_data("mcp-tunnel")
    assert set(data) == KEYS
    t = next(iter(anthropic.tunnels.values()))
    assert data["tunnel-id"] == t.id.encode() and data["tunnel-token"] == t.token.encode()
    obj = kube.secrets[("mcp-tunnel", "mcp-tunnel")]
    assert (
        obj["type"] == "Opaque"
        and obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mcp-tunnel-setup"
    )
    assert kube.token not in r.text and t.token not in r.text
    puts = kube.calls.count(("PUT", "/api/v1/namespaces/mcp-tunnel/secrets/mcp-tunnel"))
    r = init(setup_cli, kube, "--output=k8s-secret:mcp-tunnel")
    assert r.code == 0, r.err
    assert kube.calls.count(("PUT", "/api/v1/namespaces/mcp-tunnel/secrets/mcp-tunnel")) == puts
    assert len(anthropic.tunnels) == 1 and len(t.certs) == 1


def test_renew_cert_updates_the_secret_and_keeps_foreign_keys(
    setup_cli: Runner, anthropic: FakeAnthropic, kube: FakeKubernetes
) -> None:
    assert init(setup_cli, kube, "--output=k8s-secret:release-1").code == 0
    obj = kube.secrets[("mcp-tunnel", "release-1")]
    obj["data"]["operator-note"] = "aGVsbG8="
    before = kube.secret_data("release-1")
    calls = len(anthropic.calls)
    r = setup_cli("renew-cert", "--output=k8s-secret:release-1", "--key-type=ecdsa-p256", env=kube.environ())
    assert r.code == 0, r.err
    after = kube.secret_data("release-1")
    assert after["tls.crt"] != before["tls.crt"] and after["tls.key"] != before["tls.key"]
    assert after["operator-note"] == b"hello" and after["ca.key"] == before["ca.key"]
    assert len(anthropic.calls) == calls


def test_bad_service_account_token_is_reported(setup_cli: Runner, kube: FakeKubernetes) -> None:
    (kube.sa_dir / "token").write_text("wrong")
    r = init(setup_cli, kube, "--output=k8s-secret:x")
    assert r.code == 1 and "HTTP 401 Unauthorized" in r.err and "service-account token was rejected" in r.err


def test_missing_rbac_is_reported(setup_cli: Runner, kube: FakeKubernetes) -> None:
    kube.allowed_verbs = {"get"}
    r = init(setup_cli, kube, "--output=k8s-secret:x")
    assert r.code == 1 and "HTTP 403 Forbidden" in r.err and "grant it a Role" in r.err


def test_cluster_ca_is_verified(setup_cli: Runner, kube: FakeKubernetes) -> None:
    from mcp_tunnel.certs.generate import generate_ca, pem_cert

    (kube.sa_dir / "ca.crt").write_bytes(pem_cert(generate_ca()[0]))
    r = init(setup_cli, kube, "--output=k8s-secret:x")
    assert r.code == 1 and "TLS certificate verification failed" in r.err


def test_concurrent_change_is_a_conflict_not_an_overwrite(kube: FakeKubernetes) -> None:
    kube.put_secret("s", {"tunnel-id": b"tnl_1"})
    out = K8sSecretOutput("s", InClusterClient.from_environment(kube.environ()))
    assert out.load() == {"tunnel-id": b"tnl_1"}
    kube.put_secret("s", {"tunnel-id": b"tnl_other"})  # someone else writes meanwhile
    with pytest.raises(APIError, match=r"409 Conflict.*changed by someone else"):
        out.save({"tunnel-id": b"tnl_2"})
    assert kube.secret_data("s") == {"tunnel-id": b"tnl_other"}


def test_not_in_a_pod(setup_cli: Runner, tmp_path: Path) -> None:
    r = setup_cli("renew-cert", "--output=k8s-secret:x", env={})
    assert r.code == 1 and "KUBERNETES_SERVICE_HOST is not set" in r.err
