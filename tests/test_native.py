"""The request path runs compiled where the build could compile it (setup.py, `native`)."""

from __future__ import annotations

import os
from pathlib import Path

from mcp_tunnel.native import MODULES, compiled_modules

SRC = Path(__file__).resolve().parent.parent / "src"


def test_every_listed_module_is_a_source_file() -> None:
    for name in MODULES:
        assert (SRC / f"{name.replace('.', '/')}.py").is_file(), name


def test_the_checkout_runs_what_an_install_runs() -> None:
    """./dev builds the list compiled; MCP_TUNNEL_PURE=1 runs it all as Python."""
    pure = os.environ.get("MCP_TUNNEL_PURE", "") not in ("", "0")
    expected = [] if pure else list(MODULES)
    assert compiled_modules() == expected, "run ./dev build (MCP_TUNNEL_PURE=1 tests pure Python)"
