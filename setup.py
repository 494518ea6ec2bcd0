"""Build: the proxy's request-path modules compiled with mypyc, or pure Python where that is not possible.

Everything else about the package is in pyproject.toml. `MCP_TUNNEL_PURE=1` skips compiling;
without a C compiler or Python's headers the build says so and installs pure Python, which
behaves the same, only slower (docs/performance.md).
"""

from __future__ import annotations

import os
import runpy
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup

HERE = Path(__file__).resolve().parent


# The setup.py commands that build code; the others (egg_info, dist_info, sdist: what pip and
# `python -m build` run to read the metadata or pack the source) need no C and no mypyc run.
BUILD_COMMANDS = {"build", "build_ext", "bdist", "bdist_wheel", "bdist_egg", "editable_wheel", "install"}


def native_extensions() -> list[Any]:
    if os.environ.get("MCP_TUNNEL_PURE", "") not in ("", "0"):
        return []
    if not BUILD_COMMANDS.intersection(sys.argv[1:]):
        return []
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which(compiler) is None or not headers.is_file():
        missing = "a C compiler" if shutil.which(compiler) is None else f"Python's headers ({headers})"
        print(f"warning: mcp-tunnel builds as pure Python: {missing} not found", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    native = runpy.run_path(str(HERE / "src/mcp_tunnel/native.py"))
    os.chdir(HERE)  # the C goes under build/
    # Type checking is `mypy --strict`'s job in the tests (./dev test); here mypyc only needs the
    # types. pip builds in an isolated environment that has the build requirements only, none of
    # the runtime dependencies (cryptography, prometheus_client, ...): their types are then Any
    # (ignore_missing_imports), and the modules that are not compiled, which use those types in
    # annotations and aliases, are read for their signatures without reporting errors
    # (follow_imports = silent). The compiled modules themselves are still checked.
    config = HERE / "build" / "mypyc.ini"  # not pyproject.toml's strict settings
    config.parent.mkdir(exist_ok=True)
    config.write_text("[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n")
    options = ["--config-file", str(config), "--python-version", "3.11"]
    paths = [str(native["source_path"](Path("src"), name)) for name in native["MODULES"]]
    return mypycify([*options, *paths], opt_level="3")


setup(ext_modules=native_extensions())
