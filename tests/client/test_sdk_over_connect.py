"""The official MCP SDK on both ends of `connect`: what a real client does when it goes away
reaches the real server at once.

- 2026-07-28 protocol: the SDK client cancels a call by closing its response stream; the SDK
  server cancels the tool handler when it sees the disconnect.
- Handshake-era protocol: a GET stream the client drops ends upstream; a POST stream dropped
  mid-call and resumed at once with `Last-Event-ID` (server with an event store) gets the
  events it missed and the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import uvicorn
from mcp import Client
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import JSONRPCMessage

from mcp_tunnel.client.local_endpoint import LocalEndpoint
from mcp_tunnel.client.tunnel_client import TunnelClient, client_ssl_context
from mcp_tunnel.logs import Logger
from support.pki import PKI
from support.proxy import start_proxy

HOST = "echo.tunnel.test"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class MemoryEventStore(EventStore):
    """The smallest event store that makes the SDK's server resumable."""

    def __init__(self) -> None:
        self.events: list[tuple[EventId, StreamId, JSONRPCMessage | None]] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = str(next(self._ids))
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        stream = next((s for e, s, _ in self.events if e == last_event_id), None)
        if stream is None:
            return None
        after = False
        for event_id, s, message in list(self.events):
            if after and s == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream


class Server:
    """The SDK's MCPServer with tools that wait, and a record of every client disconnect."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.cancelled_at = 0.0
        self.release = asyncio.Event()
        self.disconnects: list[tuple[str, float]] = []  # (method, time.perf_counter())
        self.disconnected = asyncio.Event()
        mcp = MCPServer("waiting")

        @mcp.tool()
        async def wait_forever() -> str:
            """Waits until cancelled."""
            self.started.set()
            try:
                await asyncio.Event().wait()
            except (asyncio.CancelledError, anyio.get_cancelled_exc_class()):
                self.cancelled_at = time.perf_counter()
                self.cancelled.set()
                raise
            return "never"

        @mcp.tool()
        async def two_steps(ctx: Context) -> str:
            """Reports step 1, waits for the test, reports step 2."""
            await ctx.report_progress(1, 2, "step 1")
            self.started.set()
            await self.release.wait()
            await ctx.report_progress(2, 2, "step 2")
            return "done"

        security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=[HOST])
        self.app = mcp.streamable_http_app(event_store=MemoryEventStore(), transport_security=security)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def watched() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects.append((scope["method"], time.perf_counter()))
                self.disconnected.set()
            return message

        await self.app(scope, watched, send)


@contextlib.asynccontextmanager
async def stack(tmp: Path, pki: PKI) -> AsyncIterator[tuple[Server, str]]:
    """SDK server <- proxy <- connect; yields the server and connect's MCP URL."""
    app = Server()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 10
    while not server.started:
        assert not task.done() and time.monotonic() < deadline, "MCP server did not start"
        await asyncio.sleep(0.01)  # polling uvicorn's own started flag, with a deadline
    proxy = await start_proxy(tmp, pki, {"echo": f"http://127.0.0.1:{port}"})
    client = TunnelClient(proxy.url, client_ssl_context(str(pki.ca_file)), timeout=5)
    endpoint = LocalEndpoint(client, HOST, Logger("info", stream=io.StringIO()))
    await endpoint.start("127.0.0.1", 0)
    try:
        yield app, f"http://127.0.0.1:{endpoint.port}/mcp"
    finally:
        await endpoint.close()
        await proxy.stop()
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def test_sdk_client_cancel_reaches_the_sdk_server_at_once(tmp: Path, pki: PKI) -> None:
    """2026-07-28: cancelling `call_tool` closes the stream; the tool is cancelled upstream."""
    async with stack(tmp, pki) as (app, url), Client(url, mode="2026-07-28") as client:
        tools = await client.list_tools()
        assert "wait_forever" in {t.name for t in tools.tools}
        call = asyncio.create_task(client.call_tool("wait_forever", {}))
        await asyncio.wait_for(app.started.wait(), 5)
        started = time.perf_counter()
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await asyncio.wait_for(app.cancelled.wait(), 5)
        elapsed = app.cancelled_at - started
        print(f"cancel reached the tool after {elapsed * 1000:.1f} ms")
        assert elapsed < 1.0


async def _initialize(http: httpx2.AsyncClient, url: str) -> dict[str, str]:
    """The handshake-era session by hand; returns the headers later requests carry."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    resp = await http.post(url, json=init, headers=ACCEPT)
    assert resp.status_code == 200, resp.text
    headers = {
        **ACCEPT,
        "Mcp-Session-Id": resp.headers["mcp-session-id"],
        "MCP-Protocol-Version": "2025-06-18",
    }
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post(url, json=note, headers=headers)).status_code == 202
    return headers


async def test_closed_get_stream_ends_upstream_at_once(tmp: Path, pki: PKI) -> None:
    async with stack(tmp, pki) as (app, url), httpx2.AsyncClient() as http:
        headers = await _initialize(http, url)
        get_headers = {**headers, "Accept": "text/event-stream"}
        async with http.stream("GET", url, headers=get_headers) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            started = time.perf_counter()
        await asyncio.wait_for(until_get_disconnect(app), 5)
        at = next(t for m, t in app.disconnects if m == "GET")
        print(f"GET stream closed upstream after {(at - started) * 1000:.1f} ms")
        assert at - started < 1.0


async def until_get_disconnect(app: Server) -> None:
    while not any(m == "GET" for m, _ in app.disconnects):
        app.disconnected.clear()
        await app.disconnected.wait()


async def _events(resp: httpx2.Response) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
    """(id, JSON data) per SSE event; data None for a priming event."""
    event_id, data = "", ""
    async for line in resp.aiter_lines():
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line:
            if event_id or data:
                yield event_id, json.loads(data) if data else None
            event_id, data = "", ""


async def test_immediate_last_event_id_resume_gets_the_missed_events(tmp: Path, pki: PKI) -> None:
    async with stack(tmp, pki) as (app, url), httpx2.AsyncClient(timeout=10) as http:
        headers = await _initialize(http, url)
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "two_steps", "arguments": {}, "_meta": {"progressToken": "p"}},
        }
        last_id = ""
        async with http.stream("POST", url, json=call, headers=headers) as resp:
            assert resp.status_code == 200
            async for event_id, data in _events(resp):
                last_id = event_id or last_id
                if data is not None and data.get("params", {}).get("message") == "step 1":
                    break
        # At once: no pause between dropping the stream and resuming it.
        resume = {**headers, "Accept": "text/event-stream", "Last-Event-ID": last_id}
        seen: list[Any] = []
        async with http.stream("GET", url, headers=resume) as resp:
            assert resp.status_code == 200, await resp.aread()
            app.release.set()
            async for _event_id, data in _events(resp):
                if data is None:
                    continue
                seen.append(data.get("params", {}).get("message") or data.get("result"))
                if "result" in data:
                    break
        assert seen[0] == "step 2"
        assert seen[-1]["content"][0]["text"] == "done"
