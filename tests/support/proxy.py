"""An in-process proxy built from a real config file, and a tunnel client pointed at it."""

from __future__ import annotations

import io
import socket
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcp_tunnel.client import TunnelClient, client_ssl_context
from mcp_tunnel.config import load_config
from mcp_tunnel.logs import Logger
from mcp_tunnel.proxy.server import ProxyServer
from mcp_tunnel.proxy.upstream import Dial, Resolver, loop_dial
from support.pki import PKI


@dataclass
class RunningProxy:
    server: ProxyServer
    pki: PKI
    logs: io.StringIO
    config_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/"

    def client(self, **kwargs: Any) -> TunnelClient:
        kwargs.setdefault("timeout", 10.0)
        return TunnelClient(self.url, client_ssl_context(str(self.pki.ca_file)), **kwargs)

    def log_lines(self) -> list[str]:
        self.server.log.flush()  # per-request lines are rendered at the flush, a few ms later
        return self.logs.getvalue().splitlines()

    def log_has(self, phrase: str) -> bool:
        return any(phrase in line for line in self.log_lines())

    async def stop(self) -> None:
        await self.server.stop(1.0)


def write_config(tmp: Path, pki: PKI, routes: Mapping[str, str] | Any, **extra: Any) -> Path:
    """A config file for `pki`; extra keys merge into sections, None removes a key (at either level)."""
    doc: dict[str, Any] = {
        "listen_addr": "127.0.0.1:8080",
        "log_level": "debug",
        "tunnel_domain": pki.domain,
        "tls": {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
        "routes": dict(routes) if isinstance(routes, Mapping) else routes,
        "upstream": {"allowed_ips": ["127.0.0.0/8"]},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key].update(value)
            doc[key] = {k: v for k, v in doc[key].items() if v is not None}
        elif value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def start_proxy(
    tmp: Path,
    pki: PKI,
    routes: Mapping[str, str],
    *,
    resolver: Resolver | None = None,
    dial: Dial = loop_dial,
    **extra: Any,
) -> RunningProxy:
    path = write_config(tmp, pki, routes, **extra)
    config = load_config(str(path))
    logs = io.StringIO()
    server = ProxyServer(
        config, Logger(config.log_level, config.log_format, stream=logs), resolver=resolver, dial=dial
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    await server.start(sock=sock)
    return RunningProxy(server, pki, logs, path)


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()
