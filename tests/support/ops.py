"""The proxy as an operator runs it, for the operations tests: a subprocess with admin_addr.

`Stack` wraps `ProxyProcess` with what those tests keep needing: the ports, a tunnel client,
one-shot requests, the admin pages, parsed metrics, and atomic config rewrites (the proxy
polls the file; a half-written file would be a spurious failed reload).
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mcp_tunnel.client import TunnelClient, client_ssl_context
from support.pki import PKI
from support.procs import ProxyProcess, free_port
from support.proxy import write_config


@dataclass
class Stack:
    proc: ProxyProcess
    pki: PKI
    tmp: Path
    port: int
    admin_port: int
    config_path: Path
    base: dict[str, Any]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def client(self, *, ca: Path | None = None, **kwargs: Any) -> TunnelClient:
        kwargs.setdefault("timeout", 10.0)
        return TunnelClient(self.url, client_ssl_context(str(ca or self.pki.ca_file)), **kwargs)

    async def get(
        self, sub: str, path: str = "/", *, headers: list[tuple[str, str]] | None = None
    ) -> tuple[int, bytes]:
        """One request on a fresh tunnel connection, closed afterwards."""
        host = self.pki.host(sub)
        conn = await self.client().connect(host)
        try:
            resp = await conn.request("GET", path, host=host, headers=headers or [])
            return resp.status, await resp.read()
        finally:
            await conn.close()

    async def admin(self, path: str, method: str = "GET") -> tuple[int, str, str]:
        """(status, head, body) of one admin request."""
        return await http_get("127.0.0.1", self.admin_port, path, method=method)

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, _, body = await self.admin("/metrics")
        assert status == 200, body
        return parse_metrics(body)

    def rewrite(self, routes: Mapping[str, str], **extra: Any) -> None:
        """Replace the config file atomically (rename), as a ConfigMap update does."""
        side = self.tmp / "next"
        side.mkdir(exist_ok=True)
        merged = dict(self.base)
        for key, value in extra.items():
            old = merged.get(key)
            merged[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
        written = write_config(side, self.pki, routes, **merged)
        os.replace(written, self.config_path)

    def rewrite_text(self, text: str) -> None:
        side = self.tmp / "next.yaml"
        side.write_text(text)
        os.replace(side, self.config_path)

    def count(self, phrase: str) -> int:
        return sum(1 for line in list(self.proc.lines) if phrase in line)

    async def wait_log(self, phrase: str, n: int = 1, timeout: float = 10.0) -> str:
        """Wait until `phrase` has been logged `n` times; the last such line.

        Polls without blocking the event loop: the upstreams the proxy talks to live in it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [line for line in list(self.proc.lines) if phrase in line]
            if len(found) >= n:
                return found[n - 1]
            # Exited: still wait for the reader to take the last lines from the pipe.
            if loop.time() > deadline or self.proc.ended():
                raise AssertionError(f"{phrase!r} logged {len(found)} < {n} times:\n" + self.log())
            await asyncio.sleep(0.01)

    def log(self) -> str:
        return "\n".join(self.proc.lines)


def start_stack(
    tmp: Path, pki: PKI, routes: Mapping[str, str], *, ready_path: str = "/readyz", **extra: Any
) -> Stack:
    """Write a config (listen and admin on free loopback ports), start the proxy, wait for it.

    `extra` stays the base of `Stack.rewrite`, so a rewrite changes only what it names.
    """
    port, admin_port = free_port(), free_port()
    extra.setdefault("listen_addr", f"127.0.0.1:{port}")
    extra.setdefault("admin_addr", f"127.0.0.1:{admin_port}")
    path = write_config(tmp, pki, routes, **extra)
    proc = ProxyProcess(["-config", str(path)])
    stack = Stack(proc, pki, tmp, port, admin_port, path, dict(extra))
    try:
        _wait_ready(stack, ready_path)
    except BaseException:
        proc.__exit__()
        raise
    return stack


def _wait_ready(stack: Stack, path: str, timeout: float = 15.0) -> None:
    """Poll an admin page (works at any log level and format) until 200, or fail with the log."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{stack.admin_port}{path}"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or stack.proc.proc.poll() is not None:
            raise AssertionError("the proxy did not become ready:\n" + stack.log())
        with stack.proc._cond:
            stack.proc._cond.wait(0.02)


async def http_get(host: str, port: int, path: str, *, method: str = "GET") -> tuple[int, str, str]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), head, body


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples by (name, labels)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def sample(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def poll(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Await `check()` (sync or async) until it returns something truthy, with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
