"""The measured processes: the upstream, mcp-tunnel's proxy as a user runs it, and the PKI.

Every server is a real child process bound to 127.0.0.1, with its output in the run's
directory, so the figures are its own /proc numbers and nothing of the harness.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import yaml

from mcp_tunnel.certs.files import write_atomic
from mcp_tunnel.certs.generate import generate_ca, issue_server_cert, pem_cert, pem_key

DOMAIN = "bench.test"
ROUTE = "up"
HOST = f"{ROUTE}.{DOMAIN}"  # the Host every request carries, whatever the target
BIN = Path(sys.executable).parent


class Process:
    """A child process with stdout and stderr going to `log` (a file, never a pipe to fill)."""

    def __init__(self, argv: list[str], log: Path, *, name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            argv, stdout=self._out, stderr=subprocess.STDOUT, close_fds=True, env=env
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(proc: Process, port: int, timeout: float = 15.0) -> None:
    """Poll the listen socket until it accepts, with a deadline; fail with the child's output."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop(1)
            raise RuntimeError(f"{proc.name} did not start listening on {port}:\n{proc.tail()}")
        time.sleep(0.02)


@dataclass(frozen=True)
class PKI:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(directory: Path) -> PKI:
    """CA + ECDSA P-256 server certificate from the product's generator (used by both TLS targets)."""
    ca_cert, ca_key = generate_ca()
    cert, key = issue_server_cert(ca_cert, ca_key, DOMAIN, duration=timedelta(days=2), key_type="ecdsa-p256")
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / "ca.crt", pem_cert(ca_cert), 0o644)
    write_atomic(directory / "tls.crt", pem_cert(cert), 0o644)
    write_atomic(directory / "tls.key", pem_key(key), 0o600)
    return PKI(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")


def start_upstream(directory: Path, port: int) -> Process:
    directory.mkdir(parents=True, exist_ok=True)
    proc = Process(
        [sys.executable, "-m", "bench.upstream", str(port)], directory / "upstream.log", name="upstream"
    )
    wait_listening(proc, port)
    return proc


def write_proxy_config(
    directory: Path,
    pki: PKI,
    *,
    port: int,
    admin_port: int,
    upstream_port: int,
    max_connections: int,
    workers: int = 1,
) -> Path:
    """The config a user would write: info logging, metrics on, loopback allowed for the upstream.

    `limits.max_connections` is raised only as far as the idle-tunnel figure needs.
    """
    doc = {
        "listen_addr": f"127.0.0.1:{port}",
        "log_level": "info",
        "admin_addr": f"127.0.0.1:{admin_port}",
        "tunnel_domain": DOMAIN,
        "tls": {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
        "routes": {ROUTE: f"http://127.0.0.1:{upstream_port}"},
        "upstream": {"allowed_ips": ["127.0.0.0/8"]},
        "limits": {"max_connections": max_connections},
    }
    if workers != 1:
        doc["workers"] = workers
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_proxy(
    directory: Path,
    pki: PKI,
    *,
    port: int,
    admin_port: int,
    upstream_port: int,
    max_connections: int,
    source: Path | None = None,
    name: str = "mcp-tunnel",
    workers: int = 1,
) -> Process:
    """`mcp-tunnel proxy -config FILE`, its stderr (the log lines) redirected to proxy.log.

    `source` is a directory holding another `mcp_tunnel` package (another checkout's `src`),
    put first on the proxy's PYTHONPATH: `bench.ab` compares versions side by side this way.
    """
    config = write_proxy_config(
        directory,
        pki,
        port=port,
        admin_port=admin_port,
        upstream_port=upstream_port,
        max_connections=max_connections,
        workers=workers,
    )
    env = None
    if source is not None:
        paths = [str(source), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    argv = [str(BIN / "mcp-tunnel"), "proxy", "-config", str(config)]
    proc = Process(argv, directory / "proxy.log", name=name, env=env)
    wait_listening(proc, port)
    return proc
