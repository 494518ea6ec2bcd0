"""`mcp-tunnel demo`: the whole stack on loopback (being built; see issue 4)."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    print("mcp-tunnel demo: not yet — the demo lands with the demo issue. Run ./dev test meanwhile.")
    return 0
