"""The mcp: section through the real proxy (issue #23): the official SDK's server behind it, the
official SDK's client in front, in both response modes (JSON and SSE).

The server records every tool call it runs and every argument marker it sees; its tools return a
result marker. A denied call must never reach it, the client must get the unknown-tool error, the
listed tools must be filtered, and the audit lines must name methods and tools but never carry
the markers planted in the arguments or the results.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from mcp_tunnel.client.httpx_transport import TunnelTransport
from support.pki import PKI
from support.proxy import RunningProxy, start_proxy
from support.upstreams import Received, RecordingUpstream

ARG_MARKER = "ARGSECRET-7f3a"
RESULT_MARKER = "RESULTSECRET-91bc"
TOOLS = {"search_docs", "get_page", "delete_page", "close_ticket"}


@asynccontextmanager
async def wiki_server(host: str, *, json_response: bool, calls: list[str]) -> AsyncIterator[int]:
    server = MCPServer("wiki")

    @server.tool()
    def search_docs(query: str) -> str:
        calls.append(f"search_docs:{query}")
        return f"found {RESULT_MARKER}"

    @server.tool()
    def get_page(title: str) -> str:
        calls.append(f"get_page:{title}")
        return f"page {RESULT_MARKER}"

    @server.tool()
    def delete_page(title: str) -> str:
        calls.append(f"delete_page:{title}")
        return "deleted"

    @server.tool()
    def close_ticket(ticket: str) -> str:
        calls.append(f"close_ticket:{ticket}")
        return "closed"

    async with serve(server, host, json_response=json_response) as port:
        yield port


@asynccontextmanager
async def serve(server: MCPServer, host: str, *, json_response: bool) -> AsyncIterator[int]:
    """`server` over streamable HTTP on a loopback port, answering in JSON or in SSE form."""
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=[host])
    app = server.streamable_http_app(json_response=json_response, transport_security=security)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    deadline = asyncio.get_running_loop().time() + 10
    while not uv.started:
        if task.done() or asyncio.get_running_loop().time() > deadline:
            raise RuntimeError("MCP server did not start")
        await asyncio.sleep(0.01)  # polling uvicorn's own started flag, with a deadline
    try:
        yield port
    finally:
        uv.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@asynccontextmanager
async def session_through(proxy: RunningProxy, host: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(transport=TunnelTransport(proxy.client()), timeout=10) as http,
        streamable_http_client(f"https://{host}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def audit_records(proxy: RunningProxy) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proxy.log_lines() if '"msg": "mcp request"' in line]


MODES = pytest.mark.parametrize("json_response", [True, False], ids=["json", "sse"])


@MODES
async def test_allow_list_filters_denies_and_audits(json_response: bool, tmp: Path, pki: PKI) -> None:
    host = pki.host("wiki")
    calls: list[str] = []
    async with wiki_server(host, json_response=json_response, calls=calls) as port:
        proxy = await start_proxy(
            tmp,
            pki,
            {"wiki": f"http://127.0.0.1:{port}"},
            log_format="json",
            mcp={"audit": True, "routes": {"wiki": {"allow_tools": ["search_*", "get_page"]}}},
        )
        try:
            async with session_through(proxy, host) as session:
                listed = await session.list_tools()
                assert {t.name for t in listed.tools} == {"search_docs", "get_page"}
                result = await session.call_tool("search_docs", {"query": ARG_MARKER})
                assert RESULT_MARKER in result.content[0].text  # type: ignore[union-attr]
                with pytest.raises(MCPError) as denied:
                    await session.call_tool("delete_page", {"title": ARG_MARKER})
                assert denied.value.error.code == -32602
                assert denied.value.error.message == "Unknown tool: delete_page"
                # still usable after the refusal
                result = await session.call_tool("get_page", {"title": "home"})
                assert RESULT_MARKER in result.content[0].text  # type: ignore[union-attr]
        finally:
            await proxy.stop()
    assert calls == [f"search_docs:{ARG_MARKER}", "get_page:home"]  # the denied call never arrived
    records = audit_records(proxy)
    by_method = [(r["method"], r.get("name"), r["outcome"]) for r in records]
    assert ("initialize", None, "ok") in by_method
    assert ("notifications/initialized", None, "ok") in by_method
    assert ("tools/list", None, "ok") in by_method
    assert ("tools/call", "search_docs", "ok") in by_method
    assert ("tools/call", "delete_page", "denied") in by_method
    assert ("tools/call", "get_page", "ok") in by_method
    for r in records:
        assert r["route"] == "wiki"
        assert r["status"] == 200 or (r["status"] == 202 and r["method"].startswith("notifications/"))
        assert isinstance(r["duration_ms"], float)
        if r["method"] != "initialize":
            assert len(r["session"]) == 8  # shortened Mcp-Session-Id
    text = "\n".join(proxy.log_lines())
    assert ARG_MARKER not in text and RESULT_MARKER not in text
    metrics = proxy.server.metrics.render().decode()
    assert 'mcp_tunnel_mcp_requests_total{method="tools/call",outcome="denied",route="wiki"} 1.0' in metrics
    assert 'mcp_tunnel_mcp_requests_total{method="tools/call",outcome="ok",route="wiki"} 2.0' in metrics


@MODES
async def test_deny_list(json_response: bool, tmp: Path, pki: PKI) -> None:
    host = pki.host("tickets")
    calls: list[str] = []
    async with wiki_server(host, json_response=json_response, calls=calls) as port:
        proxy = await start_proxy(
            tmp,
            pki,
            {"tickets": f"http://127.0.0.1:{port}"},
            mcp={"routes": {"tickets": {"deny_tools": ["delete_*", "close_*"]}}},
        )
        try:
            async with session_through(proxy, host) as session:
                listed = await session.list_tools()
                assert {t.name for t in listed.tools} == {"search_docs", "get_page"}
                with pytest.raises(MCPError) as denied:
                    await session.call_tool("close_ticket", {"ticket": "1"})
                assert denied.value.error.code == -32602
                result = await session.call_tool("get_page", {"title": "x"})
                assert not result.is_error
        finally:
            await proxy.stop()
    assert calls == ["get_page:x"]
    assert not proxy.log_has('msg="mcp request"')  # audit is off


async def test_without_policy_every_tool_is_listed_and_callable(tmp: Path, pki: PKI) -> None:
    """The control: the same server and client with audit only list and call everything."""
    host = pki.host("wiki")
    calls: list[str] = []
    async with wiki_server(host, json_response=True, calls=calls) as port:
        proxy = await start_proxy(tmp, pki, {"wiki": f"http://127.0.0.1:{port}"}, mcp={"audit": True})
        try:
            async with session_through(proxy, host) as session:
                listed = await session.list_tools()
                assert {t.name for t in listed.tools} == TOOLS
                await session.call_tool("delete_page", {"title": "x"})
        finally:
            await proxy.stop()
    assert calls == ["delete_page:x"]
    assert proxy.log_has('msg="mcp request"')
    assert proxy.log_has("name=delete_page")


async def raw_post(
    proxy: RunningProxy, host: str, body: bytes, headers: list[tuple[str, str]]
) -> tuple[int, bytes]:
    conn = await proxy.client().connect(host)
    try:
        resp = await conn.request("POST", "/mcp", host=host, headers=headers, body=body)
        data = await resp.read()
        return resp.status, data
    finally:
        await conn.close()


JSON_HEADERS = [("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream")]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"not json at all", JSON_HEADERS),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', [("Content-Type", "text/plain")]),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', [*JSON_HEADERS, ("Content-Encoding", "gzip")]),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_page","pad":"'
            + b"x" * (1 << 20)
            + b'"}}',
            JSON_HEADERS,
        ),
        (b"[]", JSON_HEADERS),
        (b"[1, 2]", JSON_HEADERS),
    ],
    ids=["not-json", "text-plain", "gzip", "over-1MiB", "empty-batch", "not-objects"],
)
async def test_unjudgeable_body_on_policy_route_is_refused(
    body: bytes, headers: list[tuple[str, str]], tmp: Path, pki: PKI, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(
        tmp,
        pki,
        {"wiki": f"http://127.0.0.1:{upstream.port}"},
        limits={"max_body_bytes": 4 << 20},
        mcp={"routes": {"wiki": {"allow_tools": ["get_page"]}}},
    )
    try:
        status, _ = await raw_post(proxy, pki.host("wiki"), body, headers)
        # the same connection-less check with a judgeable body does reach the upstream
        ok, _ = await raw_post(
            proxy, pki.host("wiki"), b'{"jsonrpc":"2.0","id":1,"method":"ping"}', JSON_HEADERS
        )
    finally:
        await proxy.stop()
    assert status == 400
    assert ok == 200
    assert [r.body for r in upstream.requests] == [b'{"jsonrpc":"2.0","id":1,"method":"ping"}']
    assert sum('msg="mcp request refused"' in line for line in proxy.log_lines()) == 1


async def test_batch_with_a_denied_call_is_refused_whole(tmp: Path, pki: PKI) -> None:
    host = pki.host("wiki")
    calls: list[str] = []
    async with wiki_server(host, json_response=True, calls=calls) as port:
        proxy = await start_proxy(
            tmp,
            pki,
            {"wiki": f"http://127.0.0.1:{port}"},
            mcp={"routes": {"wiki": {"allow_tools": ["get_page"]}}},
        )
        batch = [
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "get_page", "arguments": {}},
            },
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "delete_page"}},
        ]
        try:
            status, data = await raw_post(proxy, host, json.dumps(batch).encode(), JSON_HEADERS)
        finally:
            await proxy.stop()
    assert status == 200
    answers = {a["id"]: a["error"] for a in json.loads(data)}
    assert answers[2] == {"code": -32602, "message": "Unknown tool: delete_page"}
    assert answers[1]["code"] == -32600
    assert calls == []


async def test_route_without_policy_passes_any_body(tmp: Path, pki: PKI, upstream: RecordingUpstream) -> None:
    """A route without a policy passes a non-JSON body byte for byte, even with audit on."""
    proxy = await start_proxy(
        tmp,
        pki,
        {"plain": f"http://127.0.0.1:{upstream.port}"},
        mcp={"audit": True},
    )
    try:
        status, _ = await raw_post(
            proxy, pki.host("plain"), b"\x00\x01 not json", [("Content-Type", "text/plain")]
        )
    finally:
        await proxy.stop()
    assert status == 200
    assert upstream.requests[-1].body == b"\x00\x01 not json"


@MODES
async def test_json_rpc_errors_are_the_audit_outcome(json_response: bool, tmp: Path, pki: PKI) -> None:
    """A JSON-RPC error answer gives the audit line its code, in a JSON answer and in an event
    stream alike; a tool that fails inside its result (isError) is a JSON-RPC success: `ok`."""
    host = pki.host("wiki")
    server = MCPServer("wiki")

    @server.tool()
    def locked_page(title: str) -> str:
        raise MCPError(code=-32001, message=f"locked {RESULT_MARKER}")

    @server.tool()
    def broken_page(title: str) -> str:
        raise RuntimeError(f"broken {RESULT_MARKER}")

    async with serve(server, host, json_response=json_response) as port:
        proxy = await start_proxy(
            tmp, pki, {"wiki": f"http://127.0.0.1:{port}"}, log_format="json", mcp={"audit": True}
        )
        try:
            async with session_through(proxy, host) as session:
                with pytest.raises(MCPError) as locked:
                    await session.call_tool("locked_page", {"title": ARG_MARKER})
                assert locked.value.error.code == -32001
                broken = await session.call_tool("broken_page", {"title": ARG_MARKER})
                assert broken.is_error
                with pytest.raises(MCPError) as unknown:
                    await session.read_resource("wiki://nowhere")
                assert unknown.value.error.code == -32602
                await session.send_ping()
        finally:
            await proxy.stop()
    outcomes = [(r["method"], r.get("name"), r["outcome"]) for r in audit_records(proxy)]
    assert ("tools/call", "locked_page", "-32001") in outcomes
    assert ("tools/call", "broken_page", "ok") in outcomes
    assert ("resources/read", "wiki://nowhere", "-32602") in outcomes
    assert ("ping", None, "ok") in outcomes
    text = "\n".join(proxy.log_lines())
    assert ARG_MARKER not in text and RESULT_MARKER not in text
    metrics = proxy.server.metrics.render().decode()
    assert 'mcp_tunnel_mcp_requests_total{method="tools/call",outcome="error",route="wiki"} 1.0' in metrics
    assert (
        'mcp_tunnel_mcp_requests_total{method="resources/read",outcome="-32602",route="wiki"} 1.0' in metrics
    )


async def test_filtered_event_stream_still_gives_outcomes(tmp: Path, pki: PKI) -> None:
    """A policy route with audit: an SSE answer to a batch is filtered (tools/list) and read
    (the call's error code) in the same pass, its events cut across the upstream's writes."""
    listed = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "get_page"}, {"name": "delete_page"}]}}
    failed = {"jsonrpc": "2.0", "id": 2, "error": {"code": -32002, "message": f"gone {RESULT_MARKER}"}}
    stream = b"".join(
        b"event: message\r\ndata: " + json.dumps(doc).encode() + b"\r\n\r\n" for doc in (listed, failed)
    )

    async def sse_answer(req: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for i in range(0, len(stream), 40):
            piece = stream[i : i + 40]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    upstream = await RecordingUpstream(handler=sse_answer).start()
    proxy = await start_proxy(
        tmp,
        pki,
        {"wiki": f"http://127.0.0.1:{upstream.port}"},
        log_format="json",
        mcp={"audit": True, "routes": {"wiki": {"allow_tools": ["get_page"]}}},
    )
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_page", "arguments": {}}},
    ]
    try:
        status, data = await raw_post(proxy, pki.host("wiki"), json.dumps(batch).encode(), JSON_HEADERS)
    finally:
        await proxy.stop()
        await upstream.close()
    assert status == 200
    events = [json.loads(line[len(b"data: ") :]) for line in data.splitlines() if line.startswith(b"data: ")]
    assert events[0]["result"]["tools"] == [{"name": "get_page"}] and events[1] == failed
    outcomes = [(r["method"], r["outcome"]) for r in audit_records(proxy)]
    assert outcomes == [("tools/list", "ok"), ("tools/call", "-32002")]
    assert RESULT_MARKER not in "\n".join(proxy.log_lines())
