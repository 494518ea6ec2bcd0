"""A small blocking HTTP client on the standard library (`http.client`).

Why not httpx: setup makes a handful of one-shot calls; `http.client` gives per-socket
timeouts, an explicit TLS context (the Kubernetes service-account CA), a response size cap and
a clear split between "never sent" and "sent, answer lost" — the distinction the retry logic
needs for non-idempotent calls — without a dependency. `HTTPS_PROXY` / `NO_PROXY` are honoured
for https targets through a CONNECT tunnel, since customer networks often egress through one.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mcp_tunnel.setup.errors import NetworkError

DEFAULT_TIMEOUT = 30.0
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lowercased names
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


class Transport(Protocol):
    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
    ) -> Response: ...


def is_loopback_host(host: str) -> bool:
    """True for localhost names and loopback addresses: the only places plain http is allowed."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class HTTPTransport:
    """One connection per request: setup makes few calls, and a fresh connection after a
    failure is exactly what a retry wants."""

    timeout: float = DEFAULT_TIMEOUT
    ssl_context: ssl.SSLContext | None = None
    use_proxy_env: bool = True
    max_response_bytes: int = MAX_RESPONSE_BYTES
    _environ: Mapping[str, str] | None = field(default=None, repr=False)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
    ) -> Response:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NetworkError(f"unsupported URL {url!r}", sent=False)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        conn = self._connection(parts.scheme, host, port)
        where = f"{method} {parts.scheme}://{parts.netloc}{parts.path}"
        try:
            try:
                conn.connect()
            except (OSError, http.client.HTTPException) as exc:
                raise NetworkError(f"{where}: cannot connect: {_describe(exc)}", sent=False) from exc
            try:
                all_headers = dict(headers)
                if body is not None:
                    all_headers["Content-Length"] = str(len(body))
                conn.request(method, target, body=body, headers=all_headers)
                resp = conn.getresponse()
                data = resp.read(self.max_response_bytes + 1)
            except (OSError, http.client.HTTPException) as exc:
                raise NetworkError(f"{where}: no response: {_describe(exc)}", sent=True) from exc
            if len(data) > self.max_response_bytes:
                raise NetworkError(
                    f"{where}: response larger than {self.max_response_bytes} bytes", sent=True
                )
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            return Response(status=resp.status, headers=hdrs, body=data)
        finally:
            conn.close()

    def _connection(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        if scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=self.timeout)
        ctx = self.ssl_context or ssl.create_default_context()
        proxy = self._proxy_for(host) if self.use_proxy_env else None
        if proxy is None:
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=ctx)
        p = urllib.parse.urlsplit(proxy)
        if p.scheme != "http" or not p.hostname:
            raise NetworkError(
                f"unsupported HTTPS_PROXY {p.scheme}://{p.hostname} (only http:// proxies)", sent=False
            )
        conn = http.client.HTTPSConnection(p.hostname, p.port or 80, timeout=self.timeout, context=ctx)
        tunnel_headers: dict[str, str] = {}
        if p.username is not None:
            cred = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
            tunnel_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        conn.set_tunnel(host, port, headers=tunnel_headers)
        return conn

    def _proxy_for(self, host: str) -> str | None:
        env = self._environ
        if env is None:
            proxies = urllib.request.getproxies_environment()
        else:
            proxies = {k.lower()[:-6]: v for k, v in env.items() if k.lower().endswith("_proxy") and v}
        url = proxies.get("https")
        if not url:
            return None
        no_proxy = proxies.get("no")
        if no_proxy and _bypass(host, no_proxy):
            return None
        return url


def _bypass(host: str, no_proxy: str) -> bool:
    host = host.lower().rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower().lstrip("*").lstrip(".").rstrip(".")
        if raw.strip() == "*":
            return True
        if entry and (host == entry or host.endswith("." + entry)):
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            pass
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message})"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
