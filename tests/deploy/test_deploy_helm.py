"""The Helm chart, rendered by the real Helm engine (helm-python-sdk bundles Helm v4's Go library),
every manifest validated against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown
fields are errors) for several values files, plus the chart's own contract: official values keys,
hooks, RBAC, hardening, probes, replicas, NetworkPolicy shapes and values.schema.json."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "mcp-tunnel"
RELEASE = "mcp-tunnel"
NAMESPACE = "mcp-tunnel"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema bundled.
K8S_VERSIONS = ("1.27.0", "1.37.0")
OFFICIAL_CLOUDFLARED = (
    "cloudflare/cloudflared@sha256:6b599ca3e974349ead3286d178da61d291961182ec3fe9c505e1dd02c8ac31b0"
)
WIF = {
    "federationRuleId": "fdrl_01AbCdEfGhJkMnPqRsTuVwXyZ0",
    "organizationId": "12345678-90ab-cdef-1234-567890abcdef",
}
ROUTES = {"docs": "http://docs-mcp.internal:8080"}


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def managed(**extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"api": {"wif": dict(WIF)}, "gateway": {"config": {"routes": dict(ROUTES)}}}
    return merge(values, extra)


def external(**extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "setup": {"enabled": False},
        "gateway": {"config": {"tunnel_domain": "abcd1234.tunnel.anthropic.com", "routes": dict(ROUTES)}},
    }
    return merge(values, extra)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class Rendered:
    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.docs: list[dict[str, Any]] = []
        for name, text in files.items():
            if name.endswith("NOTES.txt"):
                continue
            self.docs += [d for d in yaml.safe_load_all(text) if d]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for doc in self.docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        raise AssertionError(f"no {kind}/{name} in {self.kinds()}")

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def kinds(self) -> list[str]:
        return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in self.docs)

    @property
    def deployment(self) -> dict[str, Any]:
        return self.get("Deployment", RELEASE)

    def container(self, name: str) -> dict[str, Any]:
        return next(c for c in self.deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)

    @property
    def proxy_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.get("ConfigMap", RELEASE)["data"]["config.yaml"])


@pytest.fixture(scope="module")
def chart(helm: ModuleType) -> Iterator[Any]:
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def render(chart: Any):  # type: ignore[no-untyped-def]
    def _render(values: dict[str, Any], *, release: str = RELEASE, upgrade: bool = False) -> Rendered:
        files = chart.render(
            values, name=release, namespace=NAMESPACE, is_install=not upgrade, is_upgrade=upgrade
        )
        return Rendered(files)

    return _render


def pod_specs(r: Rendered) -> list[tuple[str, dict[str, Any]]]:
    specs = [("Deployment", r.deployment["spec"]["template"]["spec"])]
    specs += [("Job", j["spec"]["template"]["spec"]) for j in r.all("Job")]
    specs += [("CronJob", c["spec"]["jobTemplate"]["spec"]["template"]["spec"]) for c in r.all("CronJob")]
    return specs


# --- every manifest is valid Kubernetes ------------------------------------------------------------


def test_ci_values_files_exist() -> None:
    names = {p.name for p in CI_VALUES}
    assert {
        "managed-values.yaml",
        "external-values.yaml",
        "replicas-values.yaml",
        "networkpolicy-values.yaml",
        "networkpolicy-claudeai-values.yaml",
    } <= names


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_every_manifest_validates_against_kubernetes_schemas(
    render: Any, kv: ModuleType, values_file: Path, k8s: str
) -> None:
    r = render(load_values(values_file))
    assert r.docs, "nothing rendered"
    for doc in r.docs:
        kv.validate(doc, k8s, strict=True)  # raises ValidationError with the path


def test_the_validator_rejects_a_broken_manifest(render: Any, kv: ModuleType) -> None:
    """Negative control: the schema check above can fail."""
    dep = copy.deepcopy(render(managed()).deployment)
    dep["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[0], strict=True)
    dep = copy.deepcopy(render(managed()).deployment)
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[0], strict=True)


def test_helm_lint_is_clean(helm: ModuleType) -> None:
    for values_file in CI_VALUES:
        report = helm.lint(str(CHART), load_values(values_file), strict=True, namespace=NAMESPACE)
        errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        # "icon is recommended" is info (1); warnings and errors are not accepted.
        assert not errors, (values_file.name, errors)


# --- Managed mode ------------------------------------------------------------------------------------


def test_managed_mode_resources_and_names(render: Any) -> None:
    r = render(managed())
    assert r.kinds() == sorted(
        [
            "ConfigMap/mcp-tunnel",
            "CronJob/mcp-tunnel-cert-renew",
            "Deployment/mcp-tunnel",
            "Job/mcp-tunnel-setup",
            "NetworkPolicy/mcp-tunnel",
            "PodDisruptionBudget/mcp-tunnel",
            "Role/mcp-tunnel-cert-renew",
            "Role/mcp-tunnel-setup",
            "RoleBinding/mcp-tunnel-cert-renew",
            "RoleBinding/mcp-tunnel-setup",
            "ServiceAccount/mcp-tunnel-cert-renew",
            "ServiceAccount/mcp-tunnel-setup",
        ]
    )
    names = [c["name"] for c in r.deployment["spec"]["template"]["spec"]["containers"]]
    assert names == ["mcp-proxy", "cloudflared"]


def test_other_release_names(render: Any) -> None:
    r = render(managed(), release="prod")
    assert r.get("Deployment", "prod-mcp-tunnel")
    job = r.get("Job", "prod-mcp-tunnel-setup")
    assert "--output=k8s-secret:prod" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    role = r.get("Role", "prod-mcp-tunnel-cert-renew")
    assert role["rules"][0]["resourceNames"] == ["prod"]


def test_setup_job_is_a_retry_safe_pre_install_hook(render: Any) -> None:
    r = render(managed())
    job = r.get("Job", "mcp-tunnel-setup")
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "pre-install"  # upgrades re-run it only with setup.force
    assert set(ann["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    # The ServiceAccount and its RBAC are hooks too, created before the Job (lower weight).
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        res = r.get(kind, "mcp-tunnel-setup")
        a = res["metadata"]["annotations"]
        assert a["helm.sh/hook"] == "pre-install"
        assert int(a["helm.sh/hook-weight"]) < int(ann["helm.sh/hook-weight"])
        assert "before-hook-creation" in a["helm.sh/hook-delete-policy"]
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "mcp-tunnel-setup"
    assert spec["restartPolicy"] == "Never"
    c = spec["containers"][0]
    assert c["command"] == ["/setup"]
    assert c["args"][:3] == ["init", "--api-url=https://api.anthropic.com", "--output=k8s-secret:mcp-tunnel"]
    assert "--token-version=1" in c["args"]
    assert not any(a.startswith("--tunnel-id") for a in c["args"])  # tunnel.id "" = create
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env == {
        "ANTHROPIC_FEDERATION_RULE_ID": WIF["federationRuleId"],
        "ANTHROPIC_ORGANIZATION_ID": WIF["organizationId"],
        "ANTHROPIC_IDENTITY_TOKEN_FILE": "/var/run/secrets/anthropic.com/token",
    }
    token = spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "api.anthropic.com"  # the documented default (no scheme)
    assert token["path"] == "token"
    mount = c["volumeMounts"][0]
    assert mount["mountPath"] == "/var/run/secrets/anthropic.com" and mount["readOnly"] is True


def test_setup_rbac_is_limited_to_the_release_secret(render: Any) -> None:
    rules = render(managed()).get("Role", "mcp-tunnel-setup")["rules"]
    # create cannot be restricted by name in Kubernetes; everything else is.
    assert rules == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["mcp-tunnel"],
            "verbs": ["get", "update"],
        },
    ]


def test_force_reruns_setup_on_upgrade_and_token_version_and_tunnel_id(render: Any) -> None:
    r = render(managed(setup={"force": True}, tunnel={"id": "tnl_01ABC", "tokenVersion": 7}), upgrade=True)
    job = r.get("Job", "mcp-tunnel-setup")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        assert (
            r.get(kind, "mcp-tunnel-setup")["metadata"]["annotations"]["helm.sh/hook"]
            == "pre-install,pre-upgrade"
        )
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--token-version=7" in args  # an integer from --set works too
    assert "--tunnel-id=tnl_01ABC" in args


def test_api_token_flavour(render: Any) -> None:
    r = render(
        merge(
            managed(),
            {"api": {"token": "sk-placeholder", "wif": {"federationRuleId": "", "organizationId": ""}}},
        )
    )
    secret = r.get("Secret", "mcp-tunnel-setup-api-token")
    assert set(secret["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(",")) == {
        "before-hook-creation",
        "hook-succeeded",
    }
    spec = r.get("Job", "mcp-tunnel-setup")["spec"]["template"]["spec"]
    env = spec["containers"][0]["env"]
    assert env == [
        {
            "name": "API_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "mcp-tunnel-setup-api-token", "key": "api-token"}},
        }
    ]
    assert "volumes" not in spec  # no projected OIDC token needed
    assert "sk-placeholder" not in json.dumps(r.get("Job", "mcp-tunnel-setup"))


def test_custom_oidc_token_file(render: Any) -> None:
    values = load_values(CHART / "ci" / "networkpolicy-values.yaml")
    spec = render(values).get("Job", "mcp-tunnel-setup")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["ANTHROPIC_IDENTITY_TOKEN_FILE"] == "/var/run/spiffe/token"
    assert [v["name"] for v in spec["volumes"]] == ["spiffe"]
    assert [m["name"] for m in c["volumeMounts"]] == ["spiffe"]


def test_cert_renew_cronjob_and_least_privilege_rbac(render: Any) -> None:
    r = render(managed())
    cron = r.get("CronJob", "mcp-tunnel-cert-renew")
    assert cron["spec"]["schedule"] == "0 0 * * *"
    assert cron["spec"]["timeZone"] == "Etc/UTC"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "mcp-tunnel-cert-renew"
    c = spec["containers"][0]
    assert c["command"] == ["/setup"]
    assert c["args"] == [
        "renew-cert",
        "--output=k8s-secret:mcp-tunnel",
        "--renew-before=720h",
        "--cert-duration=2160h",
    ]
    role = r.get("Role", "mcp-tunnel-cert-renew")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["mcp-tunnel"],
            "verbs": ["get", "update"],
        }
    ]
    binding = r.get("RoleBinding", "mcp-tunnel-cert-renew")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "mcp-tunnel-cert-renew",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mcp-tunnel-cert-renew", "namespace": NAMESPACE}
    ]
    assert not r.all("ClusterRole") and not r.all("ClusterRoleBinding")


def test_managed_mode_injects_the_domain_from_the_secret(render: Any) -> None:
    r = render(managed(gateway={"config": {"tunnel_domain": "ignored.example"}}))
    proxy = r.container("mcp-proxy")
    assert proxy["args"] == ["-config", "/etc/mcp-gateway/config.yaml", "-tunnel-domain", "$(TUNNEL_DOMAIN)"]
    env = {e["name"]: e for e in proxy["env"]}
    assert env["TUNNEL_DOMAIN"]["valueFrom"]["secretKeyRef"] == {"name": "mcp-tunnel", "key": "tunnel-domain"}
    assert "tunnel_domain" not in r.proxy_config
    cf = r.container("cloudflared")
    assert cf["env"] == [
        {"name": "TUNNEL_TOKEN", "valueFrom": {"secretKeyRef": {"name": "mcp-tunnel", "key": "tunnel-token"}}}
    ]
    vol = next(v for v in r.deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "server-cert")
    assert vol["secret"]["secretName"] == "mcp-tunnel"


# --- External mode -----------------------------------------------------------------------------------


def test_external_mode(render: Any) -> None:
    r = render(load_values(CHART / "ci" / "external-values.yaml"))
    assert r.kinds() == ["ConfigMap/mcp-tunnel", "Deployment/mcp-tunnel", "NetworkPolicy/mcp-tunnel"]
    proxy = r.container("mcp-proxy")
    assert proxy["args"] == ["-config", "/etc/mcp-gateway/config.yaml"]
    assert "env" not in proxy
    assert r.proxy_config["tunnel_domain"] == "abcd1234.tunnel.anthropic.com"
    cf = r.container("cloudflared")
    assert cf["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "mcp-tunnel-token", "key": "tunnel-token"}
    vol = next(v for v in r.deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "server-cert")
    assert vol["secret"]["secretName"] == "mcp-tunnel-cert"
    # shutdown_timeout 1m30s + terminationGraceExtraSeconds 10
    assert r.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 100


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [
        ("30s", 30),
        ("2m", 120),
        ("1h2m3s", 3723),
        ("45s", 45),
        ("1.5s", 2),
        ("500ms", 1),
        ("0", 0),
        ("+1m0.5s", 61),
    ],
)
def test_grace_period_follows_shutdown_timeout(render: Any, timeout: str, seconds: int) -> None:
    r = render(external(gateway={"config": {"shutdown_timeout": timeout}}, terminationGraceExtraSeconds=5))
    assert r.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == seconds + 5


# --- the config the chart writes ---------------------------------------------------------------------


def test_chart_always_sets_listener_tls_and_admin(render: Any) -> None:
    r = render(
        external(
            gateway={
                "config": {
                    "listen_addr": ":9999",
                    "admin_addr": "0.0.0.0:1",
                    "tls": {"cert_file": "/x.crt", "key_file": "/x.key", "reload_interval": "5s"},
                    "log_format": "json",
                    "upstream": {"allowed_ips": ["10.0.0.0/8"], "tls": {"include_system_cas": True}},
                }
            },
            admin={"port": 9191},
        )
    )
    cfg = r.proxy_config
    assert cfg["listen_addr"] == "127.0.0.1:8080"  # only cloudflared, in the pod's namespace
    assert cfg["admin_addr"] == ":9191"
    assert cfg["tls"] == {"cert_file": "/data/tls.crt", "key_file": "/data/tls.key", "reload_interval": "5s"}
    assert cfg["log_format"] == "json"
    assert cfg["routes"] == ROUTES
    assert cfg["upstream"]["allowed_ips"] == ["10.0.0.0/8"]
    ports = {p["name"]: p["containerPort"] for p in r.container("mcp-proxy")["ports"]}
    assert ports == {"admin": 9191}  # the tunnel listener is loopback-only: no port to declare


def test_config_change_rolls_the_pods(render: Any) -> None:
    def checksum(values: dict[str, Any]) -> str:
        return str(
            render(values).deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        )

    a = checksum(managed())
    assert a == checksum(managed())
    assert a != checksum(managed(gateway={"config": {"routes": {"docs": "http://docs-mcp.internal:8081"}}}))
    assert a != checksum(managed(gateway={"config": {"log_level": "debug"}}))


def test_config_is_valid_for_the_proxy_loader(render: Any, tmp_path: Path) -> None:
    """The ConfigMap the chart writes loads in mcp-tunnel's own config loader (when it is there)."""
    config_mod = pytest.importorskip("mcp_tunnel.config")
    data = tmp_path / "data"  # the loader opens the pair; the pod has it at /data
    data.mkdir()
    (data / "tls.crt").write_text("")
    (data / "tls.key").write_text("")
    for values in (managed(), load_values(CHART / "ci" / "external-values.yaml")):
        text = render(values).get("ConfigMap", RELEASE)["data"]["config.yaml"]
        assert "/data/tls.crt" in text and "/data/tls.key" in text
        path = tmp_path / "config.yaml"
        path.write_text(text.replace("/data/", f"{data}/"))
        try:
            cfg = config_mod.load_config(str(path), tunnel_domain="abcd1234.tunnel.anthropic.com")
        except NotImplementedError:
            pytest.skip("mcp_tunnel.config.load_config is not implemented yet")
        assert cfg.listen_port == 8080
        assert cfg.admin_port == 9090
        assert cfg.cert_file == f"{data}/tls.crt" and cfg.key_file == f"{data}/tls.key"
        assert cfg.tunnel_domain == "abcd1234.tunnel.anthropic.com"


# --- hardening and probes ----------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_every_pod_is_hardened(render: Any, values_file: Path) -> None:
    r = render(load_values(values_file))
    for kind, spec in pod_specs(r):
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532 and psc["runAsGroup"] == 65532, kind
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, kind
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (kind, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (kind, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (kind, c["name"])
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532, (kind, c["name"])
            assert "privileged" not in sc or sc["privileged"] is False
    dep = r.deployment["spec"]["template"]["spec"]
    assert dep["automountServiceAccountToken"] is False  # the stack never calls the Kubernetes API


def test_proxy_sees_only_the_server_pair_read_only(render: Any) -> None:
    r = render(managed())
    spec = r.deployment["spec"]["template"]["spec"]
    vol = next(v for v in spec["volumes"] if v["name"] == "server-cert")
    assert [i["key"] for i in vol["secret"]["items"]] == ["tls.crt", "tls.key"]  # no token, no CA key
    assert vol["secret"]["defaultMode"] == 0o440
    assert spec["securityContext"]["fsGroup"] == 65532
    mounts = {m["name"]: m for m in r.container("mcp-proxy")["volumeMounts"]}
    assert mounts["server-cert"] == {"name": "server-cert", "mountPath": "/data", "readOnly": True}
    assert mounts["config"] == {"name": "config", "mountPath": "/etc/mcp-gateway", "readOnly": True}
    assert "volumeMounts" not in r.container("cloudflared")


def test_probes_use_the_admin_endpoint(render: Any) -> None:
    r = render(managed())
    proxy = r.container("mcp-proxy")
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert {"name": "admin", "containerPort": 9090, "protocol": "TCP"} in proxy["ports"]
    assert r.proxy_config["admin_addr"] == ":9090"
    # cloudflared's metrics are on loopback by default, so the kubelet cannot probe them
    assert "livenessProbe" not in r.container("cloudflared")
    on = render(managed(cloudflared={"metricsAddress": "0.0.0.0", "livenessProbe": {"enabled": True}}))
    cf = on.container("cloudflared")
    assert cf["livenessProbe"]["httpGet"] == {"path": "/ready", "port": "cf-metrics"}
    assert cf["args"][cf["args"].index("--metrics") + 1] == "0.0.0.0:2000"
    with pytest.raises(Exception, match="kubelet cannot reach a loopback address"):
        render(managed(cloudflared={"livenessProbe": {"enabled": True}}))
    off = render(managed(probes={"liveness": {"enabled": False}, "readiness": {"enabled": False}}))
    assert "livenessProbe" not in off.container("mcp-proxy") and "readinessProbe" not in off.container(
        "mcp-proxy"
    )


def test_cloudflared_reaches_the_proxy_over_localhost(render: Any) -> None:
    cf = render(managed()).container("cloudflared")
    assert cf["image"] == OFFICIAL_CLOUDFLARED
    args = cf["args"]
    assert args[0] == "tunnel" and "--no-autoupdate" in args and "run" in args
    # 127.0.0.1, not localhost (which may mean ::1 first): the listener is bound to IPv4 loopback
    assert args[args.index("--url") + 1] == "http://127.0.0.1:8080"
    # the metrics server (also pprof and /config) stays inside the pod
    assert args[args.index("--metrics") + 1] == "127.0.0.1:2000"


def test_listener_and_metrics_are_loopback_only(render: Any) -> None:
    """Issue #19: nothing outside the pod can reach the tunnel listener or cloudflared's metrics."""
    for values in (managed(), load_values(CHART / "ci" / "external-values.yaml")):
        r = render(values)
        assert r.proxy_config["listen_addr"] == "127.0.0.1:8080"
        assert r.proxy_config["admin_addr"] == ":9090"  # the kubelet probes it on the pod IP
        cf_args = r.container("cloudflared")["args"]
        assert cf_args[cf_args.index("--metrics") + 1].startswith("127.0.0.1:")
        assert cf_args[cf_args.index("--url") + 1] == "http://127.0.0.1:8080"
        declared = [p["containerPort"] for c in ("mcp-proxy", "cloudflared") for p in r.container(c)["ports"]]
        assert 8080 not in declared


def test_image_reference(render: Any) -> None:
    r = render(load_values(CHART / "ci" / "replicas-values.yaml"))
    image = "registry.example.com/mcp-tunnel@sha256:" + "0123456789abcdef" * 4
    assert r.container("mcp-proxy")["image"] == image
    assert r.get("Job", "mcp-tunnel-setup")["spec"]["template"]["spec"]["containers"][0]["image"] == image
    assert render(managed()).container("mcp-proxy")["image"] == "mcp-tunnel:0.1.0"  # appVersion
    assert render(managed(image={"tag": "dev"})).container("mcp-proxy")["image"] == "mcp-tunnel:dev"


# --- replicas, PDB, spread ---------------------------------------------------------------------------


def test_replicas_pdb_and_spread(render: Any) -> None:
    r = render(load_values(CHART / "ci" / "replicas-values.yaml"))
    dep = r.deployment
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    pdb = r.get("PodDisruptionBudget", RELEASE)
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    for c in spread:
        assert c["labelSelector"]["matchLabels"] == selector
        assert c["whenUnsatisfiable"] == "ScheduleAnyway"


def test_no_pdb_for_a_single_replica(render: Any) -> None:
    assert not render(managed(replicaCount=1)).all("PodDisruptionBudget")
    assert not render(managed(podDisruptionBudget={"enabled": False})).all("PodDisruptionBudget")
    assert render(managed(replicaCount=2)).all("PodDisruptionBudget")


def test_custom_topology_spread_replaces_the_default(render: Any) -> None:
    custom = [
        {
            "maxSkew": 2,
            "topologyKey": "rack",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"a": "b"}},
        }
    ]
    spec = render(managed(topologySpreadConstraints=custom)).deployment["spec"]["template"]["spec"]
    assert spec["topologySpreadConstraints"] == custom
    spec = render(managed(topologySpread={"enabled": False})).deployment["spec"]["template"]["spec"]
    assert "topologySpreadConstraints" not in spec


# --- NetworkPolicy: both documented key shapes -------------------------------------------------------


def test_default_network_policy_denies_ingress_only(render: Any) -> None:
    r = render(managed())
    np = r.get("NetworkPolicy", RELEASE)
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert np["spec"]["ingress"] == []
    assert "egress" not in np["spec"]
    assert np["spec"]["podSelector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]


def test_egress_policy_deploy_guide_shape(render: Any) -> None:
    np = render(load_values(CHART / "ci" / "networkpolicy-values.yaml")).get("NetworkPolicy", RELEASE)
    spec = np["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"][0]["ports"] == [{"port": 9090, "protocol": "TCP"}]
    edge = spec["egress"][0]
    assert [p["ipBlock"]["cidr"] for p in edge["to"]] == ["198.41.192.0/19", "2606:4700:a0::/44"]
    assert edge["ports"] == [{"port": 7844, "protocol": "TCP"}, {"port": 7844, "protocol": "UDP"}]
    dns = spec["egress"][1]
    assert {p["port"] for p in dns["ports"]} == {53}
    servers = spec["egress"][2:]
    assert servers[0] == {"to": [{"ipBlock": {"cidr": "10.0.12.0/24"}}]}
    assert servers[1]["to"] == [{"ipBlock": {"cidr": "10.1.0.0/16", "except": ["10.1.255.0/24"]}}]
    assert servers[1]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert servers[2]["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mcp-servers"}},
            "podSelector": {"matchLabels": {"app": "docs-mcp"}},
        }
    ]


def test_network_policy_claude_ai_shape(render: Any) -> None:
    np = render(load_values(CHART / "ci" / "networkpolicy-claudeai-values.yaml")).get(
        "NetworkPolicy", RELEASE
    )
    spec = np["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]  # enabled: true turns both on
    # "The policy already allows cloudflared to reach the tunnel edge"
    assert spec["egress"][0]["ports"][0]["port"] == 7844
    assert spec["egress"][-1] == {"to": [{"podSelector": {"matchLabels": {"app": "docs-mcp"}}}]}


def test_network_policy_enabled_false_removes_it(render: Any) -> None:
    assert not render(managed(networkPolicy={"enabled": False})).all("NetworkPolicy")
    assert not render(managed(networkPolicy={"ingress": {"enabled": False}})).all("NetworkPolicy")


def test_both_shapes_merge_their_server_lists(render: Any) -> None:
    values = managed(
        networkPolicy={
            "egress": {"enabled": True, "mcpServers": ["10.0.0.0/24"]},
            "mcpServers": ["10.9.0.0/24"],
        }
    )
    egress = render(values).get("NetworkPolicy", RELEASE)["spec"]["egress"]
    cidrs = [rule["to"][0].get("ipBlock", {}).get("cidr") for rule in egress[2:]]
    assert cidrs == ["10.0.0.0/24", "10.9.0.0/24"]


# --- values.schema.json ------------------------------------------------------------------------------

SCHEMA = json.loads((CHART / "values.schema.json").read_text())

OAUTH: dict[str, Any] = {
    "authorization_server": "auth",
    "authorization_endpoint": "https://login.example.com/authorize",
    "protected_resources": ["docs"],
}

MCP: dict[str, Any] = {"audit": True, "routes": {"docs": {"deny_tools": ["delete_*", "close_*"]}}}

BAD_VALUES: dict[str, dict[str, Any]] = {
    "unknown top-level key": managed(replicas=2),
    "typo in a nested key": managed(setup={"enable": True}),
    "typo in a proxy field": managed(gateway={"config": {"tunnel_domian": "x.example"}}),
    "replicaCount as a string": managed(replicaCount="2"),
    "routes as a list": managed(gateway={"config": {"routes": [{"docs": "http://docs:8080"}]}}),
    "route upstream with a path": managed(gateway={"config": {"routes": {"docs": "http://docs:8080/mcp"}}}),
    "route upstream without a port": managed(gateway={"config": {"routes": {"docs": "http://docs"}}}),
    "no routes": {"api": {"wif": dict(WIF)}, "gateway": {"config": {"routes": {}}}},
    "bad log level": managed(gateway={"config": {"log_level": "verbose"}}),
    "shutdown_timeout not a duration": managed(gateway={"config": {"shutdown_timeout": "30 seconds"}}),
    "allowed_ips with IPv6": managed(gateway={"config": {"upstream": {"allowed_ips": ["fd00::/8"]}}}),
    "allowed_ips and disable_ip_validation": managed(
        gateway={"config": {"upstream": {"allowed_ips": ["10.0.0.0/8"], "disable_ip_validation": True}}}
    ),
    "setup.enabled as a string": managed(setup={"enabled": "false"}),
    "networkPolicy.enabled as a string": managed(networkPolicy={"enabled": "yes"}),
    "mcpServers entry mixing cidr and selector": managed(
        networkPolicy={"mcpServers": [{"cidr": "10.0.0.0/8", "podSelector": {"matchLabels": {"a": "b"}}}]}
    ),
    "chart 1.x api.wif.tunnelId": managed(api={"wif": {"tunnelId": "tnl_1"}}),
    "tunnel id without tnl_": managed(tunnel={"id": "1234"}),
    "image digest not sha256": managed(image={"digest": "latest"}),
    "external mode without tunnel_domain": merge(external(), {"gateway": {"config": {"tunnel_domain": ""}}}),
    "managed mode without credentials": merge(managed(), {"api": {"wif": {"federationRuleId": ""}}}),
    "renewBefore in days": managed(serverCert={"renewBefore": "30d"}),
    "admin port out of range": managed(admin={"port": 70000}),
    "unknown limit": managed(gateway={"config": {"limits": {"max_conections": 10}}}),
    "limit with a wrong type": managed(gateway={"config": {"limits": {"max_connections": "10"}}}),
    "oauth with an unknown key": managed(gateway={"config": {"oauth": dict(OAUTH, issuer="https://x")}}),
    "oauth authorization_endpoint over http": managed(
        gateway={
            "config": {"oauth": dict(OAUTH, authorization_endpoint="http://login.example.com/authorize")}
        }
    ),
    "oauth protected_resources not a list": managed(
        gateway={"config": {"oauth": dict(OAUTH, protected_resources="docs")}}
    ),
    "mcp route with allow_tools and deny_tools": managed(
        gateway={"config": {"mcp": {"routes": {"docs": {"allow_tools": ["a"], "deny_tools": ["b"]}}}}}
    ),
    "mcp empty pattern": managed(gateway={"config": {"mcp": {"routes": {"docs": {"deny_tools": [""]}}}}}),
    "mcp audit as a string": managed(gateway={"config": {"mcp": {"audit": "yes"}}}),
    "mcp unknown key": managed(gateway={"config": {"mcp": {"audit": True, "log_args": True}}}),
}

GOOD_VALUES: dict[str, dict[str, Any]] = {
    **{p.name: load_values(p) for p in CI_VALUES},
    "token version as an integer": managed(tunnel={"tokenVersion": 3}),
    "official listen/tls fields are accepted (and ignored)": managed(
        gateway={
            "config": {
                "listen_addr": ":8080",
                "tls": {"cert_file": "/data/tls.crt", "key_file": "/data/tls.key"},
            }
        }
    ),
    "pdb as a percentage": managed(podDisruptionBudget={"minAvailable": "50%"}),
    "durations the proxy accepts": managed(
        gateway={"config": {"shutdown_timeout": "1.5s", "tls": {"reload_interval": "500ms"}}},
        serverCert={"renewBefore": "720h", "duration": "2160h0m0s"},
    ),
    "mcp audit and tool policy": managed(gateway={"config": {"mcp": dict(MCP)}}),
    "oauth through the tunnel": managed(
        gateway={"config": {"routes": {**ROUTES, "auth": "http://keycloak:8080"}, "oauth": dict(OAUTH)}}
    ),
    "limits with Go durations": managed(
        gateway={
            "config": {
                "limits": {"handshake_timeout": "1.5s", "idle_timeout": "500ms", "max_connections": 64}
            }
        }
    ),
}


@pytest.mark.parametrize("name", sorted(GOOD_VALUES))
def test_schema_accepts_good_values(chart: Any, name: str) -> None:
    merged = chart.merge_values(GOOD_VALUES[name])  # what Helm validates: defaults + overrides
    errors = [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(merged)]
    assert errors == []
    chart.validate_schema(GOOD_VALUES[name])  # and Helm's own validator agrees


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_schema_rejects_bad_values(chart: Any, helm: ModuleType, name: str) -> None:
    merged = chart.merge_values(BAD_VALUES[name])
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(merged)), f"jsonschema accepted: {name}"
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(BAD_VALUES[name])


def test_schema_is_a_valid_draft7_schema_and_strict_everywhere() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(SCHEMA, "")


def test_defaults_carry_every_documented_key(chart: Any) -> None:
    values = chart.values
    documented = [
        "gateway.config",
        "gateway.config.routes",
        "gateway.config.log_level",
        "gateway.config.tunnel_domain",
        "setup.enabled",
        "setup.force",
        "setup.extraVolumes",
        "setup.extraVolumeMounts",
        "tunnel.id",
        "tunnel.tokenVersion",
        "api.token",
        "api.wif.federationRuleId",
        "api.wif.organizationId",
        "api.wif.workspaceId",
        "api.wif.audience",
        "api.wif.tokenFile",
        "external.tunnelTokenSecretName",
        "external.serverCertSecretName",
        "serverCert.cronSchedule",
        "serverCert.renewBefore",
        "networkPolicy.enabled",
        "networkPolicy.mcpServers",
        "networkPolicy.ingress.enabled",
        "networkPolicy.egress.enabled",
        "networkPolicy.egress.mcpServers",
        "networkPolicy.egress.cloudflaredEgressCIDRs",
        "replicaCount",
    ]
    for key in documented:
        node: Any = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"values.yaml lacks {key}"
            node = node[part]
    assert values["setup"]["enabled"] is True and values["setup"]["force"] is False
    assert values["tunnel"] == {"id": "", "tokenVersion": "1"}
    assert values["api"]["wif"]["audience"] == "api.anthropic.com"
    assert values["serverCert"]["cronSchedule"] == "0 0 * * *"
    assert values["serverCert"]["renewBefore"] == "720h"
    assert values["networkPolicy"]["ingress"]["enabled"] is True
    assert values["networkPolicy"]["egress"]["enabled"] is False
    assert values["external"] == {
        "tunnelTokenSecretName": "mcp-tunnel-token",
        "serverCertSecretName": "mcp-tunnel-cert",
    }


# --- durations: the schema accepts exactly what the proxy accepts ------------------------------------

DURATIONS = (
    *("30s", "1m30s", "1.5s", "500ms", ".5s", "5.s", "1h2m3.5s", "2160h", "720h", "+30s", "1us"),
    *("1\u00b5s", "1\u03bcs", "10ns", "0.5m", "1h0m0s", "0s1ms", "007s", "1.000000001s", "0.000001ms"),
    *("0", "0s", "0.0s", "00m", "+0", ".0h", "0s0ms"),  # zero: shutdown_timeout only
    *("-1s", "-0s", "-0", "30d", "30", "", "1 s", "s", ".s", "1.2.3s", "1hm", "1sm", "1S", "1h 30m"),
    *(" 30s", "30s ", "1e3s", "0x10s", "\u0661s", "1\u0661s", "++1s", "+-1s", "1.5", "h1", "1..5s"),
)
# Where no regular expression can follow the parser, by design (docs/deployment.md): a duration
# whose every part is below one nanosecond is zero to the proxy, and a total beyond Go's int64
# of nanoseconds (~292 years) overflows. The schema accepts both; the proxy then refuses them.
KNOWN_DIFFERENCES = ("0.1ns", "0.0001us", "3000000h")


def _schema_at(*path: str) -> dict[str, Any]:
    node: Any = SCHEMA
    for key in path:
        node = node["properties"][key]
    assert isinstance(node, dict)
    return node


def _proxy_accepts(tmp_path: Path, field: str, text: str) -> bool:
    """What the proxy's own loader (and so `mcp-proxy -check`) decides for this value."""
    from mcp_tunnel.config import load_config
    from mcp_tunnel.errors import ConfigError

    (tmp_path / "tls.crt").write_text("")
    (tmp_path / "tls.key").write_text("")
    value = json.dumps(text, ensure_ascii=False)  # a YAML double-quoted string
    body = (
        f"shutdown_timeout: {value}\n" if field == "shutdown_timeout" else f"limits: {{{field}: {value}}}\n"
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        f"listen_addr: ':8080'\ntls: {{cert_file: {tmp_path}/tls.crt, key_file: {tmp_path}/tls.key}}\n"
        f"routes: {{echo: 'http://10.0.0.1:80'}}\n{body}",
        encoding="utf-8",
    )
    try:
        load_config(str(path), environ={})
    except ConfigError:
        return False
    return True


def _setup_accepts(text: str, *, allow_zero: bool) -> bool:
    from mcp_tunnel.errors import UsageError
    from mcp_tunnel.setup.cli import _duration

    if text != text.strip():
        return False  # setup strips its flag; the chart passes the value as is (schema: no spaces)
    try:
        _duration("x", text, allow_zero=allow_zero)
    except UsageError:
        return False
    return True


@pytest.mark.parametrize(
    ("where", "field", "allow_zero"),
    [
        (("gateway", "config", "shutdown_timeout"), "shutdown_timeout", True),
        (("gateway", "config", "limits", "idle_timeout"), "idle_timeout", False),
        (("gateway", "config", "limits", "dns_timeout"), "dns_timeout", False),
    ],
)
def test_schema_durations_are_the_proxys(
    tmp_path: Path, where: tuple[str, ...], field: str, allow_zero: bool
) -> None:
    validator = jsonschema.Draft7Validator(_schema_at(*where))
    for text in DURATIONS:
        proxy = _proxy_accepts(tmp_path, field, text)
        assert validator.is_valid(text) == proxy, f"{text!r}: proxy {'accepts' if proxy else 'refuses'} it"
    for text in KNOWN_DIFFERENCES if not allow_zero else KNOWN_DIFFERENCES[-1:]:  # zero is fine there
        assert validator.is_valid(text) and not _proxy_accepts(tmp_path, field, text), text
    assert any(_proxy_accepts(tmp_path, field, t) for t in DURATIONS)  # the list has both kinds
    assert not all(_proxy_accepts(tmp_path, field, t) for t in DURATIONS)


@pytest.mark.parametrize(("key", "allow_zero"), [("renewBefore", True), ("duration", False)])
def test_schema_durations_are_setups(key: str, allow_zero: bool) -> None:
    validator = jsonschema.Draft7Validator(_schema_at("serverCert", key))
    for text in DURATIONS:
        assert validator.is_valid(text) == _setup_accepts(text, allow_zero=allow_zero), text


def test_every_duration_field_uses_one_of_the_two_patterns() -> None:
    cfg = ("gateway", "config")
    limits = _schema_at(*cfg, "limits")["properties"]
    fields = [_schema_at(*cfg, "shutdown_timeout"), _schema_at(*cfg, "tls")["properties"]["reload_interval"]]
    fields += [v for v in limits.values() if v.get("type") == "string"]
    fields += [_schema_at("serverCert", "renewBefore"), _schema_at("serverCert", "duration")]
    patterns = {f["anyOf"][0]["pattern"] for f in fields}
    assert len(fields) == 14 and len(patterns) == 2


def test_a_days_duration_gets_a_helpful_message(chart: Any, helm: ModuleType) -> None:
    with pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(managed(serverCert={"renewBefore": "30d"}))
    assert "no d: 30 days = 720h" in str(info.value)
    hint = _schema_at("serverCert", "renewBefore")["anyOf"][1]["const"]
    with pytest.raises(helm.HelmValuesError):  # the hint itself is never a valid value
        chart.validate_schema(managed(serverCert={"renewBefore": hint}))


def test_oauth_section_reaches_the_proxy_config_and_loads(render: Any, tmp_path: Path) -> None:
    """The chart passes oauth: through unchanged, and the proxy accepts what it renders."""
    from mcp_tunnel.config import load_config

    routes = {**ROUTES, "auth": "http://keycloak:8080"}
    cfg = render(managed(gateway={"config": {"routes": routes, "oauth": dict(OAUTH)}})).proxy_config
    assert cfg["oauth"] == OAUTH
    (tmp_path / "tls.crt").write_text("x")
    (tmp_path / "tls.key").write_text("x")
    cfg["tls"] = {"cert_file": str(tmp_path / "tls.crt"), "key_file": str(tmp_path / "tls.key")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = load_config(str(path), tunnel_domain="abcd1234.tunnel.anthropic.com")
    assert loaded.oauth is not None and loaded.oauth.protected_resources == ("docs",)


def test_mcp_section_reaches_the_proxy_config_and_loads(render: Any, tmp_path: Path) -> None:
    """The chart passes mcp: through unchanged, and the proxy accepts what it renders."""
    from mcp_tunnel.config import load_config

    cfg = render(managed(gateway={"config": {"mcp": dict(MCP)}})).proxy_config
    assert cfg["mcp"] == MCP
    (tmp_path / "tls.crt").write_text("x")
    (tmp_path / "tls.key").write_text("x")
    cfg["tls"] = {"cert_file": str(tmp_path / "tls.crt"), "key_file": str(tmp_path / "tls.key")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = load_config(str(path), tunnel_domain="abcd1234.tunnel.anthropic.com")
    assert loaded.mcp is not None and loaded.mcp.audit
    assert loaded.mcp.routes["docs"].deny == ("delete_*", "close_*")
