"""Client for the current Tunnels API (`/v1/tunnels`, beta `mcp-tunnels-2026-06-22`, digest §5).

Retry rules, per call:
- idempotent calls (GETs, `reveal_token`, archives) are retried on 429, 408, 5xx and network
  errors, with backoff + jitter and `retry-after` honoured;
- non-idempotent calls (`create`, certificate `create`, `rotate_token`) are retried only when
  the request certainly had no effect (429, or the connection failed before sending). Any
  ambiguous failure is surfaced as `AmbiguousResult`; the callers in this module then look at
  the API's state (tunnel by unique display name, certificate by fingerprint, token id) before
  deciding to try again. That is how a lost create answer never becomes a second tunnel.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mcp_tunnel.errors import AmbiguousResult as AmbiguousResult
from mcp_tunnel.setup.causes import tunnels_cause
from mcp_tunnel.setup.errors import APIError, NetworkError, SetupError
from mcp_tunnel.setup.report import Reporter
from mcp_tunnel.setup.retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from mcp_tunnel.setup.transport import Response, Transport
from mcp_tunnel.setup.wif import USER_AGENT, BearerSource, parse_error_body

ANTHROPIC_VERSION = "2023-06-01"
TUNNELS_BETA = "mcp-tunnels-2026-06-22"
PAGE_LIMIT = 100
MAX_PAGES = 1000


@dataclass(frozen=True)
class Tunnel:
    id: str
    domain: str
    display_name: str | None
    created_at: str
    archived_at: str | None

    @classmethod
    def from_json(cls, doc: Any) -> Tunnel:
        d = _obj(doc, "tunnel")
        return cls(
            id=_str(d, "id"),
            domain=_str(d, "domain"),
            display_name=_opt_str(d, "display_name"),
            created_at=str(d.get("created_at") or ""),
            archived_at=_opt_str(d, "archived_at"),
        )


@dataclass(frozen=True)
class TunnelToken:
    id: str
    tunnel_token: str = field(repr=False)

    @classmethod
    def from_json(cls, doc: Any) -> TunnelToken:
        d = _obj(doc, "tunnel_token")
        return cls(id=str(d.get("id") or ""), tunnel_token=_str(d, "tunnel_token"))


@dataclass(frozen=True)
class TunnelCertificate:
    id: str
    tunnel_id: str
    fingerprint: str
    expires_at: str | None
    created_at: str
    archived_at: str | None

    @property
    def active(self) -> bool:
        return self.archived_at is None

    @classmethod
    def from_json(cls, doc: Any) -> TunnelCertificate:
        d = _obj(doc, "tunnel_certificate")
        return cls(
            id=_str(d, "id"),
            tunnel_id=str(d.get("tunnel_id") or ""),
            fingerprint=_str(d, "fingerprint").lower().replace(":", ""),
            expires_at=_opt_str(d, "expires_at"),
            created_at=str(d.get("created_at") or ""),
            archived_at=_opt_str(d, "archived_at"),
        )


def _obj(doc: Any, kind: str) -> Mapping[str, Any]:
    if not isinstance(doc, dict):
        raise SetupError(f"unexpected {kind} object in the API response")
    return doc


def _str(d: Mapping[str, Any], key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise SetupError(f"API response is missing {key!r}")
    return value


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    return value if isinstance(value, str) and value else None


class TunnelsAPI:
    def __init__(
        self,
        base_url: str,
        auth: BearerSource,
        transport: Transport,
        reporter: Reporter,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.transport = transport
        self.reporter = reporter
        self.retry = retry or RetryPolicy()

    # -- plumbing -----------------------------------------------------------------------

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.auth.bearer()}",
            "anthropic-version": ANTHROPIC_VERSION,
            "anthropic-beta": TUNNELS_BETA,
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if has_body:
            headers["Content-Type"] = "application/json"
        return headers

    def _call(
        self,
        op: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        idempotent: bool,
    ) -> Any:
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            last = attempt >= self.retry.attempts
            headers = self._headers(data is not None)  # outside the try: the exchange retries itself
            try:
                resp = self.transport.request(method, url, headers=headers, body=data)
            except NetworkError as exc:
                if (idempotent or not exc.sent) and not last:
                    self.reporter.warn(f"{exc}; retrying")
                    self.retry.sleep(self.retry.delay(attempt))
                    continue
                if not idempotent and exc.sent:
                    raise AmbiguousResult(f"{method} {path}: outcome unknown ({exc})", cause=exc) from exc
                raise
            if 200 <= resp.status < 300:
                return self._json(resp, method, path)
            if resp.status == 401 and not refreshed and self.auth.invalidate():
                refreshed = True  # an expired exchanged token: exchange again, once
                continue
            retryable = resp.status in RETRYABLE_STATUSES
            # 429 means "not processed": safe to repeat even a create.
            if retryable and (idempotent or resp.status == 429) and not last:
                delay = self.retry.delay(attempt, parse_retry_after(resp.headers))
                self.reporter.warn(f"{method} {path}: HTTP {resp.status}; retrying in {delay:.1f}s")
                self.retry.sleep(delay)
                continue
            error = self._error(op, method, path, resp)
            if not idempotent and retryable and resp.status != 429:
                raise AmbiguousResult(f"{method} {path}: outcome unknown ({error})", cause=error) from error
            raise error

    def _json(self, resp: Response, method: str, path: str) -> Any:
        try:
            return json.loads(resp.body) if resp.body else {}
        except ValueError as exc:
            raise SetupError(f"{method} {path}: HTTP {resp.status} with a body that is not JSON") from exc

    def _error(self, op: str, method: str, path: str, resp: Response) -> APIError:
        error_type, message, request_id = parse_error_body(resp)
        return APIError(
            method=method,
            path=path,
            status=resp.status,
            error_type=error_type,
            message=message,
            request_id=request_id,
            cause=tunnels_cause(op, resp.status, error_type, message, auth_kind=self.auth.kind),
        )

    def _pages(self, op: str, path: str, include_archived: bool) -> Iterator[Any]:
        page: str | None = None
        for _ in range(MAX_PAGES):
            query = {"limit": str(PAGE_LIMIT)}
            if include_archived:
                query["include_archived"] = "true"
            if page:
                query["page"] = page
            doc = self._call(op, "GET", path, query=query, idempotent=True)
            if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
                raise SetupError(f"GET {path}: unexpected list response")
            yield from doc["data"]
            nxt = doc.get("next_page")
            if not isinstance(nxt, str) or not nxt:
                return
            page = nxt
        raise SetupError(f"GET {path}: more than {MAX_PAGES} pages")

    # -- endpoints ----------------------------------------------------------------------

    def create_tunnel(self, display_name: str | None) -> Tunnel:
        body = {"display_name": display_name} if display_name else {}
        return Tunnel.from_json(
            self._call("create_tunnel", "POST", "/v1/tunnels", body=body, idempotent=False)
        )

    def get_tunnel(self, tunnel_id: str) -> Tunnel:
        path = f"/v1/tunnels/{_seg(tunnel_id)}"
        return Tunnel.from_json(self._call("get_tunnel", "GET", path, idempotent=True))

    def list_tunnels(self, *, include_archived: bool = False) -> Iterator[Tunnel]:
        for item in self._pages("list_tunnels", "/v1/tunnels", include_archived):
            yield Tunnel.from_json(item)

    def archive_tunnel(self, tunnel_id: str) -> Tunnel:
        path = f"/v1/tunnels/{_seg(tunnel_id)}/archive"
        return Tunnel.from_json(self._call("archive_tunnel", "POST", path, idempotent=True))

    def reveal_token(self, tunnel_id: str) -> TunnelToken:
        path = f"/v1/tunnels/{_seg(tunnel_id)}/reveal_token"
        token = TunnelToken.from_json(self._call("reveal_token", "POST", path, idempotent=True))
        self.reporter.secret(token.tunnel_token)
        return token

    def rotate_token(self, tunnel_id: str, reason: str | None = None) -> TunnelToken:
        path = f"/v1/tunnels/{_seg(tunnel_id)}/rotate_token"
        body = {"reason": reason} if reason else {}
        token = TunnelToken.from_json(self._call("rotate_token", "POST", path, body=body, idempotent=False))
        self.reporter.secret(token.tunnel_token)
        return token

    def create_certificate(self, tunnel_id: str, ca_pem: str) -> TunnelCertificate:
        path = f"/v1/tunnels/{_seg(tunnel_id)}/certificates"
        doc = self._call(
            "create_certificate", "POST", path, body={"ca_certificate_pem": ca_pem}, idempotent=False
        )
        return TunnelCertificate.from_json(doc)

    def list_certificates(self, tunnel_id: str, *, include_archived: bool = False) -> list[TunnelCertificate]:
        path = f"/v1/tunnels/{_seg(tunnel_id)}/certificates"
        return [
            TunnelCertificate.from_json(i) for i in self._pages("list_certificates", path, include_archived)
        ]

    def archive_certificate(self, tunnel_id: str, certificate_id: str) -> TunnelCertificate:
        path = f"/v1/tunnels/{_seg(tunnel_id)}/certificates/{_seg(certificate_id)}/archive"
        return TunnelCertificate.from_json(self._call("archive_certificate", "POST", path, idempotent=True))

    # -- non-idempotent calls made safe --------------------------------------------------

    def find_tunnel_by_display_name(self, display_name: str) -> Tunnel | None:
        found = [t for t in self.list_tunnels(include_archived=True) if t.display_name == display_name]
        live = [t for t in found if t.archived_at is None]
        if len(live) > 1:
            raise SetupError(
                f"{len(live)} tunnels carry the display name {display_name!r} that this setup generated: "
                + ", ".join(t.id for t in live)
                + "; archive the extra ones and pass --tunnel-id"
            )
        return live[0] if live else None

    def create_tunnel_safely(self, display_name: str) -> Tunnel:
        """Create once. After an ambiguous failure, find the tunnel by its unique name first."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.create_tunnel(display_name)
            except AmbiguousResult as exc:
                self.reporter.warn(f"{exc}; looking for a tunnel named {display_name!r} before trying again")
                found = self.find_tunnel_by_display_name(display_name)
                if found is not None:
                    self.reporter.info(f"the create did happen: found {found.id}")
                    return found
                if attempt >= self.retry.attempts:
                    raise SetupError(f"could not create a tunnel: {exc.cause}") from exc
                self.retry.sleep(self.retry.delay(attempt))

    def register_certificate_safely(self, tunnel_id: str, ca_pem: str, fingerprint: str) -> TunnelCertificate:
        """Register once. After an ambiguous failure, look for our fingerprint first."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.create_certificate(tunnel_id, ca_pem)
            except AmbiguousResult as exc:
                self.reporter.warn(f"{exc}; checking whether the CA got registered before trying again")
                for cert in self.list_certificates(tunnel_id):
                    if cert.fingerprint == fingerprint:
                        return cert
                if attempt >= self.retry.attempts:
                    raise SetupError(f"could not register the CA: {exc.cause}") from exc
                self.retry.sleep(self.retry.delay(attempt))

    def rotate_token_safely(self, tunnel_id: str, previous_token_id: str | None, reason: str) -> TunnelToken:
        """Rotate once. After an ambiguous failure, a token id that moved means it did rotate."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.rotate_token(tunnel_id, reason)
            except AmbiguousResult as exc:
                self.reporter.warn(f"{exc}; checking whether the token was rotated before trying again")
                current = self.reveal_token(tunnel_id)
                if previous_token_id and current.id and current.id != previous_token_id:
                    return current
                if attempt >= self.retry.attempts:
                    raise SetupError(f"could not rotate the token: {exc.cause}") from exc
                self.retry.sleep(self.retry.delay(attempt))


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")
