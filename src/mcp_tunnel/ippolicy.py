"""Which upstream addresses the proxy may connect to (SSRF protection). Pure: no I/O.

Membership is tested against the configured networks only, never with
``ipaddress.is_private``: the operator's list is the whole truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

RFC1918: tuple[IPv4Network, ...] = (
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
)


@dataclass(frozen=True, slots=True)
class IPPolicy:
    """The allow-list; `disabled` is `upstream.disable_ip_validation: true`."""

    networks: tuple[IPv4Network, ...] = RFC1918
    disabled: bool = False

    def allows(self, address: IPv4Address | str) -> bool:
        if self.disabled:
            return True
        addr = address if isinstance(address, IPv4Address) else _parse(address)
        if addr is None:
            return False
        return any(addr in net for net in self.networks)

    def partition(self, addresses: Iterable[str]) -> tuple[list[str], list[str]]:
        """Split resolved addresses into (allowed, refused), keeping resolver order."""
        allowed: list[str] = []
        refused: list[str] = []
        for a in addresses:
            (allowed if self.allows(a) else refused).append(a)
        return allowed, refused


def _parse(text: str) -> IPv4Address | None:
    try:
        return IPv4Address(text)
    except ValueError:
        return None


def covering_network(addresses: Sequence[str]) -> IPv4Network:
    """The narrowest network containing every address (a /32 for one): "add this CIDR" advice."""
    addrs = [IPv4Address(a) for a in addresses]
    for prefix in range(32, 0, -1):
        net = IPv4Network(addrs[0]).supernet(new_prefix=prefix)
        if all(a in net for a in addrs):
            return net
    return IPv4Network("0.0.0.0/0")  # /0 holds every address
