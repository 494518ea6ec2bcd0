"""The SSRF allow-list: membership in the configured networks only, IPv4 only, exact edges."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from mcp_tunnel.ippolicy import RFC1918, IPPolicy, covering_network


def test_default_is_the_three_rfc1918_ranges() -> None:
    assert IPPolicy().networks == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("172.16.0.0/12"),
        IPv4Network("192.168.0.0/16"),
    )
    assert IPPolicy().networks == RFC1918
    assert IPPolicy().disabled is False


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.0",
        "10.255.255.255",
        "172.16.0.0",
        "172.31.255.255",
        "192.168.0.0",
        "192.168.255.255",
        "10.0.12.7",
    ],
)
def test_default_allows_the_edges_of_each_range(address: str) -> None:
    assert IPPolicy().allows(address)
    assert IPPolicy().allows(IPv4Address(address))


@pytest.mark.parametrize(
    "address",
    [
        "9.255.255.255",
        "11.0.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.167.255.255",
        "192.169.0.0",
        "127.0.0.1",  # loopback is refused unless listed
        "0.0.0.0",
        "8.8.8.8",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT: "private" to some, not in the list
        "255.255.255.255",
    ],
)
def test_default_refuses_everything_else(address: str) -> None:
    assert not IPPolicy().allows(address)
    assert not IPPolicy().allows(IPv4Address(address))


@pytest.mark.parametrize(
    "text",
    [
        "::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "not an ip",
        "",
        "10.0.0.1/32",
        "127.1",
        "0x7f.0.0.1",
        "2130706433",
    ],
)
def test_anything_but_a_dotted_quad_is_refused(text: str) -> None:
    # Odd spellings are resolved to a dotted quad by the caller before the check.
    assert not IPPolicy(networks=(IPv4Network("0.0.0.0/0"),)).allows(text)


def test_an_ipv6_object_is_refused_not_an_exception() -> None:
    assert not IPPolicy().allows(IPv6Address("::ffff:10.0.0.1"))  # type: ignore[arg-type]


def test_configured_networks_replace_the_default() -> None:
    policy = IPPolicy(networks=(IPv4Network("127.0.0.0/8"), IPv4Network("100.64.12.0/22")))
    assert policy.allows("127.0.0.1")
    assert policy.allows("100.64.12.0")
    assert policy.allows("100.64.15.255")
    assert not policy.allows("100.64.16.0")
    assert not policy.allows("100.64.11.255")
    assert not policy.allows("10.0.0.1")


def test_single_address_network() -> None:
    policy = IPPolicy(networks=(IPv4Network("192.168.1.20/32"),))
    assert policy.allows("192.168.1.20")
    assert not policy.allows("192.168.1.19")
    assert not policy.allows("192.168.1.21")


def test_disabled_allows_everything() -> None:
    policy = IPPolicy(networks=(), disabled=True)
    assert policy.allows("8.8.8.8")
    assert policy.allows("127.0.0.1")


def test_empty_list_allows_nothing() -> None:
    assert not IPPolicy(networks=()).allows("10.0.0.1")


def test_partition_keeps_resolver_order() -> None:
    allowed, refused = IPPolicy().partition(["8.8.8.8", "10.0.0.2", "127.0.0.1", "10.0.0.1", "::1"])
    assert allowed == ["10.0.0.2", "10.0.0.1"]
    assert refused == ["8.8.8.8", "127.0.0.1", "::1"]


@pytest.mark.parametrize(
    ("addresses", "network"),
    [
        (["8.8.8.8"], "8.8.8.8/32"),
        (["10.0.0.1", "10.0.0.2"], "10.0.0.0/30"),  # the first address need not be the network's
        (["10.0.0.2", "10.0.0.1"], "10.0.0.0/30"),
        (["10.0.0.1", "10.0.0.0"], "10.0.0.0/31"),
        (["192.168.1.7", "192.168.200.1"], "192.168.0.0/16"),
        (["10.0.0.0", "100.0.0.0"], "0.0.0.0/1"),
        (["10.0.0.0", "200.0.0.0"], "0.0.0.0/0"),
        (["0.0.0.0", "255.255.255.255", "1.2.3.4"], "0.0.0.0/0"),
    ],
)
def test_covering_network_is_the_narrowest(addresses: list[str], network: str) -> None:
    """The doctor's "add this CIDR" advice: every address inside, and no narrower network would do."""
    net = covering_network(addresses)
    assert net == IPv4Network(network)
    assert all(IPv4Address(a) in net for a in addresses)
