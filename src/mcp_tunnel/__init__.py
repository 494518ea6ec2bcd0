"""mcp-tunnel: the customer-side stack of MCP tunnels, in Python."""

__version__ = "0.1.0"
