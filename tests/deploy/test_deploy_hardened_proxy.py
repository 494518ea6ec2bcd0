"""The proxy as the hardened Compose file and the chart run it, reproduced without a container
engine: the image's ENTRYPOINT script starts the real proxy as uid/gid 65532 with no supplementary
groups, no capabilities (effective, inheritable and bounding sets empty), no_new_privs, in a
private mount namespace where the root filesystem is read-only and the data and config directory
is a read-only bind mount. The test then checks the running process itself (/proc), sends a request
through the whole path (WebSocket, inner TLS verified against the CA, upstream), runs the image's
health check against it, and stops it with SIGTERM like `docker stop`.

Needs root (to drop to 65532 and to mount), util-linux's unshare and setpriv, and the proxy."""

from __future__ import annotations

import http.server
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
UID = 65532
DOMAIN = "abcd1234.tunnel.example"
STARTUP_TIMEOUT = 60.0


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux (mount namespaces)"
    if os.geteuid() != 0:
        return "needs root: drops to uid 65532 and makes read-only bind mounts"
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            return f"needs util-linux's {tool}"
    try:
        import mcp_tunnel.proxy.cli  # noqa: F401
    except ImportError as exc:
        return f"the proxy is not importable yet (mcp_tunnel.proxy.cli: {exc})"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot create a mount namespace here: {probe.stderr.decode().strip()}"
    return None


SKIP = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")

DROP = [
    "setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--no-new-privs",
    "--inh-caps=-all", "--bounding-set=-all", "--",
]  # fmt: skip
# Inside a private mount namespace: the sandbox directory becomes a read-only bind mount, then the
# root filesystem is remounted read-only (this namespace only), then privileges are dropped.
SANDBOX = (
    'set -e; base="$1"; shift; '
    'mount --bind "$base" "$base"; mount -o remount,bind,ro "$base"; '
    "mount -o remount,bind,ro /; "
    'exec "$@"'
)


def sandboxed(base: Path, argv: list[str]) -> list[str]:
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        SANDBOX,
        "sh",
        str(base),
        *DROP,
        *argv,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_for_uid(env: dict[str, str]) -> str | None:
    """An interpreter uid 65532 can run that loads the project's dependencies (the venv's own
    python may live under a directory only root can enter)."""
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        sys.executable,
        os.path.realpath(sys.executable),
        f"/usr/bin/{minor}",
        f"/usr/local/bin/{minor}",
    ]
    probe = "import yaml, cryptography, websockets, httptools, mcp_tunnel.proxy.cli"
    for python in dict.fromkeys(candidates):
        if not os.path.exists(python):
            continue
        # Through sh, as the launcher does: setpriv may still traverse paths while it execs.
        argv = [*DROP, "sh", "-c", 'exec "$0" -c "$1"', python, probe]
        out = subprocess.run(argv, env=env, capture_output=True, timeout=60)
        if out.returncode == 0:
            return python
    return None


class Upstream:
    """A private MCP server stand-in on loopback."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"hello from upstream, path={self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Sandbox:
    base: Path
    data: Path
    config: Path
    env: dict[str, str]
    listen_port: int
    upstream: Upstream
    python: str


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    # Not under pytest's tmp_path: that is 0700 root, which uid 65532 cannot enter.
    base = Path(tempfile.mkdtemp(prefix="mcp-tunnel-hardened-", dir="/tmp"))
    base.chmod(0o755)
    upstream = Upstream()
    try:
        paths = sysconfig.get_paths()
        pythonpath = os.pathsep.join(dict.fromkeys([str(REPO / "src"), paths["purelib"], paths["platlib"]]))
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": pythonpath,
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
        }
        python = python_for_uid(env)
        if python is None:
            pytest.skip("no Python interpreter that uid 65532 can run with the project's dependencies")
        # The image's PATH has the venv's mcp-tunnel; here a launcher plays that part.
        bindir = base / "bin"
        bindir.mkdir()
        launcher = bindir / "mcp-tunnel"
        launcher.write_text(f'#!/bin/sh\nexec {python} -m mcp_tunnel "$@"\n')
        launcher.chmod(0o755)
        env["PATH"] = f"{bindir}:/usr/bin:/bin"

        data = base / "data"
        made = subprocess.run(
            [sys.executable, "-m", "mcp_tunnel", "certs", "init", "--domain", DOMAIN, "--out", str(data)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        # As setup leaves them: owned by 65532, the key 0600; the directory itself is root's.
        for name in ("tls.crt", "tls.key"):
            os.chown(data / name, UID, UID)
        (data / "tls.key").chmod(0o600)
        data.chmod(0o755)
        listen_port = free_port()
        config = base / "config.yaml"
        config.write_text(
            f'listen_addr: "127.0.0.1:{listen_port}"\n'
            f'admin_addr: "127.0.0.1:{free_port()}"\n'
            "log_level: info\n"
            "shutdown_timeout: 5s\n"
            f"tunnel_domain: {DOMAIN}\n"
            f"tls:\n  cert_file: {data}/tls.crt\n  key_file: {data}/tls.key\n"
            f"routes:\n  echo: http://127.0.0.1:{upstream.port}\n"
            "upstream:\n  allowed_ips: [127.0.0.1/32]   # loopback upstream, test only\n"
        )
        config.chmod(0o644)
        yield Sandbox(base, data, config, env, listen_port, upstream, python)
    finally:
        upstream.close()
        shutil.rmtree(base, ignore_errors=True)


class Running:
    def __init__(self, sb: Sandbox, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            sandboxed(sb.base, ["sh", str(ENTRYPOINT), *args]),
            env=sb.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {text!r} within {timeout}s; output:\n{''.join(self.seen)}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"exited ({self.proc.wait()}) before {text!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if text in line:
                return

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def proc_status(pid: int) -> dict[str, str]:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    return status


def mount_options(pid: int, mount_point: str) -> set[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == mount_point:
            return set(fields[5].split(","))
    raise AssertionError(f"{mount_point} is not a mount point of {pid}")


def test_the_sandbox_is_really_read_only_and_unprivileged(sandbox: Sandbox) -> None:
    """Control: in this harness nothing is writable and the process is uid 65532 with no caps."""
    script = (
        f"id -u; id -g; id -G; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; "
        f"touch {sandbox.data}/x 2>/dev/null && echo data-writable; "
        f"touch /tmp/mcp-tunnel-x 2>/dev/null && echo root-writable; "
        f"cat {sandbox.data}/tls.key >/dev/null && echo key-readable"
    )
    out = subprocess.run(
        sandboxed(sandbox.base, ["sh", "-c", script]), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[:3] == [str(UID), str(UID), str(UID)]
    assert "CapEff:\t0000000000000000" in out.stdout and "CapBnd:\t0000000000000000" in out.stdout
    assert "NoNewPrivs:\t1" in out.stdout
    assert "data-writable" not in out.stdout and "root-writable" not in out.stdout
    assert "key-readable" in out.stdout
    assert not (sandbox.data / "x").exists()


def test_proxy_runs_hardened_and_serves_the_tunnel(sandbox: Sandbox) -> None:
    running = Running(sandbox, ["-config", str(sandbox.config)])
    try:
        running.wait_for("route configured")
        pid = running.proc.pid  # every step execs: the proxy is the process we started
        status = proc_status(pid)
        assert status["Uid"].split() == [str(UID)] * 4
        assert status["Gid"].split() == [str(UID)] * 4
        assert status["Groups"] == ""
        assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000"
        assert status["NoNewPrivs"] == "1"
        assert "python" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert "ro" in mount_options(pid, "/")
        assert "ro" in mount_options(pid, str(sandbox.base))

        # The whole path: WebSocket, inner TLS checked against the CA, routing, the upstream.
        call = subprocess.run(
            [sys.executable, "-m", "mcp_tunnel", "call",
             "--proxy", f"ws://127.0.0.1:{sandbox.listen_port}/",
             "--ca", str(sandbox.data / "ca.crt"), "--timeout", "20",
             f"https://echo.{DOMAIN}/mcp?x=1"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )  # fmt: skip
        assert call.returncode == 0, call.stderr + "".join(running.seen)
        assert "hello from upstream, path=/mcp?x=1" in call.stdout

        # The image's HEALTHCHECK script, as uid 65532 in the same sandbox (without -I here: the
        # interpreter finds PyYAML through PYTHONPATH, where the image's venv has it built in).
        health = subprocess.run(
            sandboxed(sandbox.base, [sandbox.python, str(HEALTHCHECK)]),
            env={**sandbox.env, "MCP_TUNNEL_CONFIG": str(sandbox.config)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert health.returncode == 0, health.stdout + health.stderr
        assert health.stdout.startswith("healthy: ")
        assert "/readyz" in health.stdout  # judged by the admin endpoint, not a bare TCP connect
    finally:
        rc = running.stop()
    # `docker stop` sends SIGTERM: the proxy drains and exits 0.
    assert rc == 0, "".join(running.seen)
    output = "".join(running.seen)
    assert "Traceback" not in output
    assert "Read-only file system" not in output


def test_unreadable_key_fails_fast_with_the_documented_hint(sandbox: Sandbox) -> None:
    """The manual flow's sharp edge: a 0600 key owned by someone else. -check exits 2 with the
    official error text instead of a crash loop."""
    os.chown(sandbox.data / "tls.key", 0, 0)
    out = subprocess.run(
        sandboxed(sandbox.base, ["sh", str(ENTRYPOINT), "-config", str(sandbox.config), "-check"]),
        env=sandbox.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"open {sandbox.data}/tls.key: permission denied" in out.stderr
    # who owns it, who the proxy is, and both ways out
    assert "owned by uid 0" in out.stderr and f"runs as uid {UID}" in out.stderr
    assert "chmod 644" in out.stderr and "run the proxy as its owner" in out.stderr
    assert "Traceback" not in out.stderr


def test_check_passes_under_hardening(sandbox: Sandbox) -> None:
    out = subprocess.run(
        sandboxed(sandbox.base, ["sh", str(ENTRYPOINT), "-config", str(sandbox.config), "-check"]),
        env=sandbox.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"echo.{DOMAIN}" in out.stdout
