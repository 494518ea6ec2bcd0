"""`mcp-tunnel call`: one request through the full tunnel path, like curl for MCP tunnels."""

from __future__ import annotations

import argparse
import asyncio
import sys
from urllib.parse import urlsplit

from mcp_tunnel import redact
from mcp_tunnel.cli_common import add_debug_flag
from mcp_tunnel.client.tunnel_client import TunnelClient, client_ssl_context
from mcp_tunnel.errors import TunnelClientError, UsageError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcp-tunnel call",
        description="Send one request through a tunnel proxy as Anthropic's backend would: "
        "WebSocket, inner TLS verified against the CA, HTTP/1.1. The body streams to stdout.",
    )
    p.add_argument("url", help="https://<route>.<tunnel-domain>/<path>")
    p.add_argument("--proxy", required=True, help="the proxy's WebSocket URL, e.g. ws://127.0.0.1:8080/")
    p.add_argument("--ca", required=True, help="the tunnel's CA certificate (PEM)")
    p.add_argument("-X", "--request", dest="method", help="HTTP method (default GET, or POST with -d)")
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (repeatable)")
    p.add_argument("-d", "--data", help="request body; @FILE reads a file, @- reads stdin")
    p.add_argument("-i", "--include", action="store_true", help="print the response status and headers")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for connect and response head")
    add_debug_flag(p)
    return p


def _body(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as f:
                return f.read()
        except OSError as exc:
            raise UsageError(f"-d {data}: {exc.strerror or exc}") from None
    return data.encode()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    url = urlsplit(args.url)
    if url.scheme != "https" or not url.hostname:
        raise UsageError(f"URL must be https://<host>/<path>, got {args.url!r}")
    headers: list[tuple[str, str]] = []
    for n, h in enumerate(args.header, 1):
        # A header may carry a credential: no message shows a value, and a value that would not
        # fit on one header line is refused rather than sent.
        name, sep, value = h.partition(":")
        if not sep or not name.strip() or not name.strip().isprintable() or " " in name.strip():
            raise UsageError(f"-H (number {n}): expected 'Name: value' (the header is not shown)")
        problem = next((c for c in value.strip() if c in "\r\n\0" or not c.isprintable()), None)
        if problem is not None:
            raise UsageError(
                f"-H {name.strip()}: the value holds a line break or control character (not shown)"
            )
        redact.register(value.strip())
        headers.append((name.strip(), value.strip()))
    body = _body(args.data)
    method = args.method or ("POST" if body is not None else "GET")
    try:
        ctx = client_ssl_context(args.ca)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--ca {args.ca}: cannot load CA certificate: {exc}") from None
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    host = url.hostname if url.port is None else f"{url.hostname}:{url.port}"
    try:
        return asyncio.run(_call(args, ctx, url.hostname, host, method, target, headers, body))
    except TunnelClientError as exc:
        print(f"error: {_stage_label(exc.stage)}: {exc}", file=sys.stderr)
        return 1


def _stage_label(stage: str) -> str:
    return {
        "websocket": "websocket refused",
        "tls": "tls handshake failed",
        "http": "http error",
        "timeout": "timeout",
    }.get(stage, stage)


async def _call(
    args: argparse.Namespace,
    ctx: object,
    server_name: str,
    host: str,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
) -> int:
    client = TunnelClient(args.proxy, ctx, timeout=args.timeout)  # type: ignore[arg-type]
    conn = await client.connect(server_name)
    try:
        resp = await conn.request(method, target, host=host, headers=headers, body=body)
        out = sys.stdout.buffer
        if args.include:
            out.write(f"HTTP/1.1 {resp.status} {resp.reason}\r\n".encode())
            for k, v in resp.headers:
                out.write(f"{k}: {v}\r\n".encode())
            out.write(b"\r\n")
            out.flush()
        async for piece in resp.iter_body():
            out.write(piece)
            out.flush()
    finally:
        await conn.close()
    if resp.status >= 400:
        print(f"error: http error: HTTP {resp.status} {resp.reason}", file=sys.stderr)
        return 1
    return 0
