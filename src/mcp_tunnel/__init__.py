"""mcp-tunnel: the customer-side stack of MCP tunnels, in Python.

`MCP_TUNNEL_PURE` set to anything but "" or "0" when this package is first imported makes the
request path's modules (`mcp_tunnel.native.MODULES`) load from their `.py` source even where
their mypyc-compiled extension sits next to it; `native.compiled_modules()` then returns [].
Why: the tests run the same hostile inputs against both builds (mypyc enforces the declared
types at run time, where Python does not, so the two can differ), and an operator can rule out
the compiler without reinstalling. It is a meta-path finder consulted before the standard ones,
for those module names only; the shared `*__mypyc*` library is loaded only by compiled modules,
so it stays unused. Standard library only, and nothing at all happens without the variable.
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"


def _load_request_path_from_source() -> None:
    """Put a finder first on `sys.meta_path` that finds the modules of `native.MODULES` as source."""
    import importlib.abc
    import importlib.machinery
    from collections.abc import Sequence
    from types import ModuleType

    from mcp_tunnel.native import MODULES

    class SourceOnlyFinder(importlib.abc.MetaPathFinder):
        """The request path's modules from `.py` files, never from a compiled extension."""

        def find_spec(
            self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
        ) -> importlib.machinery.ModuleSpec | None:
            if fullname not in MODULES:
                return None  # everything else: the standard finders
            source = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
            for entry in path or sys.path:
                spec = importlib.machinery.FileFinder(entry, source).find_spec(fullname)
                if spec is not None:
                    return spec
            return None

    if not any(type(f).__name__ == "SourceOnlyFinder" for f in sys.meta_path):
        sys.meta_path.insert(0, SourceOnlyFinder())


if os.environ.get("MCP_TUNNEL_PURE", "") not in ("", "0"):
    _load_request_path_from_source()
