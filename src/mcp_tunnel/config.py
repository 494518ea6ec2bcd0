"""The proxy's configuration file (SPEC §3): types and loading. Pure apart from reading files.

TYPES BELOW ARE THE INTERFACE THE PROXY USES. The loader is being written (see load_config).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mcp_tunnel.ippolicy import IPPolicy
from mcp_tunnel.routing import Route, Router

DEFAULT_CONFIG_PATH = "/etc/mcp-gateway/config.yaml"


@dataclass(frozen=True, slots=True)
class Limits:
    """Our additions (SPEC §5): every limit and timeout has a default and a config field.

    YAML: a ``limits:`` mapping with these keys; durations are Go-style strings (``10s``).
    """

    handshake_timeout: float = 10.0  # WebSocket upgrade + inner TLS handshake
    header_timeout: float = 10.0  # read one request's headers (slowloris)
    idle_timeout: float = 120.0  # keep-alive idle on an inner connection
    upstream_connect_timeout: float = 10.0
    upstream_response_timeout: float = 300.0  # until the upstream's response headers
    max_header_bytes: int = 32 * 1024
    max_body_bytes: int = 0  # 0 = no limit
    max_connections: int = 1024  # concurrent tunnel (WebSocket) connections
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    ca_file: str | None = None
    include_system_cas: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    policy: IPPolicy = field(default_factory=IPPolicy)
    tls: UpstreamTLS = field(default_factory=UpstreamTLS)
    host_header: str = "original"  # "original" (public tunnel host) or "upstream" (host:port)


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    listen_host: str  # "" = all interfaces (":8080")
    listen_port: int
    cert_file: str
    key_file: str
    routes: Mapping[str, Route] = field(default_factory=lambda: MappingProxyType({}))
    tunnel_domain: str = ""
    log_level: str = "info"  # debug | info | warn | error
    log_format: str = "text"  # text | json
    shutdown_timeout: float = 30.0
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    admin_host: str | None = None  # admin_addr, off unless set
    admin_port: int | None = None
    cert_reload_interval: float = 2.0  # tls.reload_interval
    limits: Limits = field(default_factory=Limits)
    warnings: tuple[str, ...] = ()  # one-line warnings found while loading (logged at start)

    @property
    def router(self) -> Router:
        return Router(self.routes, self.tunnel_domain)


def load_config(
    path: str,
    *,
    tunnel_domain: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read, expand and validate the file; raise ConfigError (one line) on any mistake."""
    raise NotImplementedError
