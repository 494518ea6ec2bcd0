"""A minimal in-cluster Kubernetes client: just enough to get, create and replace one Secret.

Credentials come from the standard service-account mount (token, ca.crt, namespace) and the
API address from KUBERNETES_SERVICE_HOST/PORT, as every in-cluster client does. The token is
re-read per request because projected tokens rotate. The mount directory can be moved with
MCP_TUNNEL_SERVICEACCOUNT_DIR (tests, and unusual sidecar layouts).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp_tunnel.setup.errors import APIError, NetworkError, SetupError
from mcp_tunnel.setup.retry import RETRYABLE_STATUSES, RetryPolicy
from mcp_tunnel.setup.transport import HTTPTransport, Response, Transport

DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_DIR_ENV = "MCP_TUNNEL_SERVICEACCOUNT_DIR"


def serviceaccount_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(SA_DIR_ENV) or DEFAULT_SA_DIR)


def running_in_pod(environ: Mapping[str, str]) -> bool:
    """The official default output applies "when running in a Kubernetes pod": we take that to
    mean the API address is in the environment and a service-account token is mounted."""
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and (serviceaccount_dir(environ) / "token").is_file()


@dataclass
class InClusterClient:
    base_url: str
    namespace: str
    token_path: Path
    transport: Transport
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str], *, retry: RetryPolicy | None = None
    ) -> InClusterClient:
        host = environ.get("KUBERNETES_SERVICE_HOST", "")
        port = environ.get("KUBERNETES_SERVICE_PORT", "") or "443"
        sa = serviceaccount_dir(environ)
        if not host:
            raise SetupError(
                "k8s-secret output needs the in-cluster API: KUBERNETES_SERVICE_HOST is not set "
                "(not in a pod?)"
            )
        try:
            namespace = (sa / "namespace").read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SetupError(
                f"cannot read the pod's namespace from {sa / 'namespace'}: {exc.strerror or exc}"
            ) from exc
        if not (sa / "token").is_file():
            raise SetupError(
                f"no service-account token at {sa / 'token'} (automountServiceAccountToken off?)"
            )
        try:
            ctx = ssl.create_default_context(cafile=str(sa / "ca.crt"))
        except (OSError, ssl.SSLError) as exc:
            raise SetupError(f"cannot load the cluster CA {sa / 'ca.crt'}: {exc}") from exc
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 service address
        transport = HTTPTransport(ssl_context=ctx, use_proxy_env=False)
        return cls(f"https://{host}:{port}", namespace, sa / "token", transport, retry or RetryPolicy())

    def _headers(self, has_body: bool) -> dict[str, str]:
        try:
            token = self.token_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SetupError(
                f"cannot read the service-account token {self.token_path}: {exc.strerror or exc}"
            ) from exc
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if has_body:
            headers["Content-Type"] = "application/json"
        return headers

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """One call; GETs are retried on transient failures, writes only when never sent
        (a replace carries resourceVersion, so a repeated one would report a false conflict)."""
        data = json.dumps(body).encode() if body is not None else None
        idempotent = method == "GET"
        attempt = 0
        while True:
            attempt += 1
            last = attempt >= self.retry.attempts
            headers = self._headers(data is not None)
            try:
                resp = self.transport.request(method, self.base_url + path, headers=headers, body=data)
            except NetworkError as exc:
                if (idempotent or not exc.sent) and not last:
                    self.retry.sleep(self.retry.delay(attempt))
                    continue
                raise
            if resp.status in RETRYABLE_STATUSES and (idempotent or resp.status == 429) and not last:
                self.retry.sleep(self.retry.delay(attempt))
                continue
            return resp.status, _json(resp)

    def error(self, method: str, path: str, status: int, doc: Any, secret_name: str) -> APIError:
        reason = message = ""
        if isinstance(doc, dict):
            reason = str(doc.get("reason") or "")
            message = str(doc.get("message") or "")
        cause = ""
        if status == 401:
            cause = "the pod's service-account token was rejected by the Kubernetes API"
        elif status == 403:
            cause = (
                "the pod's service account may not get/create/update Secrets in namespace "
                f"{self.namespace}: grant "
                f"it a Role with get, create and update on secrets (resourceNames: [{secret_name}] "
                "for get/update)"
            )
        elif status == 409:
            cause = f"Secret {secret_name} was changed by someone else during this run: re-run"
        return APIError(
            method=method, path=path, status=status, error_type=reason, message=message, cause=cause
        )


def _json(resp: Response) -> Any:
    try:
        return json.loads(resp.body) if resp.body else None
    except ValueError:
        return None
