"""What the steps share: the command line, the loaded config and what earlier steps learnt.

Later steps read earlier results from here so that a failure upstream becomes a `skip` with the
reason downstream, instead of a second, misleading failure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mcp_tunnel.config import Config
from mcp_tunnel.doctor.probes import HandshakeResult, Probes
from mcp_tunnel.errors import ConfigError

DEFAULT_PROXY_UID = 65532
DEFAULT_LISTEN_PORT = 8080


@dataclass(frozen=True, slots=True)
class Options:
    """The doctor's command line, parsed."""

    config: str | None = None
    compose: str | None = None
    ca: str | None = None
    proxy: str | None = None
    paths: Mapping[str, str] = field(default_factory=dict)  # route key ("" = every route) -> path
    token_file: str | None = None
    proxy_uid: int = DEFAULT_PROXY_UID
    edge: bool = False
    edge_host: str | None = None
    tunnel_domain: str | None = None
    timeout: float = 5.0
    environ: Mapping[str, str] | None = None  # None: the process environment

    @property
    def env(self) -> Mapping[str, str]:
        return os.environ if self.environ is None else self.environ

    def path_for(self, route_key: str) -> str | None:
        return self.paths.get(route_key, self.paths.get(""))


@dataclass
class Context:
    options: Options
    probes: Probes
    config: Config | None = None
    config_error: ConfigError | None = None
    ca_file: str | None = None  # the CA actually used (--ca, or ca.crt beside tls.cert_file)
    handshakes: dict[str, HandshakeResult] = field(default_factory=dict)  # host -> result
    upstream_down: dict[str, str] = field(default_factory=dict)  # route key -> why (routing step)

    def data_file(self, name: str) -> Path | None:
        """A file that setup writes beside the certificate (``tunnel-domain``, ``ca.crt``), if present."""
        if self.config is None:
            return None
        candidate = Path(self.config.cert_file).parent / name
        return candidate if candidate.is_file() else None

    def blocked(self, route_key: str, host: str) -> str | None:
        """Why a request through the tunnel to this route cannot succeed, or None if it may."""
        if self.options.proxy is None or self.ca_file is None:
            return "needs --proxy and a CA for the tunnel"
        result = self.handshakes.get(host)
        if result is None:
            return f"no handshake with {host}: the proxy was not reachable (tls step)"
        if result.stage is not None:
            return f"the inner TLS handshake for {host} failed (tls step)"
        if route_key in self.upstream_down:
            return self.upstream_down[route_key]
        return None


def assigned_domain(ctx: Context) -> tuple[str | None, str | None]:
    """(domain, file) from setup's ``tunnel-domain`` output beside the certificate, if present."""
    path = ctx.data_file("tunnel-domain")
    if path is None:
        return None, None
    try:
        text = path.read_text(errors="replace").strip().lower().rstrip(".")
    except OSError:
        return None, None
    return (text or None), str(path)
