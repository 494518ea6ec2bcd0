"""The quickstart's sample MCP server: one tool, `hello`, over streamable HTTP on port 9000.

The official quickstart's sample uses FastMCP from mcp 1.x; mcp 2.x renamed it MCPServer, so
this file targets the pinned mcp==2.3.0 (the version mcp-tunnel's own demo uses).
"""

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("hello-server")


@mcp.tool()
def hello(name: str = "world") -> str:
    """Say hello."""
    return f"Hello, {name}!"


if __name__ == "__main__":
    # 0.0.0.0: reached by the proxy over the Compose network, never published on the host.
    mcp.run(transport="streamable-http", host="0.0.0.0", port=9000)
