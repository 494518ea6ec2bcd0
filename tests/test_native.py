"""The request path runs compiled where the build could compile it (setup.py, `native`)."""

from __future__ import annotations

import os
from pathlib import Path

from mcp_tunnel.native import MODULES, compiled_modules, source_path, stale_modules

SRC = Path(__file__).resolve().parent.parent / "src"


def test_every_listed_module_is_a_source_file() -> None:
    for name in MODULES:
        assert source_path(SRC, name).is_file(), name


def test_the_checkout_runs_what_an_install_runs() -> None:
    """./dev builds the list compiled; MCP_TUNNEL_PURE=1 runs it all as Python."""
    pure = os.environ.get("MCP_TUNNEL_PURE", "") not in ("", "0")
    expected = [] if pure else list(MODULES)
    assert compiled_modules() == expected, "run ./dev build (MCP_TUNNEL_PURE=1 tests pure Python)"


def test_a_source_edited_after_the_build_is_stale(tmp_path: Path) -> None:
    for name in MODULES:
        source = source_path(tmp_path, name)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("")
        os.utime(source, (1000, 1000))
    assert stale_modules(tmp_path) == []  # nothing built: nothing stale
    for i, old in enumerate(("old", "newest")):  # the newest of several builds counts
        lib = tmp_path / f"{old}__mypyc.cpython-311-x86_64-linux-gnu.so"
        lib.write_bytes(b"")
        os.utime(lib, (2000 + i, 2000 + i))
    assert stale_modules(tmp_path) == []
    edited = source_path(tmp_path, MODULES[2])
    os.utime(edited, (2000.5, 2000.5))
    assert stale_modules(tmp_path) == []  # older than the newest build
    os.utime(edited, (3000, 3000))
    assert stale_modules(tmp_path) == [MODULES[2]]
