"""Benchmark harness for issue 6: mcp-tunnel's proxy beside nginx, driven by one client.

`./dev bench` (or `.venv/bin/python -m bench`) runs it; docs/performance.md explains each figure.
"""
