"""A fake Kubernetes API for Secrets, over HTTPS with a test CA and a real bearer-token check.

`FakeKubernetes(tmp_path)` also writes the service-account mount (token, ca.crt, namespace) as a
pod would see it; `environ()` gives the variables an in-cluster client reads.
Implements GET/POST/PUT of `/api/v1/namespaces/{ns}/secrets[/{name}]` with resourceVersion
optimistic concurrency (409 Conflict) and RBAC by verb (403 Forbidden).
"""

from __future__ import annotations

import base64
import binascii
import copy
import itertools
import secrets
import ssl
import threading
from pathlib import Path
from typing import Any

from tests.fakes.httpserver import Drop, Reply, Request, ServerThread

from mcp_tunnel.certs.generate import generate_ca, issue_server_cert, pem_cert, pem_key


def _status(code: int, reason: str, message: str) -> Reply:
    return Reply(
        code,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": reason,
            "message": message,
            "code": code,
        },
    )


class FakeKubernetes:
    def __init__(self, directory: Path, namespace: str = "mcp-tunnel") -> None:
        self.namespace = namespace
        self.token = "k8s-sa-" + secrets.token_urlsafe(24)
        self.allowed_verbs = {"get", "create", "update"}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self._rv = itertools.count(100)
        self._lock = threading.Lock()
        ca, ca_key = generate_ca(common_name="fake-kubernetes-ca")
        cert, key = issue_server_cert(ca, ca_key, "localhost", key_type="ecdsa-p256")
        self.sa_dir = directory / "serviceaccount"
        self.sa_dir.mkdir(parents=True)
        (self.sa_dir / "token").write_text(self.token)
        (self.sa_dir / "namespace").write_text(namespace)
        (self.sa_dir / "ca.crt").write_bytes(pem_cert(ca))
        (directory / "server.crt").write_bytes(pem_cert(cert))
        (directory / "server.key").write_bytes(pem_key(key))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(directory / "server.crt", directory / "server.key")
        self._server = ServerThread(self, ctx)

    def environ(self) -> dict[str, str]:
        return {
            "KUBERNETES_SERVICE_HOST": "localhost",
            "KUBERNETES_SERVICE_PORT": str(self._server.port),
            "MCP_TUNNEL_SERVICEACCOUNT_DIR": str(self.sa_dir),
        }

    def secret_data(self, name: str) -> dict[str, bytes]:
        obj = self.secrets[(self.namespace, name)]
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def put_secret(self, name: str, data: dict[str, bytes]) -> None:
        self.secrets[(self.namespace, name)] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "namespace": self.namespace, "resourceVersion": str(next(self._rv))},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }

    def close(self) -> None:
        self._server.close()

    def handle(self, request: Request) -> Reply | Drop:
        with self._lock:
            self.calls.append((request.method, request.path))
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return _status(401, "Unauthorized", "Unauthorized")
            parts = request.path.strip("/").split("/")
            if len(parts) < 5 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "secrets":
                return _status(
                    404, "NotFound", f"the server could not find the requested resource {request.path}"
                )
            ns = parts[3]
            name = parts[5] if len(parts) > 5 else None
            verb = {"GET": "get", "POST": "create", "PUT": "update"}.get(request.method, "other")
            if verb not in self.allowed_verbs or ns != self.namespace:
                return _status(
                    403, "Forbidden", f'secrets is forbidden: cannot {verb} resource "secrets" in "{ns}"'
                )
            if verb == "get" and name:
                obj = self.secrets.get((ns, name))
                if obj is None:
                    return _status(404, "NotFound", f'secrets "{name}" not found')
                return Reply(200, obj)
            body = request.json()
            problem = self._validate(body, ns)
            if problem:
                return _status(422, "Invalid", problem)
            if verb == "create" and name is None:
                key = (ns, body["metadata"]["name"])
                if key in self.secrets:
                    return _status(409, "AlreadyExists", f'secrets "{key[1]}" already exists')
                obj = copy.deepcopy(body)
                obj["metadata"]["resourceVersion"] = str(next(self._rv))
                self.secrets[key] = obj
                return Reply(201, obj)
            if verb == "update" and name:
                current = self.secrets.get((ns, name))
                if current is None:
                    return _status(404, "NotFound", f'secrets "{name}" not found')
                if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                    return _status(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes "
                        "to the latest version and try again",
                    )
                obj = copy.deepcopy(body)
                obj["metadata"]["resourceVersion"] = str(next(self._rv))
                self.secrets[(ns, name)] = obj
                return Reply(200, obj)
            return _status(405, "MethodNotAllowed", "method not allowed")

    def _validate(self, body: Any, ns: str) -> str | None:
        if (
            not isinstance(body, dict)
            or body.get("kind") != "Secret"
            or not isinstance(body.get("metadata"), dict)
        ):
            return "body must be a Secret"
        if body["metadata"].get("namespace", ns) != ns:
            return "namespace mismatch"
        for k, v in (body.get("data") or {}).items():
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                return f"data[{k}]: illegal base64 data"
        return None
