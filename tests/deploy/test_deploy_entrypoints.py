"""The image's scripts, run here as subprocesses: the ENTRYPOINT's dispatch (proxy flags, setup,
other subcommands), /setup, and the urllib health check against real local servers."""

from __future__ import annotations

import http.server
import importlib
import json
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
SETUP = REPO / "docker" / "setup"
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
SH = shutil.which("sh") or "/bin/sh"

STUB = """#!/bin/sh
# stands in for the venv's mcp-tunnel: prints its pid and argv as JSON
python3 - "$$" "$@" <<'PY'
import json, sys
print(json.dumps({"pid": int(sys.argv[1]), "argv": sys.argv[2:]}))
PY
"""


@pytest.fixture
def stub_path(tmp_path: Path) -> str:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "mcp-tunnel"
    stub.write_text(STUB)
    stub.chmod(0o755)
    python = shutil.which("python3") or sys.executable
    (bindir / "python3").symlink_to(python)
    return f"{bindir}:/usr/bin:/bin"


def run_script(script: Path, args: list[str], path: str) -> tuple[int, dict[str, object] | str]:
    proc = subprocess.Popen(
        [SH, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": path},
    )
    out, err = proc.communicate(timeout=30)
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        return proc.returncode, out + err
    # exec all the way: the program runs in the script's own process (PID 1 in the container),
    # so SIGTERM from `docker stop` reaches the proxy itself.
    assert doc["pid"] == proc.pid
    return proc.returncode, doc


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["proxy"]),
        (["-config", "/etc/mcp-gateway/config.yaml"], ["proxy", "-config", "/etc/mcp-gateway/config.yaml"]),
        (
            ["-config", "/etc/mcp-proxy/config.yaml", "-tunnel-domain", "x.example"],
            ["proxy", "-config", "/etc/mcp-proxy/config.yaml", "-tunnel-domain", "x.example"],
        ),
        (["-check"], ["proxy", "-check"]),
        (["--config=/c.yaml"], ["proxy", "--config=/c.yaml"]),
        (["setup", "init", "--output=dir:/data"], ["setup", "init", "--output=dir:/data"]),
        (["proxy", "-config", "/c.yaml"], ["proxy", "-config", "/c.yaml"]),
        (["certs", "check", "--ca", "a b"], ["certs", "check", "--ca", "a b"]),
        (["doctor"], ["doctor"]),
        (["version"], ["--version"]),
    ],
)
def test_entrypoint_dispatch(stub_path: str, args: list[str], expected: list[str]) -> None:
    rc, doc = run_script(ENTRYPOINT, args, stub_path)
    assert rc == 0
    assert isinstance(doc, dict) and doc["argv"] == expected


def test_entrypoint_runs_other_commands_as_given(stub_path: str) -> None:
    rc, out = run_script(ENTRYPOINT, ["echo", "hello", "world"], stub_path)
    assert rc == 0 and out == "hello world\n"


@pytest.mark.parametrize(
    "args",
    [
        ["init", "--api-url=https://api.anthropic.com", "--output=dir:/data", "--token-version=1"],
        ["renew-cert", "--output=dir:/data", "--renew-before=720h"],
    ],
)
def test_setup_entrypoint(stub_path: str, args: list[str]) -> None:
    # `docker compose run --rm setup renew-cert ...` replaces the command, keeps /setup.
    rc, doc = run_script(SETUP, args, stub_path)
    assert rc == 0
    assert isinstance(doc, dict) and doc["argv"] == ["setup", *args]


@pytest.mark.parametrize("script", [ENTRYPOINT, SETUP])
def test_scripts_are_executable_posix_sh(script: Path) -> None:
    assert script.stat().st_mode & stat.S_IXUSR
    assert script.read_text().startswith("#!/bin/sh\n")
    subprocess.run([SH, "-n", str(script)], check=True, timeout=10)
    # git records the mode the image build relies on... and Docker's `install -m` sets it anyway.
    assert "exec " in script.read_text()


def venv_bin() -> Path:
    bindir = Path(sys.executable).parent
    if not (bindir / "mcp-tunnel").exists():
        pytest.skip("the mcp-tunnel console script is not installed in this environment")
    return bindir


def test_entrypoint_with_the_real_cli() -> None:
    path = f"{venv_bin()}:/usr/bin:/bin"
    out = subprocess.run(
        [SH, str(ENTRYPOINT), "version"], env={"PATH": path}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("mcp-tunnel ")
    # The proxy's default command with no config mounted: a configuration error, exit 2, one line.
    out = subprocess.run(
        [SH, str(ENTRYPOINT), "-config", "/nonexistent/config.yaml"],
        env={"PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "/nonexistent/config.yaml" in out.stderr and "Traceback" not in out.stderr


def test_setup_entrypoint_with_the_real_cli() -> None:
    path = f"{venv_bin()}:/usr/bin:/bin"
    out = subprocess.run(
        [SH, str(SETUP), "--help"], env={"PATH": path}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert "init" in out.stdout and "renew-cert" in out.stdout


# --- the health check -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hc() -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location("mcp_tunnel_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class AdminStub:
    """A real HTTP server answering like the admin endpoint; records the paths asked for."""

    def __init__(self) -> None:
        self.status = 200
        self.paths: list[str] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.paths.append(self.path)
                body = b"ok\n" if stub.status == 200 else b"not ready: draining\n"
                self.send_response(stub.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def admin() -> Iterator[AdminStub]:
    stub = AdminStub()
    yield stub
    stub.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The image runs `python -I healthcheck.py` with the venv that has mcp_tunnel installed; -I
# ignores PYTHONPATH, so here the package under test (the one these tests import) is put first
# on sys.path by a one-line boot, then the script runs as __main__ exactly as in the image.
_PACKAGE_ROOT = str(Path(importlib.import_module("mcp_tunnel").__file__ or "").resolve().parents[1])
_BOOT = (
    "import runpy, sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[2:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """As the HEALTHCHECK runs it: python -I healthcheck.py, with the package under test."""
    return subprocess.run(
        [sys.executable, "-I", "-c", _BOOT, _PACKAGE_ROOT, str(HEALTHCHECK)],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cmdline_parsing(hc: ModuleType) -> None:
    f = hc.config_from_cmdline
    assert f(["python", "mcp-tunnel", "proxy", "-config", "/a.yaml"]) == "/a.yaml"
    assert f(["x", "--config", "/b.yaml"]) == "/b.yaml"
    assert f(["x", "-config=/c.yaml"]) == "/c.yaml"
    assert f(["x", "--config=/d.yaml", "-tunnel-domain", "t"]) == "/d.yaml"
    assert f(["x", "-tunnel-domain", "t"]) is None
    assert f(["x", "-config"]) is None
    assert hc.config_path({}, ["x"]) == "/etc/mcp-gateway/config.yaml"
    assert hc.config_path({"MCP_TUNNEL_CONFIG": "/e.yaml"}, ["x", "-config", "/f.yaml"]) == "/e.yaml"


def test_pid1_cmdline_reader(hc: ModuleType, tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(
        b"/opt/mcp-tunnel/bin/python\0/opt/mcp-tunnel/bin/mcp-tunnel\0proxy\0-config\0/x.yaml\0"
    )
    argv = hc.pid1_argv(str(cmdline))
    assert hc.config_from_cmdline(argv) == "/x.yaml"
    assert hc.pid1_argv(str(tmp_path / "missing")) == []


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        (":9090", ("127.0.0.1", 9090)),
        ("0.0.0.0:9090", ("127.0.0.1", 9090)),
        ("127.0.0.1:9191", ("127.0.0.1", 9191)),
        ("[::1]:9090", ("::1", 9090)),
        ("10.0.0.5:1", ("10.0.0.5", 1)),
    ],
)
def test_addresses(hc: ModuleType, addr: str, expected: tuple[str, int]) -> None:
    assert hc.split_addr(addr) == expected


def test_address_errors(hc: ModuleType) -> None:
    for bad in ("9090", "host:", "host:http"):
        with pytest.raises(ValueError):
            hc.split_addr(bad)


def test_healthy_from_admin_addr_in_config(admin: AdminStub, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f'listen_addr: ":8080"\nadmin_addr: ":{admin.port}"\n')
    out = run_healthcheck({"MCP_TUNNEL_CONFIG": str(cfg)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("healthy: ")
    assert admin.paths == ["/readyz"]


def test_unhealthy_when_not_ready(admin: AdminStub, tmp_path: Path) -> None:
    admin.status = 503
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"admin_addr: 127.0.0.1:{admin.port}\nlisten_addr: ':8080'\n")
    out = run_healthcheck({"MCP_TUNNEL_CONFIG": str(cfg)})
    assert out.returncode == 1
    assert "503" in out.stdout and "draining" in out.stdout


def test_explicit_url_wins(admin: AdminStub) -> None:
    out = run_healthcheck(
        {
            "MCP_TUNNEL_HEALTH_URL": f"http://127.0.0.1:{admin.port}/healthz",
            "MCP_TUNNEL_CONFIG": "/nonexistent.yaml",
        }
    )
    assert out.returncode == 0
    assert admin.paths == ["/healthz"]


def test_admin_down_is_unhealthy(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"admin_addr: 127.0.0.1:{closed_port()}\nlisten_addr: ':8080'\n")
    out = run_healthcheck({"MCP_TUNNEL_CONFIG": str(cfg)})
    assert out.returncode == 1 and out.stdout.startswith("unhealthy: ")


def test_without_admin_addr_the_listener_is_probed(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        cfg = tmp_path / "config.yaml"
        cfg.write_text(f'listen_addr: ":{port}"\n')  # an official config, unchanged
        out = run_healthcheck({"MCP_TUNNEL_CONFIG": str(cfg)})
        assert out.returncode == 0, out.stdout
        assert "no admin_addr" in out.stdout
    cfg.write_text(f'listen_addr: "127.0.0.1:{closed_port()}"\n')
    assert run_healthcheck({"MCP_TUNNEL_CONFIG": str(cfg)}).returncode == 1


@pytest.mark.parametrize("content", [None, "- a list\n", "listen_addr: [unclosed\n", "log_level: info\n"])
def test_unreadable_config_is_unhealthy(tmp_path: Path, content: str | None) -> None:
    cfg = tmp_path / "config.yaml"
    if content is not None:
        cfg.write_text(content)
    out = run_healthcheck({"MCP_TUNNEL_CONFIG": str(cfg)})
    assert out.returncode == 1
    assert out.stdout.startswith("unhealthy: ") and "Traceback" not in out.stdout + out.stderr


def test_healthcheck_uses_only_the_stdlib_yaml_and_the_shared_expansion() -> None:
    import ast

    tree = ast.parse(HEALTHCHECK.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    ours = {m for m in modules if m.split(".")[0] == "mcp_tunnel"}
    assert ours == {"mcp_tunnel.envref"}  # stdlib-only module of the installed package
    others = {m.split(".")[0] for m in modules - ours}
    assert others <= set(sys.stdlib_module_names) | {"yaml", "__future__"}, others


def test_healthcheck_and_proxy_share_one_expansion(
    hc: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both go through mcp_tunnel.envref.expand: a spy sees the proxy's loader and the health
    check expand the same text."""
    import mcp_tunnel.envref as envref
    from mcp_tunnel.config import load_config

    seen: list[str] = []
    real = envref.expand

    def spy(text: str, environ: Any) -> Any:
        seen.append(text)
        return real(text, environ)

    monkeypatch.setattr(envref, "expand", spy)
    monkeypatch.setattr("mcp_tunnel.config.expand", spy)
    (tmp_path / "tls.crt").write_text("")
    (tmp_path / "tls.key").write_text("")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "listen_addr: ${LISTEN}\nadmin_addr: 127.0.0.1:${ADMIN_PORT}\n"
        f"tls: {{cert_file: {tmp_path}/tls.crt, key_file: {tmp_path}/tls.key}}\n"
        "routes: {echo: 'http://10.0.0.1:80'}\n"
    )
    env = {"LISTEN": ":8080", "ADMIN_PORT": "9191"}
    loaded = load_config(str(cfg), environ=env)
    proxy_seen = list(seen)
    assert hc.target_from_config(str(cfg), env) == ("http", "http://127.0.0.1:9191/readyz")
    assert (loaded.admin_host, loaded.admin_port) == ("127.0.0.1", 9191)
    assert "127.0.0.1:${ADMIN_PORT}" in proxy_seen and seen[len(proxy_seen) :] == ["127.0.0.1:${ADMIN_PORT}"]


def test_healthy_with_admin_addr_from_the_environment(admin: AdminStub, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text('listen_addr: ":8080"\nadmin_addr: ${ADMIN_ADDR}\n')
    out = run_healthcheck({"MCP_TUNNEL_CONFIG": str(cfg), "ADMIN_ADDR": f"127.0.0.1:{admin.port}"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert admin.paths == ["/readyz"]


def test_listen_addr_from_the_environment_and_dollar_dollar(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        cfg = tmp_path / "config.yaml"
        cfg.write_text('listen_addr: "${HOST}:${PORT}"\n')
        out = run_healthcheck({"MCP_TUNNEL_CONFIG": str(cfg), "HOST": "127.0.0.1", "PORT": str(port)})
        assert out.returncode == 0, out.stdout + out.stderr
    cfg.write_text('listen_addr: "127.0.0.1:$$1"\n')  # a literal $: not host:port, as for the proxy
    out = run_healthcheck({"MCP_TUNNEL_CONFIG": str(cfg)})
    assert out.returncode == 1 and "is not host:port" in out.stdout


def test_unset_variable_is_named_and_a_bad_value_is_not_shown(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("admin_addr: ${ADMIN_ADDR}\nlisten_addr: ':8080'\n")
    out = run_healthcheck({"MCP_TUNNEL_CONFIG": str(cfg)})
    assert out.returncode == 1
    assert "environment variable ADMIN_ADDR is not set" in out.stdout, out.stdout
    marker = "sk-ant-MARKER-0123456789"
    out = run_healthcheck({"MCP_TUNNEL_CONFIG": str(cfg), "ADMIN_ADDR": marker})
    assert out.returncode == 1 and "${ADMIN_ADDR}" in out.stdout and "is not host:port" in out.stdout
    assert marker not in out.stdout + out.stderr


def test_ipv6_admin_addr_becomes_a_bracketed_url(hc: ModuleType, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text('admin_addr: "[::1]:9090"\n')
    assert hc.target_from_config(str(cfg)) == ("http", "http://[::1]:9090/readyz")
