"""`mcp-tunnel demo`: the whole path on loopback, in one process, with nothing left behind.

A throwaway CA and certificate, the sample MCP server (official SDK), the real proxy in front of
it, and a real MCP session through the tunnel client — the same WebSocket, inner TLS and HTTP/1.1
that Anthropic's backend speaks. Then a `connect` endpoint stays up for any MCP client until
Ctrl-C. Everything binds to free ports on 127.0.0.1 and lives in one temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from mcp_tunnel.cli_common import add_debug_flag
from mcp_tunnel.sample_server import DEMO_EXTRA as DEMO_EXTRA
from mcp_tunnel.sample_server import DEMO_MODULES as DEMO_MODULES
from mcp_tunnel.sample_server import require_demo_extra

DOMAIN = "demo.mcp-tunnel.test"
ROUTE = "echo"

CONFIG = """\
# Written by `mcp-tunnel demo`. An official config, plus one demo-only setting.
listen_addr: "127.0.0.1:{proxy_port}"
log_level: info
shutdown_timeout: 5s
tunnel_domain: {domain}
tls:
  cert_file: {dir}/tls.crt
  key_file: {dir}/tls.key
routes:
  {route}: http://127.0.0.1:{mcp_port}
upstream:
  allowed_ips:
    - 127.0.0.0/8  # DEMO ONLY: the sample server is on loopback. Never allow loopback in production.
"""


class Step:
    """Prints `[n/N] name ... detail  (12.3 ms)` lines."""

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = total
        self.n = 0

    @asynccontextmanager
    async def run(self, name: str) -> AsyncIterator[Callable[[str], None]]:
        self.n += 1
        notes: list[str] = []
        start = time.perf_counter()
        self.out.write(f"[{self.n}/{self.total}] {name:<13}")
        self.out.flush()
        try:
            yield notes.append
        except BaseException:
            self.out.write(" FAILED\n")
            self.out.flush()
            raise
        ms = (time.perf_counter() - start) * 1000
        first, *rest = notes or [""]
        self.out.write(f" {first}  ({ms:.1f} ms)\n")
        for line in rest:
            self.out.write(f"{'':18}{line}\n")
        self.out.flush()


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mcp-tunnel demo", description="The whole MCP tunnel stack on loopback.")
    p.add_argument("--once", action="store_true", help="exit after the MCP session (non-zero on failure)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    require_demo_extra()
    # The libraries' own INFO chatter would drown the steps; the proxy logs to a file.
    logging.basicConfig(level=logging.WARNING)
    for name in ("mcp", "httpx2", "websockets", "uvicorn"):
        logging.getLogger(name).setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="mcp-tunnel-demo-"))
    try:
        return asyncio.run(_demo(workdir, once=args.once, out=sys.stdout))
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _demo(workdir: Path, *, once: bool, out: TextIO) -> int:
    # Imported here so `mcp-tunnel --help` stays fast.
    import httpx2
    import uvicorn
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from mcp_tunnel.certs.files import write_atomic
    from mcp_tunnel.certs.generate import generate_ca, issue_server_cert, pem_cert, pem_key
    from mcp_tunnel.client.httpx_transport import TunnelTransport
    from mcp_tunnel.client.local_endpoint import LocalEndpoint
    from mcp_tunnel.client.tunnel_client import TunnelClient, client_ssl_context
    from mcp_tunnel.config import load_config
    from mcp_tunnel.logs import Logger
    from mcp_tunnel.proxy.server import ProxyServer
    from mcp_tunnel.sample_server import build_app

    host = f"{ROUTE}.{DOMAIN}"
    step = Step(out, 5 if not once else 4)
    out.write(f"mcp-tunnel demo: the MCP tunnel path on loopback (files in {workdir})\n")
    cleanup: list[Callable[[], Any]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mcp_server: uvicorn.Server | None = None
    mcp_task: asyncio.Task[None] | None = None
    proxy: ProxyServer | None = None
    endpoint: LocalEndpoint | None = None
    log_file = (workdir / "proxy.log").open("w")
    try:
        async with step.run("certificates") as note:
            ca, ca_key = generate_ca(common_name="mcp-tunnel-demo-ca")
            cert, key = issue_server_cert(
                ca, ca_key, DOMAIN, duration=timedelta(days=1), key_type="ecdsa-p256"
            )
            write_atomic(workdir / "ca.crt", pem_cert(ca), 0o644)
            write_atomic(workdir / "ca.key", pem_key(ca_key), 0o600)
            write_atomic(workdir / "tls.crt", pem_cert(cert), 0o644)
            write_atomic(workdir / "tls.key", pem_key(key), 0o600)
            note(f"throwaway CA and server certificate for *.{DOMAIN}")

        async with step.run("MCP server") as note:
            mcp_sock = _bound_socket()
            mcp_port = mcp_sock.getsockname()[1]
            app = build_app(allowed_hosts=[host])
            mcp_server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
            mcp_task = asyncio.create_task(mcp_server.serve(sockets=[mcp_sock]))
            cleanup.append(mcp_sock.close)
            deadline = loop.time() + 15
            while not mcp_server.started:
                if mcp_task.done() or loop.time() > deadline:
                    raise RuntimeError("the sample MCP server did not start")
                await asyncio.sleep(0.01)
            note(f"official MCP SDK, tool `hello`, at http://127.0.0.1:{mcp_port}/mcp")

        async with step.run("proxy") as note:
            proxy_sock = _bound_socket()
            proxy_port = proxy_sock.getsockname()[1]
            config_path = workdir / "config.yaml"
            config_path.write_text(
                CONFIG.format(
                    proxy_port=proxy_port, domain=DOMAIN, dir=workdir, route=ROUTE, mcp_port=mcp_port
                )
            )
            config = load_config(str(config_path))
            proxy = ProxyServer(config, Logger("info", stream=log_file))
            await proxy.start(sock=proxy_sock)
            note(f"ws://127.0.0.1:{proxy_port}/  routes {host} -> http://127.0.0.1:{mcp_port}")
            note(f"config {config_path}, log {workdir / 'proxy.log'}")

        client = TunnelClient(f"ws://127.0.0.1:{proxy_port}/", client_ssl_context(str(workdir / "ca.crt")))
        async with step.run("MCP session") as note:
            transport = TunnelTransport(client)
            async with (
                asyncio.timeout(30),
                httpx2.AsyncClient(transport=transport) as http,
                streamable_http_client(f"https://{host}/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                init = await session.initialize()
                tools = await session.list_tools()
                result = await session.call_tool("hello", {"name": "tunnel"})
            text = "".join(getattr(c, "text", "") for c in result.content)
            if result.is_error or text != "Hello, tunnel!":
                raise RuntimeError(f"unexpected tool result: {text!r}")
            names = ", ".join(t.name for t in tools.tools)
            note(f"initialize ({init.server_info.name}) -> tools/list ({names}) -> tools/call hello")
            note(f"hello(name='tunnel') returned: {text}")
            note("through WebSocket -> inner TLS (verified against the demo CA) -> proxy -> MCP server")

        if once:
            out.write("demo ok\n")
            return 0

        async with step.run("connect") as note:
            endpoint = LocalEndpoint(client, host, Logger("warn", stream=log_file))
            await endpoint.start("127.0.0.1", 0)
            note(f"http://127.0.0.1:{endpoint.port}/mcp -> tunnel -> {host}")
        out.write(
            f"\nPoint any MCP client (streamable HTTP) at http://127.0.0.1:{endpoint.port}/mcp\n"
            f"or run your own local endpoint:\n"
            f"  mcp-tunnel connect --proxy ws://127.0.0.1:{proxy_port}/ --ca {workdir / 'ca.crt'} "
            f"--host {host} --listen 127.0.0.1:8000\n"
            f"One request by hand:\n"
            f"  mcp-tunnel call --proxy ws://127.0.0.1:{proxy_port}/ --ca {workdir / 'ca.crt'} "
            f"https://{host}/mcp -H 'Accept: application/json, text/event-stream' "
            f"-H 'Content-Type: application/json' "
            f"""-d '{{"jsonrpc":"2.0","id":1,"method":"ping"}}'\n"""
            "Press Ctrl-C to stop.\n"
        )
        out.flush()
        await stop.wait()
        out.write("stopping\n")
        return 0
    except Exception as exc:  # the demo reports, it does not dump a traceback
        out.write(f"demo failed: {type(exc).__name__}: {exc}\n")
        return 1
    finally:
        if endpoint is not None:
            await endpoint.close()
        if proxy is not None:
            await proxy.stop(2.0)
        if mcp_server is not None and mcp_task is not None:
            mcp_server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(mcp_task, 10)
        for fn in cleanup:
            fn()
        log_file.close()
