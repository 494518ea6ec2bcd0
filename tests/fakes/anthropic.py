"""A fake of Anthropic's API as the setup component uses it (digest §5, §7), on loopback.

Follows the documented surface: `POST /v1/oauth/token` (RFC 7523 jwt-bearer, JWT verified
against the issuer's JWKS: signature, iss, aud, sub prefix, exp/iat with 30 s leeway), and
`/v1/tunnels` (create, list with cursor pagination and include_archived, get, archive,
reveal_token, rotate_token, certificates create/list/get/archive) with the BetaTunnel*,
objects, the standard error shape, the 10-tunnel and 2-certificate caps and CA PEM validation.

Behaviour the docs leave open is chosen here and named: the tunnel cap answers 400 with the
documented claude.ai message; the certificate cap answers 409; operations on an archived tunnel
answer 409.

Fault injection: `fault(method, path_regex, kind, times=..)` with kind "429" / "500" / "503"
(an error answer before acting), "drop_before" (hang up without acting), "drop_after" (act,
then hang up: the lost-response case).
"""

from __future__ import annotations

import base64
import itertools
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from tests.fakes.httpserver import Drop, Reply, Request, ServerThread

ANTHROPIC_VERSION = "2023-06-01"
TUNNELS_BETA = "mcp-tunnels-2026-06-22"
TUNNELS_SCOPE = "workspace:manage_tunnels"
MAX_TUNNELS = 10
MAX_CERTS = 2
ASYMMETRIC = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Rule:
    id: str
    issuer: str
    audience: str
    subject_prefix: str
    organization_id: str
    workspaces: list[str]
    scope: str = TUNNELS_SCOPE
    service_account_member: bool = True  # of the workspaces' tunnels
    token_lifetime: int = 3600


@dataclass
class Principal:
    organization_id: str
    workspace_id: str
    scope: str
    member: bool


@dataclass
class Cert:
    id: str
    tunnel_id: str
    fingerprint: str
    expires_at: str | None
    created_at: str
    archived_at: str | None = None

    def json(self) -> dict[str, Any]:
        return {"type": "tunnel_certificate", **self.__dict__}


@dataclass
class Tunnel:
    id: str
    domain: str
    display_name: str | None
    created_at: str
    organization_id: str
    workspace_id: str
    archived_at: str | None = None
    token_id: str = ""
    token: str = ""
    certs: list[Cert] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "type": "tunnel",
            "id": self.id,
            "domain": self.domain,
            "display_name": self.display_name,
            "created_at": self.created_at,
            "archived_at": self.archived_at,
        }


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    kind: str
    times: int
    retry_after: str | None = None


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    rid = "req_" + secrets.token_hex(8)
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": rid}
    return Reply(status, body, {"request-id": rid, **(headers or {})})


class FakeAnthropic:
    def __init__(self) -> None:
        self.rules: dict[str, Rule] = {}
        self.api_keys: dict[str, Principal] = {}
        self.access_tokens: dict[str, Principal] = {}
        self.tunnels: dict[str, Tunnel] = {}
        self.calls: list[tuple[str, str]] = []  # every request, faulted or not
        self.exchange_requests: list[Request] = []
        self.tunnel_requests: list[Request] = []
        self.faults: list[Fault] = []
        self._lock = threading.RLock()
        self._seq = itertools.count(1)
        self._server = ServerThread(self)
        self.url = self._server.url()

    # -- configuration ----------------------------------------------------------------

    def add_rule(self, rule: Rule) -> Rule:
        self.rules[rule.id] = rule
        return rule

    def add_api_key(self, key: str, organization_id: str = "org-1", workspace_id: str = "default") -> None:
        self.api_keys[key] = Principal(organization_id, workspace_id, TUNNELS_SCOPE, True)

    def fault(
        self, method: str, path: str, kind: str, *, times: int = 1, retry_after: str | None = None
    ) -> None:
        self.faults.append(Fault(method, re.compile(path), kind, times, retry_after))

    def add_tunnel(
        self, organization_id: str = "org-1", workspace_id: str = "default", name: str | None = None
    ) -> Tunnel:
        with self._lock:
            return self._new_tunnel(organization_id, workspace_id, name)

    def writes(self) -> list[tuple[str, str]]:
        """State-changing calls: everything but reads, exchanges and reveal_token."""
        return [
            (m, p)
            for m, p in self.calls
            if m != "GET" and p != "/v1/oauth/token" and not p.endswith("/reveal_token")
        ]

    def close(self) -> None:
        self._server.close()

    # -- dispatch -----------------------------------------------------------------------

    def handle(self, request: Request) -> Reply | Drop:
        with self._lock:
            self.calls.append((request.method, request.path))
            fault = self._take_fault(request)
            if fault is not None and fault.kind != "drop_after":
                if fault.kind == "drop_before":
                    return Drop()
                status = int(fault.kind)
                kind = {429: "rate_limit_error", 529: "overloaded_error", 503: "overloaded_error"}.get(
                    status, "api_error"
                )
                headers = {"retry-after": fault.retry_after} if fault.retry_after else {}
                return _error(status, kind, "injected fault", headers)
            if request.path == "/v1/oauth/token" and request.method == "POST":
                self.exchange_requests.append(request)
                reply = self._exchange(request)
            elif request.path.startswith("/v1/tunnels"):
                self.tunnel_requests.append(request)
                reply = self._tunnels(request)
            else:
                reply = _error(404, "not_found_error", f"Not found: {request.path}")
            if fault is not None:  # drop_after: acted, but the answer is lost
                return Drop()
            return reply

    def _take_fault(self, request: Request) -> Fault | None:
        for f in self.faults:
            if f.times > 0 and f.method == request.method and f.path.fullmatch(request.path):
                f.times -= 1
                return f
        return None

    # -- WIF exchange (WIFR) --------------------------------------------------------------

    def _exchange(self, request: Request) -> Reply:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return _error(400, "invalid_request_error", "content-type must be application/json")
        try:
            body = request.json()
        except ValueError:
            return _error(400, "invalid_request_error", "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "body must be an object")
        if body.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _error(400, "invalid_request_error", "unsupported grant_type")
        for name in ("assertion", "federation_rule_id", "organization_id"):
            if not isinstance(body.get(name), str) or not body[name]:
                return _error(400, "invalid_request_error", f"{name}: field required")
        if not body["federation_rule_id"].startswith("fdrl_"):
            return _error(400, "invalid_request_error", "federation_rule_id: malformed")
        ws = body.get("workspace_id")
        if ws is not None and not (ws == "default" or str(ws).startswith("wrkspc_")):
            return _error(400, "invalid_request_error", "workspace_id: must be wrkspc_... or default")
        if len(body["assertion"].encode()) > 16 * 1024:
            return _error(400, "invalid_request_error", "assertion too large")
        denied = _error(401, "authentication_error", "Authentication failed")
        rule = self.rules.get(body["federation_rule_id"])
        if rule is None or rule.organization_id != body["organization_id"]:
            return denied
        try:
            header = jwt.get_unverified_header(body["assertion"])
            if header.get("alg") not in ASYMMETRIC or not header.get("kid"):
                return denied
            keys = jwt.PyJWKClient(rule.issuer.rstrip("/") + "/jwks", cache_keys=False)
            key = keys.get_signing_key_from_jwt(body["assertion"])
            claims = jwt.decode(
                body["assertion"],
                key.key,
                algorithms=ASYMMETRIC,
                audience=rule.audience,
                issuer=rule.issuer,
                leeway=30,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.PyJWTError:
            return denied
        if not str(claims["sub"]).startswith(rule.subject_prefix):
            return denied
        if ws is None:
            if len(rule.workspaces) != 1:
                return denied  # workspace_id_required
            ws = rule.workspaces[0]
        elif ws not in rule.workspaces:
            return denied
        token = "sk-ant-oat01-" + secrets.token_urlsafe(24)
        self.access_tokens[token] = Principal(
            rule.organization_id, ws, rule.scope, rule.service_account_member
        )
        return Reply(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": rule.token_lifetime,
                "scope": rule.scope,
            },
        )

    # -- Tunnels API ----------------------------------------------------------------------

    def _principal(self, request: Request) -> Principal | Reply:
        auth = request.headers.get("authorization", "")
        if request.headers.get("x-api-key"):
            return _error(401, "authentication_error", "Admin API keys are not accepted")
        if not auth.startswith("Bearer "):
            return _error(401, "authentication_error", "missing bearer token")
        token = auth[len("Bearer ") :]
        principal = self.access_tokens.get(token) or self.api_keys.get(token)
        if principal is None:
            return _error(401, "authentication_error", "invalid bearer token")
        if request.headers.get("anthropic-version") != ANTHROPIC_VERSION:
            return _error(400, "invalid_request_error", "anthropic-version header required")
        betas = [b.strip() for b in request.headers.get("anthropic-beta", "").split(",")]
        if TUNNELS_BETA not in betas:
            return _error(
                400, "invalid_request_error", f"this endpoint requires anthropic-beta: {TUNNELS_BETA}"
            )
        if TUNNELS_SCOPE not in principal.scope.split():
            return _error(403, "permission_error", "The token's scope does not allow this operation")
        if not principal.member:
            return _error(403, "permission_error", "The service account is not a member of this workspace")
        return principal

    def _visible(self, p: Principal, tunnel_id: str) -> Tunnel | None:
        t = self.tunnels.get(tunnel_id)
        if t is None or t.organization_id != p.organization_id or t.workspace_id != p.workspace_id:
            return None
        return t

    def _new_tunnel(self, org: str, ws: str, name: str | None) -> Tunnel:
        n = next(self._seq)
        t = Tunnel(
            id=f"tnl_{n:04d}{secrets.token_hex(6)}",
            domain=f"{secrets.token_hex(4)}.tunnel.anthropic.com",
            display_name=name,
            created_at=_now(),
            organization_id=org,
            workspace_id=ws,
        )
        self._new_token(t)
        self.tunnels[t.id] = t
        return t

    def _new_token(self, t: Tunnel) -> None:
        t.token_id = "ttok_" + secrets.token_hex(6)
        t.token = "eyJ" + secrets.token_urlsafe(40)

    def _tunnels(self, request: Request) -> Reply:
        p = self._principal(request)
        if isinstance(p, Reply):
            return p
        parts = request.path.strip("/").split("/")[2:]  # after v1/tunnels
        m = request.method
        if not parts:
            if m == "POST":
                return self._create(p, request)
            if m == "GET":
                live = [t for t in self.tunnels.values() if self._visible(p, t.id)]
                return self._page([t.json() for t in reversed(live) if self._listed(t, request)], request)
        t = self._visible(p, parts[0])
        if t is None:
            return _error(404, "not_found_error", f"Tunnel {parts[0]} not found")
        rest = parts[1:]
        if not rest and m == "GET":
            return Reply(200, t.json())
        if rest == ["archive"] and m == "POST":
            if t.archived_at is None:
                t.archived_at = _now()
                for c in t.certs:
                    c.archived_at = c.archived_at or t.archived_at
                self._new_token(t)
            return Reply(200, t.json())
        if t.archived_at is not None and m == "POST":
            return _error(409, "invalid_request_error", f"Tunnel {t.id} is archived")
        if rest == ["reveal_token"] and m == "POST":
            return Reply(200, {"type": "tunnel_token", "id": t.token_id, "tunnel_token": t.token})
        if rest == ["rotate_token"] and m == "POST":
            body = request.json() or {}
            reason = body.get("reason")
            if reason is not None and (not isinstance(reason, str) or len(reason) > 1024):
                return _error(400, "invalid_request_error", "reason: at most 1024 characters")
            self._new_token(t)
            return Reply(200, {"type": "tunnel_token", "id": t.token_id, "tunnel_token": t.token})
        if rest and rest[0] == "certificates":
            return self._certs(t, rest[1:], request)
        return _error(404, "not_found_error", f"Not found: {request.path}")

    def _listed(self, t: Tunnel, request: Request) -> bool:
        return t.archived_at is None or request.query.get("include_archived") == "true"

    def _page(self, items: list[dict[str, Any]], request: Request) -> Reply:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return _error(400, "invalid_request_error", "limit: must be an integer")
        if not 1 <= limit <= 1000:
            return _error(400, "invalid_request_error", "limit: must be between 1 and 1000")
        page = request.query.get("page")
        start = int(base64.urlsafe_b64decode(page.encode()).decode()) if page else 0
        chunk = items[start : start + limit]
        nxt = (
            base64.urlsafe_b64encode(str(start + limit).encode()).decode()
            if start + limit < len(items)
            else None
        )
        return Reply(200, {"data": chunk, "next_page": nxt})

    def _create(self, p: Principal, request: Request) -> Reply:
        body = request.json() or {}
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "body must be an object")
        name = body.get("display_name")
        if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= 255):
            return _error(400, "invalid_request_error", "display_name: 1-255 characters")
        live = [
            t for t in self.tunnels.values() if t.organization_id == p.organization_id and not t.archived_at
        ]
        if len(live) >= MAX_TUNNELS:
            return _error(
                400,
                "invalid_request_error",
                "Organization already has the maximum of 10 non-archived Tunnels",
            )
        return Reply(200, self._new_tunnel(p.organization_id, p.workspace_id, name).json())

    def _certs(self, t: Tunnel, rest: list[str], request: Request) -> Reply:
        m = request.method
        if not rest and m == "GET":
            items = [c.json() for c in sorted(t.certs, key=lambda c: c.created_at, reverse=True)]
            items = [
                i
                for i in items
                if i["archived_at"] is None or request.query.get("include_archived") == "true"
            ]
            return self._page(items, request)
        if not rest and m == "POST":
            body = request.json() or {}
            pem = body.get("ca_certificate_pem") if isinstance(body, dict) else None
            problem = validate_ca_pem(pem)
            if problem:
                return _error(400, "invalid_request_error", f"ca_certificate_pem: {problem}")
            if sum(1 for c in t.certs if c.archived_at is None) >= MAX_CERTS:
                return _error(
                    409, "invalid_request_error", "Tunnel already has the maximum of 2 active certificates"
                )
            assert isinstance(pem, str)
            cert = x509.load_pem_x509_certificate(pem.encode())
            c = Cert(
                id="tcrt_" + secrets.token_hex(8),
                tunnel_id=t.id,
                fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
                expires_at=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                created_at=_now(),
            )
            t.certs.append(c)
            return Reply(200, c.json())
        c = next((c for c in t.certs if c.id == rest[0]), None)
        if c is None:
            return _error(404, "not_found_error", f"Certificate {rest[0]} not found")
        if len(rest) == 1 and m == "GET":
            return Reply(200, c.json())
        if rest[1:] == ["archive"] and m == "POST":
            c.archived_at = c.archived_at or _now()
            return Reply(200, c.json())
        return _error(404, "not_found_error", f"Not found: {request.path}")


def validate_ca_pem(pem: Any) -> str | None:
    """The documented CA requirements (digest §4.1); None when acceptable."""
    if not isinstance(pem, str) or not pem:
        return "field required"
    if len(pem) > 8192:
        return "must be at most 8192 characters"
    if "PRIVATE KEY" in pem:
        return "must not contain private key material"
    if pem.count("-----BEGIN CERTIFICATE-----") != 1 or pem.count("-----BEGIN ") != 1:
        return "must contain exactly one certificate"
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return "not a valid PEM certificate"
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return "basicConstraints missing"
    if not (bc.value.ca and bc.critical):
        return "basicConstraints must be critical with CA:TRUE"
    try:
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        return "subjectKeyIdentifier and keyUsage are required"
    if not ku.value.key_cert_sign:
        return "keyUsage must include keyCertSign"
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return "certificate is not within its validity period"
    return None
