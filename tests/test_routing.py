"""Host normalisation and route lookup (SPEC §4): exact host first, then the tunnel_domain suffix
on a dot boundary; path and port never take part."""

from __future__ import annotations

import pytest

from mcp_tunnel.routing import Route, Router, normalize_host

DOMAIN = "abcd1234.tunnel.anthropic.com"


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        ("echo.example.com", "echo.example.com"),
        ("Echo.Example.COM", "echo.example.com"),
        ("echo.example.com:443", "echo.example.com"),
        ("echo.example.com.", "echo.example.com"),
        ("Echo.Example.COM.:443", "echo.example.com"),
        ("echo.example.com..", "echo.example.com."),  # one trailing dot only
        ("[::1]:80", "::1"),
        ("[::1]", "::1"),
        ("[FD00::1]:8443", "fd00::1"),
        ("::1", "::1"),  # bare IPv6: colons are not a port
        ("10.0.0.1:8080", "10.0.0.1"),
        ("  echo.example.com  ", "echo.example.com"),
        ("", ""),
        ("[::1", "::1"),  # no closing bracket: the rest is the literal
        ("[::1]:80]", "::1"),  # the first `]` closes the literal; what follows is the port's
        ("e:80", "e"),
    ],
)
def test_normalize_host(raw: str, host: str) -> None:
    assert normalize_host(raw) == host


def route(key: str) -> Route:
    return Route(key=key, scheme="http", host=f"{key}-upstream", port=9000)


ROUTES = {
    "echo": route("echo"),
    "a.b": route("a.b"),
    "docs.example.corp": route("docs.example.corp"),
    DOMAIN: route("bare"),
    f"exact.{DOMAIN}": route("exact-full"),
    "exact": route("exact-short"),
}


@pytest.fixture
def router() -> Router:
    return Router(ROUTES, DOMAIN)


def test_exact_match(router: Router) -> None:
    assert router.lookup("echo") is ROUTES["echo"]
    assert router.lookup("docs.example.corp") is ROUTES["docs.example.corp"]
    assert router.lookup(DOMAIN) is ROUTES[DOMAIN]  # the bare tunnel domain only by exact key


def test_suffix_match(router: Router) -> None:
    assert router.lookup(f"echo.{DOMAIN}") is ROUTES["echo"]
    assert router.lookup(f"a.b.{DOMAIN}") is ROUTES["a.b"]  # multi-label remainder


def test_exact_match_wins_over_suffix(router: Router) -> None:
    assert router.lookup(f"exact.{DOMAIN}") is ROUTES[f"exact.{DOMAIN}"]


def test_suffix_needs_a_dot_boundary(router: Router) -> None:
    assert router.lookup(f"echo{DOMAIN}") is None
    assert router.lookup(f"echo-{DOMAIN}") is None
    assert router.lookup(f"echo.x{DOMAIN}") is None


def test_empty_remainder_is_no_match() -> None:
    r = Router({"": route("empty")}, DOMAIN)
    assert r.lookup(f".{DOMAIN}") is None


def test_no_match(router: Router) -> None:
    assert router.lookup(f"missing.{DOMAIN}") is None
    assert router.lookup("missing") is None
    assert router.lookup(f"echo.{DOMAIN}.evil.com") is None
    assert router.lookup("echo.other.domain") is None


def test_without_tunnel_domain_only_exact_matches() -> None:
    r = Router(ROUTES, "")
    assert r.lookup("echo") is ROUTES["echo"]
    assert r.lookup(f"echo.{DOMAIN}") is None


def test_lookup_of_a_normalised_incoming_host(router: Router) -> None:
    assert router.lookup(normalize_host(f"ECHO.{DOMAIN.upper()}.:443")) is ROUTES["echo"]


def test_public_host(router: Router) -> None:
    assert router.public_host(ROUTES["echo"]) == f"echo.{DOMAIN}"
    assert router.public_host(Route(DOMAIN, "http", "h", 1)) == DOMAIN
    assert router.public_host(Route(f"exact.{DOMAIN}", "http", "h", 1)) == f"exact.{DOMAIN}"
    assert Router(ROUTES, "").public_host(ROUTES["echo"]) == "echo"


def test_route_properties() -> None:
    r = Route("echo", "https", "hello-mcp", 9443)
    assert r.upstream == "https://hello-mcp:9443"
    assert r.authority == "hello-mcp:9443"


def test_suffix_match_with_a_one_letter_subdomain() -> None:
    routes = {"a": route("a")}
    assert Router(routes, DOMAIN).lookup(f"a.{DOMAIN}") is routes["a"]
    assert Router(routes, DOMAIN).lookup(f".{DOMAIN}") is None
