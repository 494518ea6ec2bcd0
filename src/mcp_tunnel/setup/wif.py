"""Credentials for the Tunnels API: the WIF exchange, or a Tunnels API key (`API_TOKEN`).

The exchange follows WIFR (digest §7): `POST /v1/oauth/token`, a JSON RFC 7523 jwt-bearer grant,
the SDK's beta header. The identity token file is re-read on every exchange so a rotated
projected service-account token is always the one presented.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt

from mcp_tunnel import __version__, redact
from mcp_tunnel.setup.causes import exchange_cause
from mcp_tunnel.setup.errors import APIError, NetworkError, SetupError
from mcp_tunnel.setup.report import Reporter
from mcp_tunnel.setup.retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from mcp_tunnel.setup.transport import Response, Transport

TOKEN_PATH = "/v1/oauth/token"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
OAUTH_BETA = "oauth-2025-04-20,oidc-federation-2026-04-01"
USER_AGENT = f"mcp-tunnel-setup/{__version__}"
MAX_ASSERTION_BYTES = 16 * 1024
REFRESH_MARGIN = 60.0  # re-exchange this long before the access token expires


class BearerSource(Protocol):
    kind: str  # "wif" or "api_token": picks the documented likely cause of a 401/403

    def bearer(self) -> str: ...

    def invalidate(self) -> bool:
        """Drop a cached token; True if a fresh one can be obtained (worth one retry)."""
        ...


@dataclass
class StaticBearer:
    """A Tunnels API key (claude.ai) used directly as the bearer; no exchange."""

    token: str = field(repr=False)
    kind: str = "api_token"

    def bearer(self) -> str:
        return self.token

    def invalidate(self) -> bool:
        return False


def parse_error_body(resp: Response) -> tuple[str, str, str]:
    """(error type, message, request id) from the standard API error shape, tolerating others."""
    error_type = message = ""
    request_id = resp.header("request-id") or resp.header("x-request-id")
    try:
        doc = json.loads(resp.body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            error_type = str(err.get("type") or "")
            message = str(err.get("message") or "")
        elif isinstance(err, str):  # plain OAuth shape: {"error": "invalid_grant", ...}
            error_type = err
            message = str(doc.get("error_description") or "")
        request_id = str(doc.get("request_id") or request_id)
    if not message and not error_type:
        message = resp.body[:200].decode("utf-8", "replace")
    return error_type, message, request_id


@dataclass
class WIFExchange:
    """Exchanges the workload's OIDC JWT for a short-lived Anthropic access token."""

    api_url: str
    federation_rule_id: str
    organization_id: str
    transport: Transport
    reporter: Reporter
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    workspace_id: str | None = None
    service_account_id: str | None = None
    token_file: str | None = None
    token_literal: str | None = field(default=None, repr=False)
    clock: Callable[[], float] = time.time
    kind: str = "wif"
    _cached: str | None = field(default=None, repr=False)
    _expires_at: float = 0.0

    def bearer(self) -> str:
        if self._cached is None or self.clock() >= self._expires_at - REFRESH_MARGIN:
            self._cached, lifetime = self.exchange()
            self._expires_at = self.clock() + lifetime
        return self._cached

    def invalidate(self) -> bool:
        self._cached = None
        return True

    def identity_token(self) -> str:
        """The JWT to present: the file is read afresh each time (projected tokens rotate)."""
        if self.token_file is not None:
            try:
                raw = Path(self.token_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise SetupError(
                    f"cannot read ANTHROPIC_IDENTITY_TOKEN_FILE {self.token_file}: {exc.strerror or exc}"
                ) from exc
            source = f"ANTHROPIC_IDENTITY_TOKEN_FILE {self.token_file}"
        else:
            raw = self.token_literal or ""
            source = "ANTHROPIC_IDENTITY_TOKEN"
        self.reporter.secret(raw)
        token = raw.strip()
        if not token:
            raise SetupError(f"{source} is empty")
        problem = redact.credential_problem(token)
        if problem is not None:
            raise SetupError(f"{source} contains {problem}: a token is one line (the value is not shown)")
        if len(token.encode()) > MAX_ASSERTION_BYTES:
            raise SetupError(
                f"{source} holds {len(token.encode())} bytes; the exchange accepts at most 16 KiB"
            )
        return token

    def exchange(self) -> tuple[str, float]:
        assertion = self.identity_token()
        body: dict[str, str] = {
            "grant_type": GRANT_TYPE,
            "assertion": assertion,
            "federation_rule_id": self.federation_rule_id,
            "organization_id": self.organization_id,
        }
        if self.service_account_id:
            body["service_account_id"] = self.service_account_id
        if self.workspace_id:
            body["workspace_id"] = self.workspace_id
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-beta": OAUTH_BETA,
            "User-Agent": USER_AGENT,
        }
        data = json.dumps(body).encode()
        url = self.api_url + TOKEN_PATH
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self.transport.request("POST", url, headers=headers, body=data)
            except NetworkError as exc:
                # An exchange creates nothing, so a lost answer is safe to repeat.
                if attempt < self.retry.attempts:
                    self.reporter.warn(f"token exchange: {exc}; retrying")
                    self.retry.sleep(self.retry.delay(attempt))
                    continue
                raise
            if resp.status in RETRYABLE_STATUSES and attempt < self.retry.attempts:
                delay = self.retry.delay(attempt, parse_retry_after(resp.headers))
                self.reporter.warn(f"token exchange: HTTP {resp.status}; retrying in {delay:.1f}s")
                self.retry.sleep(delay)
                continue
            break
        if resp.status != 200:
            error_type, message, request_id = parse_error_body(resp)
            raise APIError(
                method="POST",
                path=TOKEN_PATH,
                status=resp.status,
                error_type=error_type,
                message=message,
                request_id=request_id,
                cause=exchange_cause(
                    resp.status,
                    error_type,
                    message,
                    claims=_unverified_claims(assertion),
                    workspace_id_set=bool(self.workspace_id),
                    now=self.clock(),
                ),
            )
        return self._parse_success(resp)

    def _parse_success(self, resp: Response) -> tuple[str, float]:
        try:
            doc = json.loads(resp.body)
        except ValueError as exc:
            raise SetupError(f"POST {TOKEN_PATH}: HTTP 200 with a body that is not JSON") from exc
        if not isinstance(doc, dict):
            raise SetupError(f"POST {TOKEN_PATH}: unexpected response shape")
        token = doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise SetupError(f"POST {TOKEN_PATH}: response has no access_token")
        self.reporter.secret(token)
        if redact.credential_problem(token) is not None:
            raise SetupError(f"POST {TOKEN_PATH}: the access_token holds whitespace or control characters")
        token_type = doc.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise SetupError(f"POST {TOKEN_PATH}: token_type {token_type!r} is not Bearer")
        expires_in = doc.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 3600.0
        scope = doc.get("scope")
        if isinstance(scope, str) and scope and "workspace:manage_tunnels" not in scope.split():
            self.reporter.warn(
                f"the exchanged token's scope is {scope!r}, without workspace:manage_tunnels: "
                "Tunnels API calls will likely be refused with 403"
            )
        return token, lifetime


def _unverified_claims(token: str) -> Mapping[str, Any] | None:
    """The JWT's claims for the error hint only (iss, aud, sub, exp are not secret)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None
