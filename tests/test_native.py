"""The request path runs compiled where the build could compile it (setup.py, `native`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_tunnel.native import MODULES, compiled_modules, source_path, stale_modules
from support.builds import build_env, built_in_place

SRC = Path(__file__).resolve().parent.parent / "src"


def test_the_architecture_doc_lists_the_compiled_modules() -> None:
    """Which modules mypyc compiles is written in docs/architecture.md, and stays true."""
    text = (SRC.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    found = re.search(r"\(`native\.MODULES`:(.*?); nothing else is compiled\)", text, re.S)
    assert found is not None, "docs/architecture.md no longer lists native.MODULES"
    listed = [name.strip().strip("`") for name in found.group(1).split(",")]
    assert listed == [name.removeprefix("mcp_tunnel.") for name in MODULES]


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


@pytest.mark.parametrize("value", ["1", "yes"])
def test_mcp_tunnel_pure_loads_the_source_even_next_to_compiled_modules(value: str) -> None:
    """The runtime switch: the same checkout runs pure Python, whether or not it is built."""
    assert _compiled_in_subprocess(value) == []


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_mcp_tunnel_pure_the_compiled_modules_load(value: str | None) -> None:
    if not built_in_place():
        pytest.skip("no compiled modules in this checkout (MCP_TUNNEL_PURE=1 ./dev removes them)")
    assert _compiled_in_subprocess(value) == list(MODULES)


def _compiled_in_subprocess(pure: str | None) -> list[str]:
    """`compiled_modules()` in a fresh interpreter on this checkout, with MCP_TUNNEL_PURE as given."""
    env = build_env("compiled")
    if pure is not None:
        env["MCP_TUNNEL_PURE"] = pure
    code = "import json, mcp_tunnel.native as n; print(json.dumps(n.compiled_modules()))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(out.stdout))
