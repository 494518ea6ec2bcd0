"""Which modules are compiled with mypyc, and whether this install runs them compiled.

The request path's modules are plain typed Python that mypyc turns into C extensions at
install time (setup.py): on a cold core (a request at a low rate finds the proxy asleep) the
interpreter's own work is most of a request's cost, and compiled the proxy adds 55-75 us less
latency at 100 req/s (docs/performance.md). Without a C compiler the same modules run as
Python, with the same behaviour. Only the standard library is imported here: setup.py runs
this file before the package is installed.
"""

from __future__ import annotations

from pathlib import Path

MODULES = (
    "mcp_tunnel.ws_frames",
    "mcp_tunnel.ws_handshake",
    "mcp_tunnel.tls_session",
    "mcp_tunnel.tunnel_session",
    "mcp_tunnel.http_rules",
    "mcp_tunnel.redact",
    "mcp_tunnel.logs",
    "mcp_tunnel.metrics",
    "mcp_tunnel.routing",
    "mcp_tunnel.mcp_policy",
    "mcp_tunnel.proxy.flow",
    "mcp_tunnel.proxy.exchange",
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


def source_path(src: Path, name: str) -> Path:
    """The `.py` file of module `name` under the source root `src`."""
    return src / f"{name.replace('.', '/')}.py"


def stale_modules(src: Path) -> list[str]:
    """The modules whose source changed after the last in-place build under `src` (none when
    nothing is built there): tests would otherwise run the old compiled code."""
    built = [lib.stat().st_mtime for lib in src.glob("*__mypyc*.so")]
    if not built:
        return []
    built_at = max(built)
    return [name for name in MODULES if source_path(src, name).stat().st_mtime > built_at]
