"""Inner-TLS certificates: generation (`generate`), the requirement checks (`check`), atomic
files (`files`), hot reload for the proxy (`reload`) and the `mcp-tunnel certs` command (`cli`).
"""
