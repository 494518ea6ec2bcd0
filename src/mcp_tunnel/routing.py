"""Host-based routing (SPEC §4). Pure: no I/O.

The routing host is the inner request's ``Host``: lowercased, port and one trailing dot removed.
Lookup tries the exact host, then the host minus ``.<tunnel_domain>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Route:
    """One ``routes`` entry: the key as written (lowercased) and its upstream.

    `upstream` and `authority` are derived once here: the pool looks them up on every request.
    """

    key: str
    scheme: str  # "http" or "https"
    host: str  # name or IPv4 literal, as written
    port: int
    upstream: str = field(init=False, repr=False, compare=False)
    authority: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "authority", f"{self.host}:{self.port}")
        object.__setattr__(self, "upstream", f"{self.scheme}://{self.host}:{self.port}")


def normalize_host(host: str) -> str:
    """``Echo.Example.COM.:443`` -> ``echo.example.com``; ``[::1]:80`` -> ``::1``."""
    h = host.strip()
    if h.startswith("["):
        end = h.find("]")
        h = h[1:end] if end != -1 else h[1:]
    elif h.count(":") == 1:  # host:port (a bare IPv6 address has more colons)
        h = h[: h.find(":")]
    if h.endswith("."):
        h = h[:-1]
    return h.lower()


@dataclass(frozen=True, slots=True)
class Router:
    routes: Mapping[str, Route]
    tunnel_domain: str = ""

    def lookup(self, host: str) -> Route | None:
        """Route for an already-normalised host, or None."""
        route = self.routes.get(host)
        if route is not None:
            return route
        domain = self.tunnel_domain
        if domain and len(host) > len(domain) + 1 and host.endswith(domain) and host[-len(domain) - 1] == ".":
            return self.routes.get(host[: -len(domain) - 1])
        return None

    def public_host(self, route: Route) -> str:
        """The full hostname a route answers (for the ``route configured`` line)."""
        key = route.key
        domain = self.tunnel_domain
        if not domain or key == domain or key.endswith("." + domain):
            return key
        return f"{key}.{domain}"
