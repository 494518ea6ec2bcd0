"""The two builds of the request path, compiled (what users run) and pure Python, as subprocesses see them.

A subprocess started by a test must run this checkout's code, not whatever the venv's editable
install points at: `PYTHONPATH` names this checkout's `src`. `MCP_TUNNEL_PURE=1` then picks the
pure build at run time (`mcp_tunnel/__init__.py`), even where the compiled modules exist.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from mcp_tunnel.native import MODULES, source_path

SRC = Path(__file__).resolve().parent.parent.parent / "src"
BUILDS = ("compiled", "pure")


def pure_run() -> bool:
    """The whole test run asked for pure Python (`MCP_TUNNEL_PURE=1 ./dev test`)."""
    return os.environ.get("MCP_TUNNEL_PURE", "") not in ("", "0")


def built_in_place() -> bool:
    """Every module of `MODULES` has a compiled extension next to its source."""
    return all(any(source_path(SRC, name).parent.glob(name.rpartition(".")[2] + ".*.so")) for name in MODULES)


def build_env(build: str) -> dict[str, str]:
    """The environment of a subprocess that must run `build` of this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("MCP_TUNNEL_PURE", "PYTHONPATH")}
    env["PYTHONPATH"] = str(SRC)
    if build == "pure":
        env["MCP_TUNNEL_PURE"] = "1"
    elif build != "compiled":
        raise ValueError(f"unknown build {build!r}")
    return env


def skip_reason(build: str) -> str | None:
    """Why `build` cannot run here (only the compiled one, only in a pure run without it), or None."""
    if build == "compiled" and pure_run() and not built_in_place():
        return "pure run (MCP_TUNNEL_PURE is set) and this checkout has no compiled modules"
    return None


@functools.cache
def compiled_in(build: str) -> tuple[str, ...]:
    """`native.compiled_modules()` in a subprocess with `build_env(build)`."""
    code = "import json, mcp_tunnel.native as n; print(json.dumps(n.compiled_modules()))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=build_env(build), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return tuple(json.loads(out.stdout))


def assert_build(build: str) -> None:
    """Fail unless a subprocess with `build_env(build)` runs exactly that build."""
    expected = tuple(MODULES) if build == "compiled" else ()
    got = compiled_in(build)
    assert got == expected, (
        f"the {build} build runs {list(got) or 'no'} compiled modules, expected {list(expected) or 'none'}"
        + (": build them (./dev build, or setup.py build_ext --inplace)" if build == "compiled" else "")
    )
