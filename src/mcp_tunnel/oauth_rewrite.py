"""OAuth through the tunnel without reconfiguring the authorization server (SPEC §5.1). Pure: no I/O.

The official troubleshooting ("route OAuth through the tunnel", digest §11) asks the operator to
make the authorization server publish split metadata (the authorization endpoint on the
browser-reachable host, everything else on ``https://auth.<tunnel-domain>``) and the MCP server
name the tunnel issuer. Few servers can; an MCP server behind the tunnel publishes its internal
URL. With the config's ``oauth:`` section the proxy rewrites those documents as it relays them:

- on the authorization server's route, the JSON 2xx answers to ``GET
  /.well-known/oauth-authorization-server`` and ``/.well-known/openid-configuration`` (with or
  without a path suffix);
- on each protected-resource route, the JSON 2xx answers to ``GET
  /.well-known/oauth-protected-resource`` (with or without a path suffix), and the
  ``resource_metadata`` URL of every ``WWW-Authenticate`` header.

Nothing else is touched. The relay (proxy/forward.py) asks `OAuthRewriter.exchange` once per
request, and only when the section is present; everything it then does is here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mcp_tunnel.http_rules import (
    Headers,
    header_value,
    is_compressed,
    is_json_media,
    json_body,
    media_type,
    with_length,
)
from mcp_tunnel.routing import Route, Router

MAX_DOCUMENT = 64 * 1024  # a metadata document held for rewriting; a larger one passes unchanged

AS_PREFIXES = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")
PRM_PREFIX = "/.well-known/oauth-protected-resource"

Warn = Callable[..., None]  # Logger.warn: a message and key=value fields

_RESOURCE_METADATA = re.compile(rb'(resource_metadata\s*=\s*")([^"]*)(")', re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """The config's ``oauth:`` section, checked: route keys as the routes have them (lowercase)."""

    authorization_server: str
    authorization_endpoint: str
    protected_resources: tuple[str, ...] = ()


def public_url(key: str, tunnel_domain: str) -> str:
    """``https://<key>.<tunnel_domain>``, or ``https://<key>`` for a full hostname (one under the
    tunnel domain): the host Claude reaches the route by, as `Router.public_host` names it."""
    return "https://" + Router({}, tunnel_domain).public_host(Route(key, "http", "x", 1))


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the default port filled in, or None for what is not a URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _move(url: str, origin: str) -> str:
    """`url` on `origin` (``https://host``), its path, query and fragment kept."""
    parts = urlsplit(url)
    return origin + urlunsplit(("", "", parts.path, parts.query, parts.fragment))


def _is_document(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


# --- the documents ------------------------------------------------------------------------------


def rewrite_as_metadata(
    doc: dict[str, Any], *, public: str, authorization_endpoint: str, upstream: str
) -> list[str]:
    """Authorization server metadata (RFC 8414 / OpenID discovery), rewritten in place.

    `public` is the route's public URL, `upstream` its upstream URL. The issuer becomes `public`;
    each endpoint URL and ``jwks_uri`` on the server's own origin (its issuer's or the
    upstream's, or already the public one) keeps its path on the public origin;
    ``authorization_endpoint`` becomes the configured browser-facing URL. Returns the warnings.
    """
    own = {o for o in (_origin(public), _origin(upstream)) if o is not None}
    issuer = doc.get("issuer")
    if isinstance(issuer, str):
        issuer_origin = _origin(issuer)
        if issuer_origin is not None:
            own.add(issuer_origin)
    doc["issuer"] = public
    for name, value in doc.items():
        if name == "authorization_endpoint" or not (name.endswith("_endpoint") or name == "jwks_uri"):
            continue
        if isinstance(value, str) and _origin(value) in own:
            doc[name] = _move(value, public)
    doc["authorization_endpoint"] = authorization_endpoint
    warnings = []
    methods = doc.get("code_challenge_methods_supported")
    if not (isinstance(methods, list) and "S256" in methods):
        warnings.append("authorization server metadata without S256 in code_challenge_methods_supported")
    if doc.get("authorization_response_iss_parameter_supported") is True and issuer != public:
        # RFC 9207: the browser brings back iss= the server's own issuer, which clients compare
        # with the rewritten one; only the server itself can fix that (its public/frontend URL).
        warnings.append(
            "authorization server sends iss in its redirects (RFC 9207) with another issuer than "
            "the tunnel's: set its issuer to the route's public URL"
        )
    return warnings


def rewrite_resource_metadata(doc: dict[str, Any], *, public: str, authorization_server: str) -> None:
    """Protected resource metadata (RFC 9728), rewritten in place: the resource on the route's
    public URL (its own path kept) and the tunnel's authorization server as the only one."""
    resource = doc.get("resource")
    path = ""
    if isinstance(resource, str):
        parts = urlsplit(resource)
        path = urlunsplit(("", "", parts.path, parts.query, ""))
    doc["resource"] = public + path
    doc["authorization_servers"] = [authorization_server]


def rewrite_challenge(value: bytes, public: str) -> bytes:
    """A ``WWW-Authenticate`` value with its ``resource_metadata`` URL moved to `public`."""

    def move(m: re.Match[bytes]) -> bytes:
        url = m.group(2).decode("latin-1")
        if _origin(url) is None:
            return m.group(0)
        return m.group(1) + _move(url, public).encode("latin-1") + m.group(3)

    return _RESOURCE_METADATA.sub(move, value)


# --- per route and per exchange -----------------------------------------------------------------

_AS = 1
_PRM = 2


class OAuthRewriter:
    """Built once per loaded config; says for each request whether anything is to be rewritten."""

    __slots__ = ("_kinds", "settings", "tunnel_domain", "warn")

    def __init__(self, settings: OAuthSettings, tunnel_domain: str, warn: Warn) -> None:
        self.settings = settings
        self.tunnel_domain = tunnel_domain
        self.warn = warn
        self._kinds = {settings.authorization_server: _AS}
        self._kinds.update(dict.fromkeys(settings.protected_resources, _PRM))

    def exchange(self, route: Route, method: str, path: str) -> ExchangeRewrite | None:
        """The rewrite for one request, or None when its answer passes byte for byte."""
        kind = self._kinds.get(route.key)
        if kind is None:
            return None
        get = method == "GET"
        if kind == _AS:
            if not (get and _is_document(path, AS_PREFIXES)):
                return None
            return ExchangeRewrite(self, route, _AS, document=True)
        return ExchangeRewrite(self, route, _PRM, document=get and _is_document(path, (PRM_PREFIX,)))

    def public(self, key: str) -> str:
        return public_url(key, self.tunnel_domain)


class ExchangeRewrite:
    """One response of a rewritten route: its challenge header, and its document held and rewritten.

    The relay calls `head` with the final response's status and headers (rewritten in place);
    when it returns True the relay holds the body (`keep` each piece; False means the cap was
    passed and `release` gives back what was held, to go out unchanged) and, at the end, sends
    what `finish` returns instead of the upstream's head and body.
    """

    __slots__ = ("_held", "_size", "document", "headers", "holding", "kind", "owner", "route")

    def __init__(self, owner: OAuthRewriter, route: Route, kind: int, *, document: bool) -> None:
        self.owner = owner
        self.route = route
        self.kind = kind
        self.document = document
        self.holding = False
        self.headers: Headers = []
        self._held: list[bytes] = []
        self._size = 0

    def head(self, status: int, headers: Headers) -> bool:
        """Rewrite the challenge header; True when the body is the document to hold."""
        owner = self.owner
        if self.kind == _PRM:
            public = owner.public(self.route.key)
            for i, (name, value) in enumerate(headers):
                if name == b"www-authenticate" and b"resource_metadata" in value.lower():
                    headers[i] = (name, rewrite_challenge(value, public))
        if not (self.document and 200 <= status < 300 and status != 204):
            return False
        if not is_json_media(media_type(headers)):
            return False
        if is_compressed(headers):
            self._warn("OAuth metadata is compressed (Content-Encoding): passed unchanged")
            return False
        length = header_value(headers, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > MAX_DOCUMENT:
            self._warn("OAuth metadata over 64 KiB: passed unchanged")
            return False
        self.headers = headers
        self.holding = True
        return True

    def keep(self, body: bytes) -> bool:
        """Hold a piece of the document; False once it is over the cap (then `release` it)."""
        self._held.append(body)
        self._size += len(body)
        if self._size > MAX_DOCUMENT:
            self.holding = False
            self._warn("OAuth metadata over 64 KiB: passed unchanged")
            return False
        return True

    def release(self) -> list[bytes]:
        held, self._held = self._held, []
        return held

    def finish(self) -> tuple[Headers, bytes]:
        """The headers and body to send: the document rewritten with a fresh Content-Length, or
        the upstream's own body (same headers and length) when it is not a JSON object."""
        self.holding = False
        body = b"".join(self._held)
        self._held = []
        new = self._rewrite(body)
        if new is not None:
            body = new
        return with_length(self.headers, len(body)), body

    def _rewrite(self, body: bytes) -> bytes | None:
        doc = json_body(body)
        if not isinstance(doc, dict):
            self._warn("OAuth metadata is not a JSON object: passed unchanged")
            return None
        owner = self.owner
        settings = owner.settings
        route = self.route
        public = owner.public(route.key)
        if self.kind == _AS:
            for warning in rewrite_as_metadata(
                doc,
                public=public,
                authorization_endpoint=settings.authorization_endpoint,
                upstream=route.upstream,
            ):
                self._warn(warning)
        else:
            rewrite_resource_metadata(
                doc, public=public, authorization_server=owner.public(settings.authorization_server)
            )
        return json.dumps(doc, ensure_ascii=False).encode()

    def _warn(self, message: str) -> None:
        self.owner.warn(message, route=self.route.key)
