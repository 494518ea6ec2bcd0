"""Installed the way Python users install: pip, a wheel, an sdist, without the demo extra.

The slow part builds a wheel from a copy of the checkout with pip's default build isolation
(only the pinned build requirements, from the package index: this needs the network), installs
it into a fresh virtual environment with nothing else, and runs it there: the request path
compiled where a C compiler and Python's headers exist, the proxy, certs and the other commands
without the MCP SDK, and the demo naming the extra it needs. A build that fails fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from mcp_tunnel import demo, sample_server
from mcp_tunnel.cli import main as cli_main
from mcp_tunnel.native import MODULES

REPO = Path(__file__).resolve().parent.parent
SDK = ("mcp", "httpx2", "uvicorn", "starlette", "pydantic", "anyio", "httpx", "sse_starlette", "jsonschema")
# Only these modules may need the demo extra; everything else imports without the SDK.
DEMO_ONLY = {"mcp_tunnel.demo", "mcp_tunnel.sample_server", "mcp_tunnel.client.httpx_transport"}
# A fresh checkout: what `git clone` gives, without what ./dev and earlier builds leave behind.
NOT_IN_A_CHECKOUT = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", ".*_cache", "results"
)
EXTRA_LINE = (
    "error: the demo needs the MCP Python SDK (mcp, httpx2, uvicorn, starlette not installed): "
    "pip install 'mcp-tunnel[demo]'\n"
)


def _pure() -> bool:
    return os.environ.get("MCP_TUNNEL_PURE", "") not in ("", "0")


def _can_compile() -> bool:
    """setup.py's own test: a C compiler ($CC, else Python's) and Python's headers."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(compiler) is not None and headers.is_file()


# --- fast: in this process ----------------------------------------------------------------------


def test_demo_without_the_sdk_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in demo.DEMO_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # find_spec() -> None, import -> ImportError
    assert cli_main(["demo", "--once"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == EXTRA_LINE


def test_sample_server_without_the_sdk_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert sample_server.main(["--port", "1"]) == 2
    assert capsys.readouterr().err == (
        "error: the sample server needs the MCP Python SDK (uvicorn not installed): "
        "pip install 'mcp-tunnel[demo]'\n"
    )


def test_no_module_but_the_demo_imports_the_sdk() -> None:
    """Every module of the package imports with the SDK and its dependencies absent."""
    script = f"""
import pkgutil, sys, importlib
for name in {SDK!r}:
    sys.modules[name] = None
import mcp_tunnel
skip = {sorted(DEMO_ONLY)!r} + ["mcp_tunnel.__main__"]
names = [m.name for m in pkgutil.walk_packages(mcp_tunnel.__path__, "mcp_tunnel.")]
for name in names:
    if name not in skip:
        importlib.import_module(name)
print(len(names))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 50


def test_the_sdk_is_the_demo_extra_only() -> None:
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {Requirement(r).name.lower() for r in project["dependencies"]}
    assert runtime.isdisjoint({"mcp", "httpx2", "uvicorn", "starlette"})
    extra = {Requirement(r).name.lower() for r in project["optional-dependencies"]["demo"]}
    assert {"mcp", "httpx2", "uvicorn", "starlette"} <= extra
    assert "mcp-tunnel[demo]" in project["optional-dependencies"]["dev"]


def test_requirements_lock_pins_every_direct_requirement_and_extra() -> None:
    """./dev installs requirements.lock instead of the extras: it must hold the same versions."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if name:
            lock[canonicalize_name(name)] = version
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    wanted = [*project["dependencies"], *pyproject["build-system"]["requires"]]
    wanted += [r for extra in project["optional-dependencies"].values() for r in extra]
    for req in map(Requirement, wanted):
        if req.name == "mcp-tunnel":
            continue
        assert req.specifier.contains(lock.get(canonicalize_name(req.name), "")), (req, "not in the lock")


def test_the_sdist_holds_what_the_build_needs(tmp_path: Path) -> None:
    """Packed by the same backend pip uses (from a copy with ./dev's compiled modules in it)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, ignore=NOT_IN_A_CHECKOUT)
    (checkout / "src" / "mcp_tunnel" / "ws_frames.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    script = "from setuptools import build_meta; print(build_meta.build_sdist('../dist'))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=checkout, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sdist = tmp_path / "dist" / result.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = {"setup.py", "pyproject.toml", "README.md", "src/mcp_tunnel/native.py"}
    sources = {p.relative_to(checkout).as_posix() for p in (checkout / "src").rglob("*.py")}
    assert needed <= names
    assert sources <= names
    assert not [n for n in names if n.endswith((".so", ".pyc")) or n.startswith("tests/")]


# --- slow: a real isolated build, a fresh venv ---------------------------------------------------


@dataclass
class Installed:
    venv: Path
    wheel: Path
    work: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, cwd=self.work, env=env
        )


def _must(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
        pytest.fail(f"{what} failed (exit {result.returncode}):\n{tail}", pytrace=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("install")
    checkout = work / "checkout"
    shutil.copytree(REPO, checkout, ignore=NOT_IN_A_CHECKOUT)
    venv = work / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    _must(subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True), "python -m venv")
    inst = Installed(venv=venv, wheel=work, work=work)
    pip = (inst.bin("python"), "-m", "pip", "--disable-pip-version-check", "--no-input")
    # Default build isolation: pip makes a build environment with the pinned build requirements
    # only (setuptools, mypy); none of the runtime dependencies is there.
    _must(
        inst.run(*pip, "wheel", "--no-deps", "-w", str(work / "wheels"), str(checkout), timeout=600),
        "pip wheel",
    )
    (inst.wheel,) = (work / "wheels").glob("mcp_tunnel-*.whl")
    _must(inst.run(*pip, "install", str(inst.wheel), timeout=300), "pip install of the wheel")
    return inst


@pytest.mark.timeout(900)  # the first test to run may build the wheel
def test_the_wheel_runs_the_request_path_compiled(installed: Installed) -> None:
    result = installed.run(
        installed.bin("python"),
        "-c",
        "from mcp_tunnel.native import compiled_modules; print(compiled_modules())",
    )
    _must(result, "compiled_modules()")
    expected = list(MODULES) if _can_compile() and not _pure() else []
    assert result.stdout.strip() == str(expected)
    # A compiled wheel is for this platform only; a pure one would say py3-none-any.
    assert installed.wheel.name.endswith("-any.whl") == (not expected), installed.wheel.name


@pytest.mark.timeout(900)  # the first test to run may build the wheel
def test_the_install_has_no_sdk(installed: Installed) -> None:
    result = installed.run(installed.bin("python"), "-m", "pip", "list", "--format=json")
    _must(result, "pip list")
    names = {d["name"].lower().replace("_", "-") for d in json.loads(result.stdout)}
    assert "mcp-tunnel" in names
    assert names.isdisjoint({"mcp", "httpx2", "uvicorn", "starlette", "pydantic", "anyio", "httpx"}), names


@pytest.mark.timeout(900)
def test_the_proxy_checks_a_config_without_the_sdk(installed: Installed, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    result = installed.run(
        installed.bin("mcp-tunnel"), "certs", "init", "--domain", "t.example.test", "--out", str(certs),
        "--key-type", "ecdsa-p256",
    )  # fmt: skip
    _must(result, "mcp-tunnel certs init")
    config = tmp_path / "config.yaml"
    config.write_text(
        'listen_addr: "127.0.0.1:0"\n'
        "tunnel_domain: t.example.test\n"
        f"tls:\n  cert_file: {certs / 'tls.crt'}\n  key_file: {certs / 'tls.key'}\n"
        "routes:\n  echo: http://10.0.0.5:9000\n"
    )
    result = installed.run(installed.bin("mcp-proxy"), "-check", "-config", str(config))
    _must(result, "mcp-proxy -check")
    assert "configuration ok" in result.stdout + result.stderr
    assert "echo.t.example.test -> http://10.0.0.5:9000" in result.stdout + result.stderr
    for command in ("setup", "certs", "call", "connect", "doctor"):
        _must(installed.run(installed.bin("mcp-tunnel"), command, "--help"), f"mcp-tunnel {command} --help")
    _must(installed.run(installed.bin("setup"), "--help"), "setup --help")


@pytest.mark.timeout(900)
def test_the_demo_names_the_extra_it_needs(installed: Installed) -> None:
    result = installed.run(installed.bin("mcp-tunnel"), "demo")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr == EXTRA_LINE
