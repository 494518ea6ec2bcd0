"""Which modules are compiled with mypyc, and whether this install runs them compiled.

The request path's modules are plain typed Python that mypyc turns into C extensions at
install time (setup.py): on a cold core (a request at a low rate finds the proxy asleep) the
interpreter's own work is most of a request's cost, and compiled the proxy adds 55-75 us less
latency at 100 req/s (docs/performance.md). Without a C compiler the same modules run as
Python, with the same behaviour. This file has no imports of its own: setup.py reads it.
"""

from __future__ import annotations

MODULES = (
    "mcp_tunnel.ws_frames",
    "mcp_tunnel.tls_session",
    "mcp_tunnel.http_rules",
    "mcp_tunnel.logs",
    "mcp_tunnel.routing",
    "mcp_tunnel.proxy.tunnel",
    "mcp_tunnel.proxy.http_server",
    "mcp_tunnel.proxy.forward",
    "mcp_tunnel.proxy.upstream",
    "mcp_tunnel.proxy.server",
)


def compiled_modules() -> list[str]:
    """The modules of `MODULES` this interpreter loaded from a compiled extension."""
    import importlib
    import importlib.machinery

    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [name for name in MODULES if (importlib.import_module(name).__file__ or "").endswith(suffixes)]
