"""Real processes: the proxy as an operator runs it, waited on by its own log lines."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from support.builds import SRC, build_env

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    """`mcp-tunnel proxy -config FILE` in a subprocess, with its stderr collected line by line.

    It runs this checkout's code (`PYTHONPATH`), whatever the venv's editable install points at.
    `cmd="-m"` starts it as `python -m mcp_tunnel proxy`; `env` is then the whole environment
    (`support.builds.build_env` picks the build), otherwise it is added to the test's own.
    """

    def __init__(
        self, args: list[str], *, cmd: str = "mcp-tunnel", env: dict[str, str] | None = None
    ) -> None:
        if cmd == "-m":
            argv = [sys.executable, "-m", "mcp_tunnel", "proxy", *args]
            environ = dict(env or build_env("compiled"))
        else:
            argv = [str(BIN / cmd), *(["proxy"] if cmd == "mcp-tunnel" else []), *args]
            environ = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def ended(self) -> bool:
        """The process has exited and every line it (or a child holding its stderr) wrote is in."""
        return self.proc.poll() is not None and not self._reader.is_alive()

    def wait_for(self, phrase: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if phrase in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.ended():
                    raise AssertionError(f"{phrase!r} not logged; got:\n" + "\n".join(self.lines))
                self._cond.wait(min(remaining, 0.5))

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_cli(*args: str, timeout: float = 60.0, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mcp-tunnel"), *args], capture_output=True, text=True, timeout=timeout, input=stdin
    )
