"""Anthropic's side of the wire, played locally: WebSocket, inner TLS, HTTP/1.1."""

from mcp_tunnel.client.tunnel_client import Response, TunnelClient, TunnelConnection, client_ssl_context

__all__ = ["Response", "TunnelClient", "TunnelConnection", "client_ssl_context"]
